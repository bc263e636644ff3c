"""A file of answers already computed, appended after every batch, so an interrupted evaluation resumes.

lmms-eval's own ``--use_cache`` stores responses only once a whole request type of a run has finished (and
keeps nothing from a failed run), so a long run killed near its end starts again from zero. The ``laco`` model
takes ``response_log=FILE``: it writes each batch's answers there as soon as they exist and, on the next run
with the same file, answers those requests from it instead of the model.

The file is JSON lines. The first line names the checkpoint (path, file sizes and times, dtype); a log written
for another checkpoint is refused rather than silently reused. Each further line is ``{"key", "response"}``,
where the key hashes everything that decides the answer: request type, task, split, document, prompt, and the
continuation or generation settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_FORMAT = 1


def checkpoint_fingerprint(directory: str | Path, dtype: str) -> str:
    """Identity of a checkpoint's files as they are now (retraining into the same folder changes it)."""
    directory = Path(directory).resolve()
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(directory)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return f"{directory}|{dtype}|{digest.hexdigest()[:16]}"


def request_key(*parts: Any) -> str:
    """A stable hash of the JSON-able parts that decide one answer."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseLog:
    """Answers by request key, read from ``path`` if it exists and appended to it as batches finish."""

    def __init__(self, path: str | Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._responses: dict[str, Any] = {}
        if self.path.is_file() and self.path.stat().st_size:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append([{"laco_response_log": _FORMAT, "checkpoint": fingerprint}])

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("laco_response_log") != _FORMAT:
            raise ValueError(f"{self.path} is not a laco response log; pass another response_log path.")
        if header.get("checkpoint") != self.fingerprint:
            raise ValueError(
                f"{self.path} holds answers of another checkpoint ({header.get('checkpoint')}), not of "
                f"{self.fingerprint}; delete it or pass a new response_log path."
            )
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                # a process killed mid-write leaves at most its last line cut short: that answer is recomputed
                if number == len(lines):
                    continue
                raise ValueError(f"{self.path}:{number} is not valid JSON; delete the file to start over.") from None
            self._responses[entry["key"]] = entry["response"]

    def __len__(self) -> int:
        return len(self._responses)

    def get(self, key: str) -> Any | None:
        return self._responses.get(key)

    def add(self, items: Iterable[tuple[str, Any]]) -> None:
        """Record ``(key, response)`` pairs and flush them to disk before returning."""
        entries = [{"key": key, "response": response} for key, response in items]
        for entry in entries:
            self._responses[entry["key"]] = entry["response"]
        self._append(entries)

    def _append(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        with self.path.open("a", encoding="utf-8") as file:
            file.write("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))
            file.flush()
            os.fsync(file.fileno())
