"""The result file every engine writes (``bench.json``, ``native.json``, ``serving.json``; written by
:meth:`~laco.bench.results.Result.to_dict`): its schema number, reading and writing it.

``schema`` (:data:`SCHEMA`, raised whenever a reader of the old layout would misread the new one), ``engine``,
``provenance`` (what a reader needs to weigh the numbers; :class:`~laco.measure.machine.RunStart`), the preset and
variants, ``measurements`` (measurement -> variant -> samples, FLOPs, tokens, speed-up), and ``speedups``: one record
per measurement and compressed variant, in the same keys for every engine, which the plot and ``--compare`` read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA = 3
LEGACY_SCHEMAS = {"laco-bench/1": 1, "laco-bench-native/1": 1}
"""Files written before the schema was a number (batched and packed runs), read as version 1."""
ENGINES = ("batched", "packed", "vllm")
RESULT_FILES = {"batched": "bench.json", "packed": "native.json", "vllm": "serving.json"}


def schema_version(data: Any, path: Path | str) -> int:
    """The schema number of a result file; refuses other files, and files newer than this laco reads."""
    schema = data.get("schema") if isinstance(data, dict) else None
    version = LEGACY_SCHEMAS.get(schema, schema) if isinstance(schema, str) else schema
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path} is not a laco bench result (expected schema {SCHEMA}, found {schema!r}).")
    if version > SCHEMA:
        raise ValueError(
            f"{path} has result schema {version}, newer than this laco reads ({SCHEMA}); update laco to read it."
        )
    return version


def read_result(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A result file, or the one in a run's ``--out`` directory, checked by :func:`schema_version`."""
    path = Path(path)
    if path.is_dir():
        path = next((path / name for name in RESULT_FILES.values() if (path / name).exists()), path / "bench.json")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass the result files (or --out directories) of runs.")
    data = json.loads(path.read_text())
    schema_version(data, path)
    return path, data


def write_result(data: dict[str, Any], directory: str | Path) -> Path:
    path = Path(directory) / RESULT_FILES[data["engine"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path
