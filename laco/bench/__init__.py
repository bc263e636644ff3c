"""``laco bench``: time LaCo's in-encoder compression against external compression at real model geometries.

Models are built from ``transformers`` config classes with random weights (nothing is downloaded), at the
geometries of public models (:mod:`laco.cost` presets). Every measurement interleaves all placements in the same
process, reports medians and spreads, counts FLOPs and sets the measured speed-ups against the FLOP bound of
the analytic cost model.

>>> from laco.bench import run_benchmark
>>> result = run_benchmark(quick=True, out="runs/bench-quick")          # tiny geometry, seconds
>>> result = run_benchmark(preset="llava-ov-0.5b", measure=["encoder", "prefill"], reps=5)

Modules: :mod:`~laco.bench.settings` (what a run asks for), :mod:`~laco.bench.variants` (the placements),
:mod:`~laco.bench.measurements` (the registry of what can be timed), :mod:`~laco.bench.testbed` and
:mod:`~laco.bench.workloads` (the model and what is timed on it), :mod:`~laco.bench.runner` (the run),
:mod:`~laco.bench.results`, :mod:`~laco.bench.report` and :mod:`~laco.bench.plots` (what it produced),
:mod:`~laco.bench.sweep` (``--compare``), :mod:`~laco.bench.cli` (``laco bench``); packed native-resolution
towers (Qwen-VL) in :mod:`~laco.bench.native` and :mod:`~laco.bench.native_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .measurements import MEASUREMENTS, Measurement, register
from .presets import PRESETS, BenchPreset, load_preset
from .results import BenchResult, SpeedUp, VariantResult
from .runner import run
from .settings import BenchSettings, ResolvedSettings, resolve
from .timing import Clock, Samples, Stats, run_interleaved
from .variants import BenchVariant, build_variants


def run_benchmark(
    preset: str | BenchPreset | None = None,
    *,
    settings: BenchSettings | None = None,
    out: str | Path | None = None,
    plot: bool = True,
    progress: bool = True,
    echo: bool = True,
    **options: Any,
) -> BenchResult:
    """Run a benchmark, print its tables and summary (``echo``), and write ``bench.json`` and ``bench.png`` to ``out``.

    ``options`` are the fields of :class:`BenchSettings` (or pass ``settings`` whole); ``None`` ones take the
    preset's per-device defaults (see :mod:`laco.bench.presets`). ``quick`` selects the tiny preset (unless
    ``preset`` is given), 3 rounds and 1 thread: seconds, for CI. ``compile`` times compiled models (each encoder
    block and LLM decoder layer under ``torch.compile``; decode is left out).
    """
    if settings is None:
        settings = BenchSettings(preset=preset, **options)
    elif preset is not None or options:
        raise TypeError("run_benchmark takes either settings=BenchSettings(...) or its fields, not both.")
    from . import plots, report

    result = run(settings, progress=progress)
    files: dict[str, str] = {}
    if out is not None:
        directory = Path(out)
        files["json"] = str(result.write_json(directory / "bench.json"))
        if plot:
            files["plot"] = str(plots.write_plot(result, directory / "bench.png"))
    if echo:
        for kind in result.measurements:
            print(report.format_table(result, kind))
            print()
        print(report.format_summary(result, files))
    return result


def main(argv=None) -> int:
    """``laco bench``; see :mod:`laco.bench.cli`."""
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = [
    "MEASUREMENTS",
    "PRESETS",
    "BenchPreset",
    "BenchResult",
    "BenchSettings",
    "BenchVariant",
    "Clock",
    "Measurement",
    "ResolvedSettings",
    "Samples",
    "SpeedUp",
    "Stats",
    "VariantResult",
    "build_variants",
    "load_preset",
    "main",
    "register",
    "resolve",
    "run",
    "run_benchmark",
    "run_interleaved",
]
