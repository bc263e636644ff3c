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
from dataclasses import asdict, dataclass, field
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
    group_priors: dict[str, float] = field(default_factory=dict)
    """The question-only prior's accuracy per answer type (empty in records written before it was kept)."""
    tower_speedup_bound: float | None = None
    """The tower's FLOP-bound speed-up over the uncompressed tower (``None`` where laco.cost has no geometry)."""


# laco's offline encoders by the name a run config gives them -> their laco.cost geometry
_GEOMETRIES = {"dinov2-small": "dinov2-s"}


def tower_speedup_bound(vision: str | None, image_size: int | None, placement: Any) -> float | None:
    """``flops(uncompressed tower) / flops(tower under placement)`` from :mod:`laco.cost`, for an encoder it knows."""
    from ..cost import ENCODERS, encoder_flops

    geometry = ENCODERS.get(_GEOMETRIES.get(str(vision), str(vision)))
    if geometry is None:
        return None
    size = image_size or geometry.image_size
    options = {"factor": placement.factor, "method": placement.method, "options": placement.option_dict}
    compressed = encoder_flops(geometry, placement.layers, image_size=size, **options).total
    return round(encoder_flops(geometry, None, image_size=size).total / compressed, 3)


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
        above = [s["groups"][group] - s["group_priors"][group] for s in seeds if group in s.get("group_priors", {})]
        summary[f"{group} above prior"] = _mean_std(above) if above else None
        priors = [s["group_priors"][group] for s in seeds if group in s.get("group_priors", {})]
        summary[f"{group} prior"] = _mean_std(priors) if priors else None
    priors = [s["question_prior_accuracy"] for s in seeds if s["question_prior_accuracy"] is not None]
    summary["question_prior_accuracy"] = _mean_std(priors) if priors else None
    summary["image_tokens"] = seeds[0]["image_tokens"]
    summary["tower_speedup_bound"] = seeds[0].get("tower_speedup_bound")
    summary["precision"] = sorted({s["precision"] for s in seeds})
    summary["machine"] = data["machine"]
    return summary


def _percent(value: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    average, spread = value
    return f"{100 * average:.1f} ± {100 * spread:.1f}"


def _type_cell(row: dict[str, Any], group: str) -> str:
    """Accuracy on one answer type, and by how much it beats that type's question-only prior (in points)."""
    cell, above = _percent(row[group]), row.get(f"{group} above prior")
    return cell if above is None else f"{cell} ({100 * above[0]:+.1f})"


def markdown_table(arms: Sequence[str | Path]) -> tuple[str, list[dict[str, Any]]]:
    """One row per arm (mean ± std over its seeds; per answer type also the points above that type's question-only
    prior) and a row of blind baselines (the priors per type); and the summaries behind it."""
    summaries = [summarize(arm) for arm in arms]
    lines = [
        "| arm | image tokens | tower speed-up (FLOP bound) | seeds | wall time (min) | exact match | yes/no | shape "
        "| colour |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summaries:
        wall = row["wall_seconds"]
        types = " | ".join(_type_cell(row, group) for group in GROUPS)
        lines.append(
            f"| {row['arm']} | {row['image_tokens']} | {_speedup(row)} | {row['n']} "
            f"| {wall[0] / 60:.1f} ± {wall[1] / 60:.1f} "
            f"| {_percent(row['accuracy'])} | {types} |"
        )
    first = summaries[0]
    prior = _percent(first["question_prior_accuracy"])
    type_priors = " | ".join(_percent(first.get(f"{group} prior")) for group in GROUPS)
    lines.append(
        f"| *blind baselines* | 0 | | | | majority {_percent(first['majority_accuracy'])}, question-only {prior} "
        f"| {type_priors} |"
    )
    machines = {json.dumps(row["machine"], sort_keys=True) for row in summaries}
    described = "; ".join(
        f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread{'s' if m['torch_threads'] != 1 else ''}"
        + (f", {m['gpu']}" if m["gpu"] else "")
        for m in map(json.loads, sorted(machines))
    )
    precisions = sorted({p for row in summaries for p in row["precision"]})
    lines += [
        "",
        f"Mean ± standard deviation over seeds; in brackets, points above that answer type's question-only prior "
        f"(the blind-baseline row); timed on {described}; precision {', '.join(precisions)}.",
    ]
    rule = choose_default(summaries)
    if rule is not None:
        lines += ["", describe_choice(rule)]
    return "\n".join(lines), summaries


def _speedup(row: dict[str, Any]) -> str:
    bound = row.get("tower_speedup_bound")
    return "-" if not bound else f"{bound:.2f}x"


# The rule that picks the default placement (issue 23): the mean over seeds may trail external compression by at
# most this much (fractions) overall and on the types where compression costs, and the tower must gain this much.
DEFAULT_RULE = {"accuracy": 0.01, "shape": 0.05, "colour": 0.05}
DEFAULT_RULE_MIN_SPEEDUP = 1.3


def choose_default(summaries: Sequence[dict[str, Any]], reference: str = "external") -> dict[str, Any] | None:
    """Which arm the rule picks: among the compressed arms within :data:`DEFAULT_RULE` of ``reference`` (mean over
    seeds) on every key, with a tower speed-up of at least :data:`DEFAULT_RULE_MIN_SPEEDUP`, the fastest tower.
    Returns ``None`` without a ``reference`` arm, else the choice (``None`` if no arm qualifies) and, for every
    candidate, its shortfall per key in points (0 where it is within the margin)."""
    by_arm = {row["arm"]: row for row in summaries}
    if reference not in by_arm:
        return None
    target = by_arm[reference]
    candidates = []
    for row in summaries:
        if row["arm"] in (reference, "none") or not row.get("tower_speedup_bound"):
            continue
        short = {
            key: max(0.0, target[key][0] - margin - row[key][0])
            for key, margin in DEFAULT_RULE.items()
            if row.get(key) and target.get(key)
        }
        fast = row["tower_speedup_bound"] >= DEFAULT_RULE_MIN_SPEEDUP
        candidates.append({"arm": row["arm"], "speedup": row["tower_speedup_bound"], "seeds": row["n"],
                           "shortfall": short, "meets": fast and not any(short.values())})  # fmt: skip
    passing = [c for c in candidates if c["meets"]]
    chosen = max(passing, key=lambda c: c["speedup"])["arm"] if passing else None
    return {"reference": reference, "chosen": chosen, "candidates": candidates}


def describe_choice(rule: dict[str, Any]) -> str:
    """The rule's verdict as a paragraph: the arm it picks, and by how much each other arm missed."""
    limits = ", ".join(f"{key} >= {rule['reference']} - {100 * margin:.0f}" for key, margin in DEFAULT_RULE.items())
    head = f"Default by rule (mean over seeds: {limits} points; tower speed-up >= {DEFAULT_RULE_MIN_SPEEDUP}x; the "
    head += "fastest such tower): "
    head += f"**{rule['chosen']}**." if rule["chosen"] else "no arm qualifies."
    misses = []
    for c in rule["candidates"]:
        short = [f"{key} by {100 * value:.1f}" for key, value in c["shortfall"].items() if value > 0]
        if c["speedup"] < DEFAULT_RULE_MIN_SPEEDUP:
            short.append(f"speed-up {c['speedup']:.2f}x")
        note = "meets it" if not short else "misses " + ", ".join(short)
        misses.append(f"{c['arm']} ({c['speedup']:.2f}x, {c['seeds']} seed{'s' if c['seeds'] != 1 else ''}): {note}")
    return head + (" " + "; ".join(misses) + "." if misses else "")


def write_table(arms: Sequence[str | Path], out: str | Path) -> tuple[Path, ...]:
    """``out`` (markdown), ``out`` with ``.json`` (the summaries) and, where the arms know their tower's FLOP bound,
    ``.png`` (quality against tower speed-up) for ``arms``."""
    text, summaries = markdown_table(arms)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    data_path = out.with_suffix(".json")
    data_path.write_text(json.dumps(summaries, indent=2) + "\n")
    plotted = plot_frontier(summaries, out.with_suffix(".png"))
    return (out, data_path) if plotted is None else (out, data_path, plotted)


def plot_frontier(summaries: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy above each answer type's question-only prior (and overall exact match) against the tower's
    FLOP-bound speed-up, one point per arm with its seed spread; ``None`` when no arm knows its bound."""
    rows = [row for row in summaries if row.get("tower_speedup_bound")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = [row["tower_speedup_bound"] for row in rows]
    for key, label in (("accuracy", "exact match"), *((group, group) for group in GROUPS)):
        column = key if key == "accuracy" else f"{key} above prior"
        points = [(speed, row[column]) for speed, row in zip(x, rows) if row.get(column)]
        if points:
            ax = axes[0] if key == "accuracy" else axes[1]
            ax.errorbar([p[0] for p in points], [100 * p[1][0] for p in points],
                        yerr=[100 * p[1][1] for p in points], fmt="o", capsize=3, label=label)  # fmt: skip
    for speed, row in zip(x, rows):
        axes[0].annotate(row["arm"], (speed, 100 * row["accuracy"][0]), fontsize=8, xytext=(4, 4),
                         textcoords="offset points")  # fmt: skip
    axes[0].set(xlabel="tower speed-up (FLOP bound)", ylabel="exact match (%)", title="overall")
    axes[1].set(xlabel="tower speed-up (FLOP bound)", ylabel="points above the question-only prior",
                title="per answer type")  # fmt: skip
    axes[1].axhline(0, color="grey", linewidth=0.8)
    for ax in axes:
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


__all__ = [
    "DEFAULT_RULE",
    "DEFAULT_RULE_MIN_SPEEDUP",
    "SEEDS_FILE",
    "choose_default",
    "describe_choice",
    "SeedRecord",
    "describe_machine",
    "markdown_table",
    "read_seeds",
    "record_seed",
    "seed_dir",
    "plot_frontier",
    "summarize",
    "tower_speedup_bound",
    "write_table",
]
