"""Seeds, not single runs: train one config under several seeds and report mean ± standard deviation.

``laco train --seeds 0,1,2 --output-dir runs/laco`` trains ``runs/laco/seed0``, ``seed1``, ``seed2`` (each an
ordinary, resumable run directory) and records every finished seed's wall time and scores in
``runs/laco/seeds.json``; ``laco table runs/laco runs/external runs/none`` turns such arms into one table
(markdown and JSON) with the blind baselines and the machine the runs were timed on.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any

SEEDS_FILE = "seeds.json"
GROUPS = ("yes/no", "shape", "colour")


@dataclass
class SeedRecord:
    """One finished seed: its run directory, wall time and scores (fractions in [0, 1])."""

    seed: int
    run: str
    wall_seconds: float
    train_seconds: float
    eval_seconds: float
    accuracy: float
    groups: dict[str, float]
    majority_accuracy: float
    question_prior_accuracy: float | None
    image_tokens: int
    precision: str


def seed_dir(output_dir: str | Path, seed: int) -> Path:
    return Path(output_dir) / f"seed{seed}"


def record_seed(output_dir: str | Path, record: SeedRecord, machine: dict[str, Any]) -> Path:
    """Add (or replace) ``record`` in ``output_dir/seeds.json``, written atomically after every seed."""
    path = Path(output_dir) / SEEDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_seeds(path) if path.exists() else {"machine": machine, "seeds": []}
    data["seeds"] = [s for s in data["seeds"] if s["seed"] != record.seed] + [asdict(record)]
    data["seeds"].sort(key=lambda s: s["seed"])
    data["machine"] = machine
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def read_seeds(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / SEEDS_FILE
    if not path.exists():
        arm = path.parent if path.name == SEEDS_FILE else path
        raise FileNotFoundError(f"{path} not found; make it with: laco train --seeds 0,1,2 --output-dir {arm}")
    return json.loads(path.read_text())


def describe_machine() -> dict[str, Any]:
    """The CPU (model name), cores and torch threads the seeds were timed with."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def summarize(arm: str | Path) -> dict[str, Any]:
    """Mean ± std over an arm's seeds: accuracy overall and per answer type, wall time, and what it ran on."""
    data = read_seeds(arm)
    seeds = data["seeds"]
    if not seeds:
        raise ValueError(f"{arm} has no finished seed yet.")
    summary: dict[str, Any] = {"arm": Path(arm).name, "n": len(seeds), "seeds": [s["seed"] for s in seeds]}
    for key in ("accuracy", "wall_seconds", "majority_accuracy"):
        summary[key] = _mean_std([s[key] for s in seeds])
    for group in GROUPS:
        values = [s["groups"][group] for s in seeds if group in s["groups"]]
        summary[group] = _mean_std(values) if values else None
    priors = [s["question_prior_accuracy"] for s in seeds if s["question_prior_accuracy"] is not None]
    summary["question_prior_accuracy"] = _mean_std(priors) if priors else None
    summary["image_tokens"] = seeds[0]["image_tokens"]
    summary["precision"] = sorted({s["precision"] for s in seeds})
    summary["machine"] = data["machine"]
    return summary


def _percent(value: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    average, spread = value
    return f"{100 * average:.1f} ± {100 * spread:.1f}"


def markdown_table(arms: Sequence[str | Path]) -> tuple[str, list[dict[str, Any]]]:
    """One row per arm (mean ± std over its seeds) and a row of blind baselines; and the summaries behind it."""
    summaries = [summarize(arm) for arm in arms]
    lines = [
        "| arm | image tokens | seeds | wall time (min) | exact match | yes/no | shape | colour |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summaries:
        wall = row["wall_seconds"]
        lines.append(
            f"| {row['arm']} | {row['image_tokens']} | {row['n']} | {wall[0] / 60:.1f} ± {wall[1] / 60:.1f} "
            f"| {_percent(row['accuracy'])} | {_percent(row['yes/no'])} | {_percent(row['shape'])} "
            f"| {_percent(row['colour'])} |"
        )
    first = summaries[0]
    prior = _percent(first["question_prior_accuracy"])
    lines.append(
        f"| *blind baselines* | 0 | | | majority {_percent(first['majority_accuracy'])}, question-only {prior} | | | |"
    )
    machines = {json.dumps(row["machine"], sort_keys=True) for row in summaries}
    described = "; ".join(
        f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread{'s' if m['torch_threads'] != 1 else ''}"
        + (f", {m['gpu']}" if m["gpu"] else "")
        for m in map(json.loads, sorted(machines))
    )
    precisions = sorted({p for row in summaries for p in row["precision"]})
    lines += ["", f"Mean ± standard deviation over seeds; timed on {described}; precision {', '.join(precisions)}."]
    return "\n".join(lines), summaries


def write_table(arms: Sequence[str | Path], out: str | Path) -> tuple[Path, Path]:
    """``out`` (markdown) and ``out`` with ``.json`` (the summaries) for ``arms``."""
    text, summaries = markdown_table(arms)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    data_path = out.with_suffix(".json")
    data_path.write_text(json.dumps(summaries, indent=2) + "\n")
    return out, data_path


__all__ = [
    "SEEDS_FILE",
    "SeedRecord",
    "describe_machine",
    "markdown_table",
    "read_seeds",
    "record_seed",
    "seed_dir",
    "summarize",
    "write_table",
]
