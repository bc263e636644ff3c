"""The ``laco`` command: train, eval, generate, convert, bench, study.

Every subcommand's ``--help`` explains its options; configs are YAML files (see ``configs/``), and any config key
can be overridden with ``--set key.path=value``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import convert, evaluate, generate, train
from .arguments import non_negative_int, positive_int


def _add_delegate(subparsers, name: str, help_text: str, module: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, add_help=False)
    parser.set_defaults(handler=None, delegate=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laco",
        description="LaCo: compress visual tokens inside the vision encoder of multimodal LLMs, and measure it.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add(subparsers)
    evaluate.add(subparsers)
    generate.add(subparsers)
    train.add_table(subparsers)
    convert.add(subparsers)
    _add_delegate(subparsers, "bench", "time LaCo against external compression at real geometries", "laco.bench")
    _add_delegate(
        subparsers, "study", "the quality study: every compressor, depth and shortcut on real tasks", "laco.study"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # bench and study own their option parsers: everything after the subcommand goes to them
    if argv and argv[0] in ("bench", "study"):
        import importlib

        return importlib.import_module(f"laco.{argv[0]}.cli").main(argv[1:]) or 0
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except _refusals() as refusal:
        # a refusal is the answer, not a crash: its message names the problem and the fix, without a traceback
        raise SystemExit(f"laco {args.command}: {refusal}") from None


def _refusals() -> tuple[type[Exception], ...]:
    """Errors that refuse a request before (or instead of) doing the wrong thing."""
    from ..data import DataError
    from ..train.init_from import InitFromError
    from ..train.resume import ConfigMismatch, RunDirectoryBusy
    from ..weights import CheckpointMismatch, UnsafeWeights

    return (CheckpointMismatch, ConfigMismatch, DataError, InitFromError, RunDirectoryBusy, UnsafeWeights)


__all__ = ["build_parser", "main", "non_negative_int", "positive_int"]
