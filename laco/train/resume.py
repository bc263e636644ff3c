"""A run owns its directory: one process trains in it at a time, and a rerun continues the run it finds or stops.

* :class:`RunLock`: an advisory ``flock`` on ``<run>/.laco.lock`` held for the whole run by the main process. The
  operating system drops it when the process ends, however it ends, so a killed run never leaves a stale lock. A
  second run in the same directory is refused, naming the process that holds it.
* :func:`accept_config`: a rerun over existing training state must ask for the same result as the run that
  wrote it. The recorded ``config.yaml`` is compared key by key; a difference in anything that changes the
  trained weights (model, placement, data, stages, seed, precision, ...) is refused, naming each difference and
  the two ways on (a new ``--output-dir``, or ``--force-config``). Keys in :data:`HARMLESS` may change freely.
  ``config.yaml`` is written only after this check passes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..config import RunConfig, read_run_config
from ..typed import to_plain
from .checkpoints import checkpoints

try:  # POSIX; elsewhere runs are not locked (and say so)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".laco.lock"
FORCED_LOG = "config-overrides.log"

HARMLESS: tuple[str, ...] = (
    "name",  # a label in the summary
    "output_dir",  # the run directory itself (it may have been moved)
    "training.logging_steps",
    "training.save_steps",  # how often state is saved, not what is trained
    "training.dataloader_num_workers",
    "training.threads",
    "data.strict",  # whether a bad record stops the run; the records used are the same when it does not
    "data.eval_json",
    "eval",
)
"""Dotted config keys (and key prefixes) a rerun may change without changing the trained weights. Everything
else, including keys added later, counts as result-changing until listed here."""

# Environment variables that carry a process's global rank before torch.distributed is initialised: torchrun and
# accelerate (RANK), Open MPI, MPICH/Intel MPI, MVAPICH, PMIx.
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")


class RunDirectoryBusy(RuntimeError):
    """Another process is training in the same run directory."""


class ConfigMismatch(ValueError):
    """A rerun's config asks for a different result than the run whose state is in the directory."""


def launch_rank() -> int:
    """This process's global rank as its launcher set it (0 when not launched as one of several processes)."""
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


class RunLock:
    """Hold ``<directory>/.laco.lock`` while a run trains there (the main process only; other ranks follow it)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._handle = None

    def __enter__(self) -> RunLock:
        if launch_rank() != 0 or fcntl is None:
            return self
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryBusy(
                f"run directory {self.path.parent} is in use by {holder}; wait for that run to finish (or stop it), "
                "or train into another --output-dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def has_training_state(output: Path) -> bool:
    """Whether ``output`` holds anything a rerun would continue from: a checkpoint or a finished stage."""
    if not output.is_dir():
        return False
    return any(checkpoints(stage) or (stage / "final").is_dir() for stage in output.iterdir() if stage.is_dir())


def accept_config(config: RunConfig, output: Path, *, force: bool = False) -> list[str]:
    """Check ``config`` against the one recorded in ``output``, then record it; returns the differences accepted.

    Raises :class:`ConfigMismatch` when the directory holds training state from a run with a result-changing
    difference, unless ``force``. Only the main process writes.
    """
    recorded_path = output / CONFIG_FILE
    changed: list[str] = []
    if recorded_path.exists() and has_training_state(output):
        differences = config_differences(_recorded(recorded_path), config.to_dict())
        changed = [line for key, line in differences if not is_harmless(key)]
        if changed and not force:
            raise ConfigMismatch(
                f"{output} holds a run trained with a different config, so continuing it would not give the model "
                "either config describes. Result-changing differences (recorded -> now):\n  "
                + "\n  ".join(changed)
                + f"\nTo continue that run, rerun with its config ({recorded_path}). To start a new run, pass a new "
                "--output-dir. To continue it with these values anyway (its checkpoints and optimizer state are "
                "reused as they are), pass --force-config; the override is logged in "
                f"{output / FORCED_LOG}."
            )
    if launch_rank() == 0:
        if changed:
            note = f"{time.strftime('%Y-%m-%d %H:%M:%S')} --force-config accepted:\n  " + "\n  ".join(changed) + "\n"
            with open(output / FORCED_LOG, "a", encoding="utf-8") as log:
                log.write(note)
        atomic_write_text(recorded_path, yaml.safe_dump(config.to_dict(), sort_keys=False))
    return changed


def _recorded(path: Path) -> dict[str, Any]:
    """The recorded config as plain data, with today's defaults filled in for keys it predates."""
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return to_plain(read_run_config(raw))
    except (ValueError, TypeError):
        return raw  # written by another laco version: compare what is there


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, str]]:
    """``(dotted key, "key: recorded -> current")`` for every leaf that differs."""
    old, new = dict(_flatten(recorded)), dict(_flatten(current))
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            shown = ["(absent)" if value is missing else json.dumps(value) for value in (before, after)]
            lines.append((key, f"{key}: {shown[0]} -> {shown[1]}"))
    return lines


def is_harmless(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in HARMLESS)


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}.{index}")
    else:
        yield prefix, value
