"""Argument types and options the subcommands share."""

from __future__ import annotations

import argparse

from ..arguments import non_negative_int, positive_int, seed_list
from ..precision import PRECISIONS


def step_list(text: str) -> list[int]:
    """argparse type: ``0,100,300`` -> ``[0, 100, 300]`` (distinct step counts >= 0, in the order given)."""
    try:
        steps = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps takes integers such as 0,100,300, not {text!r}") from None
    if not steps or len(set(steps)) != len(steps) or min(steps) < 0:
        raise argparse.ArgumentTypeError(f"--steps needs distinct step counts >= 0 such as 0,100,300, not {text!r}")
    return steps


def compressor_option(text: str) -> tuple[str, object]:
    """argparse type: ``KEY=VALUE`` -> ``(key, value)``, the value read as YAML (``init=ffn_reuse``, ``shortcut=true``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as init=ffn_reuse, not {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not YAML ({error})") from None


def add_precision(parser: argparse.ArgumentParser, default: str | None = "auto", what: str = "answers in") -> None:
    parser.add_argument(
        "--precision",
        default=default,
        choices=PRECISIONS,
        help=f"the dtype the model {what}: auto (bf16 where the hardware multiplies it natively, else fp32), "
        "bf16, fp16 (GPU) or fp32",
    )


__all__ = ["add_precision", "compressor_option", "step_list", "non_negative_int", "positive_int", "seed_list"]
