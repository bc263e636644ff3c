"""The ``laco`` command's parser and entry point (re-exported by :mod:`laco.cli`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import convert, evaluate, generate, retrofit, train
from .refusals import refusal_message

DEBUG_FLAG = "--debug"


def _add_delegate(subparsers, name: str, help_text: str, module: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, add_help=False)
    parser.set_defaults(handler=None, delegate=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laco",
        description="LaCo: compress visual tokens inside the vision encoder of multimodal LLMs, and measure it.",
    )
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the traceback of a refusal too (it is one line without)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add(subparsers)
    evaluate.add(subparsers)
    generate.add(subparsers)
    train.add_table(subparsers)
    convert.add(subparsers)
    retrofit.add(subparsers)
    _add_delegate(subparsers, "bench", "time LaCo against external compression at real geometries", "laco.bench")
    _add_delegate(
        subparsers, "study", "the quality study: every compressor, depth and shortcut on real tasks", "laco.study"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(argv) and argv[0] == DEBUG_FLAG
    argv = argv[1:] if debug else argv
    parser = build_parser()
    # bench and study own their option parsers: everything after the subcommand goes to them
    if argv and argv[0] in ("bench", "study"):
        import importlib

        return importlib.import_module(f"laco.{argv[0]}.cli").main(argv[1:]) or 0
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Exception as error:
        message = None if debug else refusal_message(error)
        if message is None:
            raise  # not a refusal (or --debug): the traceback is what a bug report needs
        # SystemExit with a message: Python prints it as one line on stderr and exits with status 1
        raise SystemExit(f"laco {args.command}: {message}") from None


__all__ = ["DEBUG_FLAG", "build_parser", "main"]
