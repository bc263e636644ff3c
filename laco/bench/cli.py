"""``laco bench``: the command line of :func:`laco.bench.run_benchmark` and of ``--compare``.

Every field of :class:`~laco.bench.settings.BenchSettings` becomes one option (``method_depth`` ->
``--method-depth``), with the help text and parser its ``metadata`` holds; the options below it say where the
output goes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from . import native_report
from .native import IMAGE_SETS, NATIVE_PRESETS
from .presets import PRESETS
from .settings import DEFAULT_PRESET, FLAG, QUICK_PRESET, BenchSettings, csv


def _settings_option(parser: argparse.ArgumentParser, setting: Field) -> None:
    flag = "--" + setting.name.replace("_", "-")
    help, parse = setting.metadata["help"], setting.metadata["parse"]
    if parse == FLAG:
        parser.add_argument(flag, action="store_true", help=help)
        return
    default: Any = setting.default
    if isinstance(default, tuple):
        default = ",".join(default)  # argparse runs a string default through ``type``, as if typed
    parser.add_argument(flag, type=parse, default=default, choices=setting.metadata["choices"], help=help)


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
    for setting in fields(BenchSettings):
        _settings_option(parser, setting)
    parser.add_argument(
        "--engine",
        choices=["torch", "vllm"],
        default="torch",
        help="torch: time the model in this process; vllm: LaCo vs external served by vLLM (see --engine vllm --help)",
    )
    parser.add_argument(
        "--out", default=None, help="directory for bench.json and bench.png (default runs/bench-<preset>-<time>)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument(
        "--sizes",
        type=csv,
        default=None,
        help="packed-tower presets (e.g. qwen2.5-vl-7b-tower) only: image sets to time, one packed call each, from "
        f"{','.join(IMAGE_SETS)} (default: the preset's)",
    )
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


def _error(error: Exception) -> int:
    print(f"laco bench: error: {error}", file=sys.stderr)
    return 2


def _engine(argv: list[str]) -> str:
    for index, arg in enumerate(argv):
        if arg.startswith("--engine="):
            return arg.split("=", 1)[1]
        if arg == "--engine" and index + 1 < len(argv):
            return argv[index + 1]
    return "torch"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``laco bench [options]``; returns the exit status."""
    from . import run_benchmark
    from .sweep import compare

    argv = list(sys.argv[1:] if argv is None else argv)
    if _engine(argv) == "vllm":  # a serving benchmark has its own options (laco.bench.serving_report)
        from .serving_report import main as serving_main

        return serving_main(argv)
    args = build_parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.list_presets:
        for name, preset in {**PRESETS, **NATIVE_PRESETS}.items():
            print(f"{name:20} {preset.description}")
        return 0
    if args.compare:
        try:
            print(
                compare(args.compare, by=args.by, out=args.out or f"runs/bench-compare-{stamp}", variant=args.variant)
            )
        except (ValueError, FileNotFoundError) as error:
            return _error(error)
        return 0
    preset_name = args.preset or (QUICK_PRESET if args.quick else DEFAULT_PRESET)
    out = args.out or f"runs/bench-{Path(preset_name).stem}-{stamp}"
    if preset_name in NATIVE_PRESETS:  # a packed native-resolution tower: its own variants and image sets
        try:
            return native_report.main(args, out)
        except (ValueError, MemoryError) as error:
            return _error(error)
    if args.sizes:
        return _error(
            ValueError(f"--sizes is for packed-tower presets ({', '.join(NATIVE_PRESETS)}), not {preset_name}.")
        )
    try:
        run_benchmark(
            settings=BenchSettings.from_namespace(args), out=out, plot=not args.no_plot, progress=not args.no_progress
        )
    except (ValueError, MemoryError, FileNotFoundError) as error:
        return _error(error)
    return 0
