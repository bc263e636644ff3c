"""``laco bench``: time LaCo's in-encoder compression against external compression at real model geometries.

Models are built from ``transformers`` config classes with random weights (nothing is downloaded), at the
geometries of public models (:mod:`laco.cost` presets). Every measurement interleaves all placements in the same
process, reports medians and spreads, counts FLOPs and sets the measured speed-ups against the FLOP bound of
the analytic cost model.

>>> from laco.bench import run_benchmark
>>> result = run_benchmark(quick=True, out="runs/bench-quick")          # tiny geometry, seconds
>>> result = run_benchmark(preset="llava-ov-0.5b", measure=["encoder", "prefill"], reps=5)

Command line (``main`` takes an argv list; ``python -m laco.bench --help``); ``--compare`` plots earlier runs
against the setting they differ in (:mod:`laco.bench.sweep`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .presets import MEASUREMENTS, PRESETS, BenchPreset, load_preset
from .runner import (
    DEFAULT_DEPTHS,
    DEFAULT_METHODS,
    DEFAULT_TWO_STAGE,
    DTYPES,
    BenchResult,
    BenchSettings,
    BenchVariant,
    build_variants,
    run,
)
from .timing import Clock, Samples, Stats, run_interleaved

# Tiny ops gain nothing from threads, and with more threads than free cores OpenMP barriers wait on descheduled ones.
QUICK_THREADS = 1


def run_benchmark(
    preset: str | BenchPreset | None = None,
    *,
    quick: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    threads: int | None = None,
    reps: int | None = None,
    warmup: int | None = None,
    llm_layers: int | None = None,
    measure: Sequence[str] | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    depths: Sequence[str] = DEFAULT_DEPTHS,
    method_depth: str = "1/4",
    two_stage: Sequence[str] | None = DEFAULT_TWO_STAGE,
    batch: int | None = None,
    seed: int = 0,
    compile: bool = False,
    out: str | Path | None = None,
    plot: bool = True,
    progress: bool = True,
    echo: bool = True,
) -> BenchResult:
    """Run a benchmark, print its tables and summary (``echo``), and write ``bench.json`` and ``bench.png`` to ``out``.

    ``None`` arguments take the preset's per-device defaults (see :mod:`laco.bench.presets`). ``quick`` selects
    the tiny preset (unless ``preset`` is given), 3 rounds and 1 thread: seconds, for CI. ``compile`` times
    compiled models (each encoder block and LLM decoder layer under ``torch.compile``; decode is left out).
    """
    if quick and threads is None:
        threads = QUICK_THREADS
    settings = BenchSettings(
        preset=preset,
        quick=quick,
        device=device,
        dtype=dtype,
        threads=threads,
        reps=reps,
        warmup=warmup,
        llm_layers=llm_layers,
        measure=measure,
        methods=tuple(methods),
        depths=tuple(depths),
        method_depth=method_depth,
        two_stage=tuple(two_stage) if two_stage else None,
        batch=batch,
        seed=seed,
        compile=compile,
        progress=progress,
    )
    from . import report

    result = run(settings)
    files: dict[str, str] = {}
    if out is not None:
        directory = Path(out)
        files["json"] = str(report.write_json(result, directory / "bench.json"))
        if plot:
            files["plot"] = str(report.write_plot(result, directory / "bench.png"))
    if echo:
        for kind in result.measurements:
            print(report.format_table(result, kind))
            print()
        print(report.format_summary(result, files))
    return result


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laco bench",
        description=(
            "Time LaCo's in-encoder compression against external compression (same visual-token count) and no "
            "compression, on random-weight models at real geometries; report medians, spreads, FLOP-bound speed-ups, "
            "and where the encoder time goes (a block before and after the merge, the merge itself)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        default=None,
        help=f"built-in preset ({', '.join(PRESETS)}) or a .yaml file; default llava-ov-0.5b (tiny with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI mode: tiny geometry (unless --preset), 3 rounds, 1 thread"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), help="default: float32 on CPU, bfloat16 on CUDA"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: usable cores)")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default: preset's, 3 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds, >= 1; the first counts FLOPs")
    parser.add_argument(
        "--llm-layers", type=int, default=None, help="time N LLM decoder layers and scale linearly to the full depth"
    )
    parser.add_argument("--measure", type=_csv, default=None, help=f"comma list of {','.join(MEASUREMENTS)}")
    parser.add_argument(
        "--methods",
        type=_csv,
        default=list(DEFAULT_METHODS),
        help="compressors; laco runs at every --depths, the others at --method-depth",
    )
    parser.add_argument(
        "--depths", type=_csv, default=list(DEFAULT_DEPTHS), help="depth fractions (or layer numbers) for LaCo"
    )
    parser.add_argument("--method-depth", default="1/4", help="depth of the other compressors")
    parser.add_argument(
        "--two-stage",
        type=_csv,
        default=list(DEFAULT_TWO_STAGE),
        help="depths of a two-stage (16x) LaCo; 'none' to skip",
    )
    parser.add_argument("--batch", type=int, default=None, help="images (one per sequence) per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="time compiled models: torch.compile each encoder block and LLM decoder layer (compressors stay eager); "
        "not for decode",
    )
    parser.add_argument(
        "--out", default=None, help="directory for bench.json and bench.png (default runs/bench-<preset>-<time>)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        default=None,
        help="time nothing: compare earlier runs (their bench.json or --out directories), headline speed-up "
        "against the setting they differ in; table + sweep.png in --out",
    )
    parser.add_argument("--by", default=None, help="with --compare: the setting for the x axis (default: batch, ...)")
    parser.add_argument(
        "--variant", default=None, help="with --compare: the placement to follow, e.g. laco@1/4+1/2 (default: headline)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``laco bench [options]``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.list_presets:
        for name, preset in PRESETS.items():
            print(f"{name:16} {preset.description}")
        return 0
    if args.compare:
        from .sweep import compare

        try:
            print(
                compare(
                    args.compare,
                    by=args.by,
                    out=args.out or f"runs/bench-compare-{time.strftime('%Y%m%d-%H%M%S')}",
                    variant=args.variant,
                )
            )
        except (ValueError, FileNotFoundError) as error:
            print(f"laco bench: error: {error}", file=sys.stderr)
            return 2
        return 0
    two_stage = None if [s.lower() for s in args.two_stage] in ([], ["none"]) else args.two_stage
    preset_name = args.preset or ("tiny" if args.quick else "llava-ov-0.5b")
    out = args.out or f"runs/bench-{Path(preset_name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        run_benchmark(
            args.preset,
            quick=args.quick,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            reps=args.reps,
            warmup=args.warmup,
            llm_layers=args.llm_layers,
            measure=args.measure,
            methods=args.methods,
            depths=args.depths,
            method_depth=args.method_depth,
            two_stage=two_stage,
            batch=args.batch,
            seed=args.seed,
            compile=args.compile,
            out=out,
            plot=not args.no_plot,
            progress=not args.no_progress,
        )
    except (ValueError, MemoryError, FileNotFoundError) as error:
        print(f"laco bench: error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "BenchPreset",
    "BenchResult",
    "BenchSettings",
    "Clock",
    "PRESETS",
    "Samples",
    "Stats",
    "BenchVariant",
    "build_parser",
    "build_variants",
    "load_preset",
    "main",
    "run",
    "run_benchmark",
    "run_interleaved",
]
