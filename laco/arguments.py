"""``argparse`` types every command line of laco shares (the ``laco`` subcommands, ``laco bench``, ``laco study``):
whole numbers with a lower bound and seed lists, refused with the value and the range."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--limit 0`` and ``--jobs 0`` were silently ignored before)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is out of range: use a whole number >= {low}")
    return value


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers such as 0,1,2, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds needs distinct seeds >= 0 such as 0,1,2, not {text!r}")
    return seeds


__all__ = ["non_negative_int", "positive_int", "seed_list"]
