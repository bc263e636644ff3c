"""``laco bench``: one command line for every engine, and ``--compare``.

Every field of the engines' settings is one option (:mod:`laco.bench.options`); the engine is ``--engine``, or the
preset's, and an option the chosen engine does not take is refused by name.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from . import report
from .native import NativeSettings, run_native
from .options import add_options, flag, given
from .presets import PRESETS, any_preset
from .results import Result
from .runner import run_benchmark
from .serving import ServingSettings
from .serving import run as run_serving
from .settings import BenchSettings, preset_name
from .sweep import compare

ENGINES = {"batched": BenchSettings, "packed": NativeSettings, "vllm": ServingSettings}
DESCRIBED = {"batched": "batched presets", "packed": "packed-tower presets", "vllm": "--engine vllm"}
OWNERS = add_options(argparse.ArgumentParser(add_help=False), ENGINES)
"""Every settings field, and the engines that take it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laco bench",
        description=(
            "Time LaCo's in-encoder compression against external compression (same visual-token count) and no "
            "compression, on random-weight models at real geometries: in this process (batched encoders and MLLMs, "
            "packed Qwen-VL towers) or served by vLLM; report medians, spreads and FLOP-bound speed-ups."
        ),
    )
    parser.add_argument(
        "--engine",
        choices=("torch", *ENGINES),
        default=None,
        help="batched: encoders and LLaVA-style MLLMs in this process; packed: Qwen-VL towers; vllm: LaCo vs external "
        "served by vLLM. Default (and torch): the preset's engine. [bracketed]: the engines an option is for",
    )
    add_options(parser, ENGINES)
    parser.add_argument("--out", default=None, help="directory for the result file, plot and table")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        default=None,
        help="time nothing: compare earlier runs of any engine (result files or --out directories), headline "
        "speed-up against the setting they differ in; table + sweep.png in --out",
    )
    parser.add_argument("--by", default=None, help="with --compare: the setting for the x axis (default: batch, ...)")
    parser.add_argument(
        "--variant", default=None, help="with --compare: the placement to follow, e.g. laco@1/4+1/2 (default: headline)"
    )
    return parser


def _error(error: Exception) -> int:
    print(f"laco bench: error: {error}", file=sys.stderr)
    return 2


def engine_settings(args: argparse.Namespace) -> tuple[str, BenchSettings | NativeSettings | ServingSettings]:
    """The engine the options ask for, and its settings; refuses options that engine does not take."""
    preset = preset_name(args)
    engine = args.engine if args.engine not in (None, "torch") else any_preset(preset).engine
    own = [f.name for f in fields(ENGINES[engine])]
    other = [name for name in vars(args) if name in OWNERS and engine not in OWNERS[name]]
    if other:
        owners = "; ".join(f"{flag(name)} is for {' and '.join(DESCRIBED[e] for e in OWNERS[name])}" for name in other)
        options = ", ".join(flag(name) for name in own if name != "preset")
        raise ValueError(
            f"{', '.join(map(flag, other))} do(es) not apply to {DESCRIBED[engine]} ({preset}): {owners}. "
            f"Its options: {options}, --out, --no-progress."
        )
    return engine, ENGINES[engine](**given(args, ENGINES[engine]))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``laco bench [options]``; returns the exit status."""
    args = build_parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.list_presets:
        for name, preset in PRESETS.items():
            print(f"{name:20} [{preset.engine}] {preset.description}")
        return 0
    try:
        if args.compare:
            print(
                compare(args.compare, by=args.by, out=args.out or f"runs/bench-compare-{stamp}", variant=args.variant)
            )
            return 0
        engine, settings = engine_settings(args)
        name = Path(str(preset_name(settings)))
        out = Path(args.out or f"runs/bench-{'vllm' if engine == 'vllm' else name.stem}-{stamp}")
        if engine == "batched":
            run_benchmark(settings=settings, out=out, plot=not args.no_plot, progress=not args.no_progress)
            return 0
        return (_packed if engine == "packed" else _vllm)(settings, out, args)
    except (ValueError, MemoryError, FileNotFoundError) as error:
        return _error(error)


def _packed(settings: NativeSettings, out: Path, args: argparse.Namespace) -> int:
    """Run a packed tower, writing ``native.json`` and ``native.md`` after every image set (a long run stopped
    early keeps the sets it finished)."""

    def write(result: Result, final: bool = False) -> int:
        return _written(result, out, plot=final and not args.no_plot, echo=final)

    return write(run_native(settings, progress=not args.no_progress, on_size=write), final=True)


def _vllm(settings: ServingSettings, out: Path, args: argparse.Namespace) -> int:
    from ..serve.launch import ServeUnavailable

    # A plain SIGTERM would end Python without unwinding, leaving both vLLM servers running: exit through
    # SystemExit instead, so the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run_serving(settings, out, progress=not args.no_progress)
    except ServeUnavailable as error:
        return _error(error)
    return _written(result, out, plot=not args.no_plot)


def _written(result: Result, out: Path, plot: bool, echo: bool = True) -> int:
    """Write a packed or vLLM run's result file, markdown (table and summary) and plot; print the markdown."""
    data = result.to_dict()
    text = report.markdown(result, data["provenance"])
    files = report.write_run(data, out, text, plot=plot)
    if echo:
        print(f"\n{text}\nfiles: {', '.join(files.values())}")
    return 0
