"""How a settings dataclass becomes command-line options, for every engine of ``laco bench``.

A field made with :func:`option` carries its help text and how the command line spells its value; :func:`given`
reads back only what the user typed, so each engine's dataclass keeps its own defaults and an option another
engine owns can be refused by name.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any

FLAG = "flag"
"""``parse`` of a boolean field: the option takes no value and sets the field to ``True``."""


def csv(text: str | Sequence[Any]) -> list[str]:
    """A comma-separated list, as ``--measure encoder,train`` writes it (or a list, as YAML may)."""
    items = text.split(",") if isinstance(text, str) else text
    return [str(item).strip() for item in items if str(item).strip()]


def csv_or_none(text: str) -> list[str] | None:
    """A comma-separated list, or ``none`` (or nothing) for no list at all."""
    items = csv(text)
    return None if [item.lower() for item in items] in ([], ["none"]) else items


def option(default: Any, help: str, parse: Callable[[str], Any] | str = str, choices: Sequence[str] | None = None):
    """A settings field with its command-line spelling: ``parse`` reads the option's text (:data:`FLAG` for a
    switch), ``help`` says what it does."""
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices})


def flag(setting: Field | str) -> str:
    return "--" + (setting if isinstance(setting, str) else setting.name).replace("_", "-")


def add_options(parser: argparse.ArgumentParser, engines: Mapping[str, type]) -> dict[str, list[str]]:
    """One option per field of every engine's settings class (the first engine's help wins for a shared name);
    returns which engines own each field. Unset options stay out of the namespace (see :func:`given`)."""
    owners: dict[str, list[str]] = {}
    for engine, settings in engines.items():
        for setting in fields(settings):
            owners.setdefault(setting.name, []).append(engine)
            if "help" in setting.metadata and not any(action.dest == setting.name for action in parser._actions):
                _add(parser, setting)
    for action in parser._actions:
        if action.dest in owners and len(owners[action.dest]) < len(engines) and action.help:
            action.help += f" [{', '.join(owners[action.dest])}]"
    return owners


def _add(parser: argparse.ArgumentParser, setting: Field) -> None:
    help, parse = setting.metadata["help"], setting.metadata["parse"]
    if parse == FLAG:
        parser.add_argument(flag(setting), action="store_true", default=argparse.SUPPRESS, help=help)
        return
    default = setting.default if setting.default is not MISSING else None
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    shown = "" if default is None or "default" in help else f" (default: {default})"
    parser.add_argument(
        flag(setting), type=parse, default=argparse.SUPPRESS, choices=setting.metadata["choices"], help=help + shown
    )


def given(namespace: argparse.Namespace, settings: type) -> dict[str, Any]:
    """The fields of ``settings`` the command line set."""
    return {f.name: getattr(namespace, f.name) for f in fields(settings) if hasattr(namespace, f.name)}


def check_threads(threads: int | None, usable: int) -> int:
    """``--threads``: ``None`` for every usable core; refuses 0 and more threads than usable cores (OpenMP
    threads beyond the cores wait on each other at every barrier, which would slow every variant)."""
    if threads is None:
        return usable
    if threads < 1:
        raise ValueError(f"--threads {threads}: give 1..{usable}, or leave --threads out to use all {usable} cores.")
    if threads > usable:
        raise ValueError(
            f"--threads {threads} exceeds the {usable} usable core(s) of this process; pass --threads {usable} or fewer."
        )
    return threads
