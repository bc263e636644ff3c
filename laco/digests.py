"""Content digests and structural checks of the files a saved checkpoint is made of (stdlib only).

A size or a header check catches a file cut short; only a content digest catches a flipped bit, a copy gone
wrong or a file edited by hand after laco wrote it. laco records the sha256 of every file it writes into a
checkpoint (training checkpoints in their manifest, a run's ``final/`` and ``laco convert`` outputs in
:data:`DIGESTS_FILE`) and checks them before the files are used again: on resume, by ``laco eval`` /
``laco generate`` / the lmms-eval model, and by the vLLM plugin.

A directory without digests (written by an older laco, or by hand) is not refused: :func:`verify_digests` says so
by returning ``False`` and the structural checks still apply. Files added to a directory after its digests were
written (an ``eval.json``, a README) are not checked; files listed but gone are refused.

This module imports nothing from laco, so every layer (training, serving, the CLI, ``laco.load``) can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

DIGESTS_FILE = "laco-digests.json"
FORMAT = 1
_CHUNK = 1 << 20
_SKIPPED_SUFFIXES = (".tmp", ".lock")


class DigestMismatch(ValueError):
    """A file whose content is not what laco wrote (or a listed file that is gone); the message names it."""


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in chunks so a multi-gigabyte weight file needs no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(directory: str | Path, exclude: Iterable[str] = ()) -> list[str]:
    """Every regular file under ``directory`` (relative POSIX paths, sorted), less the digests file, temporary
    files and ``exclude``."""
    directory = Path(directory)
    skipped = {DIGESTS_FILE, *exclude}
    return [
        path.relative_to(directory).as_posix()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
        and not path.is_symlink()
        and path.relative_to(directory).as_posix() not in skipped
        and not path.name.endswith(_SKIPPED_SUFFIXES)
    ]


def file_digests(directory: str | Path, files: Iterable[str] | None = None) -> dict[str, str]:
    """``{relative path: sha256}`` of ``files`` (default: :func:`checkpoint_files`) under ``directory``."""
    directory = Path(directory)
    names = checkpoint_files(directory) if files is None else list(files)
    return {name: sha256_file(directory / name) for name in names}


def write_digests(directory: str | Path, files: Iterable[str] | None = None) -> Path:
    """Record the sha256 of ``files`` (default: every file now in ``directory``) in ``directory/DIGESTS_FILE``.

    Written to a temporary file and renamed into place, so a kill leaves either no digests or complete ones.
    """
    directory = Path(directory)
    record = {"format": FORMAT, "algorithm": "sha256", "files": file_digests(directory, files)}
    target = directory / DIGESTS_FILE
    temporary = target.with_name(f".{target.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target


def digest_problem(directory: str | Path, digests: Mapping[str, str]) -> str | None:
    """Why the files under ``directory`` do not match ``digests`` (a sentence naming the first file), or ``None``."""
    directory = Path(directory)
    for name, expected in sorted(digests.items()):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing (its digest is recorded, so it was part of the checkpoint)"
        if sha256_file(path) != expected:
            return (
                f"{name} does not match the sha256 recorded when it was written: its content changed since (a "
                "flipped bit on disk, a broken copy, or an edit)"
            )
    return None


def read_digests(directory: str | Path) -> dict[str, str] | None:
    """The digests recorded in ``directory/DIGESTS_FILE``, or ``None`` when it has none."""
    path = Path(directory) / DIGESTS_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        if record.get("algorithm", "sha256") != "sha256" or not isinstance(files, dict):
            raise ValueError("not a sha256 file map")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DigestMismatch(
            f"{path} is unreadable ({error}); restore the checkpoint from a good copy, or delete {DIGESTS_FILE} to "
            "load it unchecked."
        ) from None
    return {str(name): str(value) for name, value in files.items()}


def verify_digests(directory: str | Path) -> bool:
    """Check ``directory`` against its :data:`DIGESTS_FILE`: ``True`` when every file matches, ``False`` when the
    directory has no digests (an older or hand-made checkpoint); :class:`DigestMismatch` naming the file otherwise.
    """
    digests = read_digests(directory)
    if digests is None:
        return False
    problem = digest_problem(directory, digests)
    if problem is not None:
        raise DigestMismatch(
            f"{Path(directory)}: {problem}. Restore the checkpoint from a good copy (or re-save it); laco does not "
            "load weights whose content is not what was written."
        )
    return True


def safetensors_problem(path: str | Path) -> str | None:
    """Why a safetensors file cannot be complete (cut short, empty, header past its end), or ``None``.

    Reads the 8-byte length and the JSON header only: cheap, and it catches every truncation.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return "is cut short (no safetensors header)"
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > size - 8:
            return "is cut short (its safetensors header is incomplete)"
        try:
            header = json.loads(handle.read(header_size))
            end = max(
                (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            return f"has an unreadable safetensors header ({error})"
    if 8 + header_size + end != size:
        return f"has {size} bytes where its safetensors header accounts for {8 + header_size + end}"
    return None


def check_weight_files(directory: str | Path) -> bool:
    """Refuse, naming the file, a safetensors file cut short (:func:`safetensors_problem`) or any file whose content
    no longer matches the digests laco wrote (:func:`verify_digests`); returns whether digests were there to check.
    What every reader of a laco checkpoint (``laco.load``, the family check, the vLLM plugin) runs before loading."""
    for file in sorted(Path(directory).glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem is not None:
            raise DigestMismatch(
                f"{file} {problem}: the file is damaged (an interrupted copy or save); copy or save it again."
            )
    return verify_digests(directory)


__all__ = [
    "check_weight_files",
    "DIGESTS_FILE",
    "DigestMismatch",
    "checkpoint_files",
    "digest_problem",
    "file_digests",
    "read_digests",
    "safetensors_problem",
    "sha256_file",
    "verify_digests",
    "write_digests",
]
