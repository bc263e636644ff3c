"""The result file every engine writes (``bench.json``, ``native.json``, ``serving.json``): one versioned envelope.

Every file holds ``schema`` (:data:`SCHEMA`, a number raised whenever a reader of the old layout would misread
the new one), ``engine``, ``provenance`` (commit, date, CPU model and the load average before and after the run:
what a reader needs to weigh the numbers), the engine's own payload, and ``speedups``: one record per measurement
and compressed variant, in the same keys for every engine, which the plot and ``--compare`` read.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..measure.machine import checkout_commit

SCHEMA = 2
LEGACY_SCHEMAS = {"laco-bench/1": 1, "laco-bench-native/1": 1}
"""Files written before the schema was a number (batched and packed runs), read as version 1."""
ENGINES = ("batched", "packed", "vllm")
RESULT_FILES = {"batched": "bench.json", "packed": "native.json", "vllm": "serving.json"}


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # no load average on this platform
        return None


def provenance(cpu: str, load_start: list[float] | None, started: float) -> dict[str, Any]:
    """Where and when a run happened; ``load_start`` is :func:`load_average` taken before it timed anything."""
    return {
        "commit": checkout_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "cpu": cpu,
        "load_average_start": load_start,
        "load_average_end": load_average(),
    }


def speedup_record(measurement: str, variant: Any, depth: int, speed: Any, title: str | None = None) -> dict:
    """One entry of ``speedups``: ``variant`` (a :class:`~laco.bench.variants.BenchVariant`) against its baseline
    under ``measurement``; ``speed`` a :class:`~laco.bench.results.SpeedUp`."""
    return {
        "measurement": measurement,
        "title": title or measurement,
        "variant": variant.name,
        "baseline": variant.baseline,
        "group": variant.group,
        "method": variant.placement.method,
        "fraction": variant.fraction(depth),
        "same_tokens": variant.same_tokens_as_baseline,
        "measured": speed.measured,
        "q1": speed.q1,
        "q3": speed.q3,
        "bound": speed.bound,
    }


def envelope(engine: str, provenance: dict[str, Any], headline: str | None, **payload: Any) -> dict[str, Any]:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines are {ENGINES}.")
    return {"schema": SCHEMA, "engine": engine, "provenance": provenance, "headline": headline, **payload}


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
