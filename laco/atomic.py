"""Write files so that a kill or a full disk mid-write never leaves a part of one where a reader looks."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path``: a reader sees the old file or the whole new one, never a part.

    The text goes to a hidden temporary file beside ``path`` (same filesystem), is flushed to disk, then renamed
    over ``path`` (atomic on POSIX). A failed write leaves only the temporary file, which the next write replaces.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
