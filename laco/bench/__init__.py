"""``laco bench``: time LaCo's in-encoder compression against external compression at real model geometries.

Models are built from ``transformers`` config classes with random weights (nothing is downloaded), at the
geometries of public models (:mod:`laco.cost` presets). Every measurement interleaves all placements in the same
process, reports medians and spreads, counts FLOPs and sets the measured speed-ups against the FLOP bound of
the analytic cost model.

>>> from laco.bench import run_benchmark
>>> result = run_benchmark(quick=True, out="runs/bench-quick")          # tiny geometry, seconds
>>> result = run_benchmark(preset="llava-ov-0.5b", measure=["encoder", "prefill"], reps=5)

Three engines share one preset table (:mod:`~laco.bench.presets`), one option generator
(:mod:`~laco.bench.options`), the variants (:mod:`~laco.bench.variants`), the interleaved timing
(:mod:`~laco.bench.timing`), one versioned result schema (:mod:`~laco.bench.schema`), one report
(:mod:`~laco.bench.report`), one plot (:mod:`~laco.bench.plots`) and ``--compare`` (:mod:`~laco.bench.sweep`):

* batched encoders and MLLMs: :mod:`~laco.bench.settings`, :mod:`~laco.bench.measurements`,
  :mod:`~laco.bench.testbed`, :mod:`~laco.bench.runner`, :mod:`~laco.bench.results`;
* packed native-resolution towers (Qwen-VL): :mod:`~laco.bench.native`;
* vLLM serving: :mod:`~laco.bench.serving`.

:mod:`~laco.bench.cli` is ``laco bench``.
"""

from .cli import main
from .measurements import MEASUREMENTS, Measurement, register
from .presets import PRESETS, BenchPreset, load_preset
from .results import BenchResult, SpeedUp, VariantResult
from .runner import run, run_benchmark
from .schema import SCHEMA
from .settings import BenchSettings, ResolvedSettings, resolve
from .timing import Clock, Samples, Stats, run_interleaved
from .variants import BenchVariant, build_variants

__all__ = [
    "MEASUREMENTS",
    "PRESETS",
    "SCHEMA",
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
