"""Argument types and options the subcommands share."""

from __future__ import annotations

import argparse

from ..arguments import non_negative_int, positive_int, seed_list
from ..precision import PRECISIONS


def add_precision(parser: argparse.ArgumentParser, default: str | None = "auto", what: str = "answers in") -> None:
    parser.add_argument(
        "--precision",
        default=default,
        choices=PRECISIONS,
        help=f"the dtype the model {what}: auto (bf16 where the hardware multiplies it natively, else fp32), "
        "bf16, fp16 (GPU) or fp32",
    )


__all__ = ["add_precision", "non_negative_int", "positive_int", "seed_list"]
