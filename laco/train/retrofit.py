"""Retrofit quality: how much of a trained MLLM's accuracy a LaCo conversion keeps, before and after recovery.

``laco retrofit SOURCE --layers '6;last' --steps 0,100,300`` converts ``SOURCE`` (a trained, uncompressed model)
at each placement, recovers each conversion for each number of steps and scores every result on the same split as
``SOURCE``. This module holds what the command records and the table and plot it writes; every figure is a
fraction of ``SOURCE``'s own accuracy on the same answer type ("kept"), next to points above the type's
question-only prior, so a type the text alone answers cannot look kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .seeds import GROUPS

RECORDS_FILE = "retrofit.json"
SOURCE_ARM = "source"


@dataclass
class RetrofitRecord:
    """One scored model: a conversion (``arm``, its ``layers``) after ``steps`` of recovery, or the source."""

    arm: str
    layers: str
    steps: int
    model: str
    accuracy: float
    groups: dict[str, float]
    group_priors: dict[str, float]
    question_prior_accuracy: float | None
    image_tokens: int


def record(output_dir: str | Path, entry: RetrofitRecord, machine: dict[str, Any]) -> Path:
    """Add (or replace) ``entry`` in ``output_dir/retrofit.json``, written atomically after every model."""
    path = Path(output_dir) / RECORDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {"records": []}
    data["records"] = [r for r in data["records"] if (r["arm"], r["steps"]) != (entry.arm, entry.steps)] + [
        asdict(entry)
    ]
    data["records"].sort(key=lambda r: (r["arm"] != SOURCE_ARM, r["arm"], r["steps"]))
    data["machine"] = machine
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def read_records(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / RECORDS_FILE
    return json.loads(path.read_text())["records"] if path.exists() else []


def kept(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each conversion's record with ``kept`` (accuracy / the source's, overall and per type) and ``above prior``."""
    source = next((r for r in records if r["arm"] == SOURCE_ARM), None)
    if source is None:
        raise ValueError("no record of the source model: `laco retrofit` scores it first")
    rows = []
    for entry in records:
        row = dict(entry)
        row["kept"] = {"accuracy": _ratio(entry["accuracy"], source["accuracy"])}
        row["above prior"] = {}
        for group in GROUPS:
            if group in entry["groups"]:
                row["kept"][group] = _ratio(entry["groups"][group], source["groups"].get(group))
                row["above prior"][group] = entry["groups"][group] - entry["group_priors"].get(group, 0.0)
        rows.append(row)
    return rows


def _ratio(value: float, reference: float | None) -> float | None:
    return None if not reference else value / reference


def markdown_table(records: Sequence[dict[str, Any]], machine: dict[str, Any] | None = None) -> str:
    rows = kept(records)
    header = (
        "| model | recovery steps | image tokens | exact match (kept) | "
        + " | ".join(f"{group} (kept; above prior)" for group in GROUPS)
        + " |"
    )
    lines = [header, "|" + "---|" * (4 + len(GROUPS))]
    for row in rows:
        name = "source (uncompressed)" if row["arm"] == SOURCE_ARM else f"{row['arm']} (`--layer {row['layers']}`)"
        cells = [
            name,
            "" if row["arm"] == SOURCE_ARM else str(row["steps"]),
            str(row["image_tokens"]),
            f"{100 * row['accuracy']:.1f} ({_fraction(row['kept']['accuracy'])})",
        ]
        for group in GROUPS:
            if group in row["groups"]:
                above = 100 * row["above prior"][group]
                cells.append(f"{100 * row['groups'][group]:.1f} ({_fraction(row['kept'][group])}; {above:+.1f})")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    priors = rows[0]["group_priors"]
    lines.append(
        "\nKept: accuracy as a fraction of the source model's on the same questions; above prior: points above that "
        "answer type's question-only prior ("
        + ", ".join(f"{g} {100 * priors[g]:.1f}" for g in GROUPS if g in priors)
        + ")."
    )
    if machine:
        lines.append(f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, torch threads "
                     f"{machine.get('torch_threads')}.")  # fmt: skip
    return "\n".join(lines)


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def plot(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fraction of the source's accuracy kept against recovery steps: one panel per answer type, a line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [row for row in kept(records) if row["arm"] != SOURCE_ARM]
    keys = ("accuracy", *GROUPS)
    figure, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), sharey=True)
    for arm in sorted({row["arm"] for row in rows}):
        mine = sorted((row for row in rows if row["arm"] == arm), key=lambda row: row["steps"])
        for ax, key in zip(axes, keys):
            points = [(row["steps"], row["kept"].get(key)) for row in mine if row["kept"].get(key) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=arm)
    for ax, key in zip(axes, keys):
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set(title="exact match" if key == "accuracy" else key, xlabel="recovery steps")
    axes[0].set(ylabel="fraction of the source's accuracy")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(output_dir: str | Path) -> tuple[Path, Path]:
    """``output_dir/retrofit.md`` and ``retrofit.png`` from ``retrofit.json``."""
    output_dir = Path(output_dir)
    data = json.loads((output_dir / RECORDS_FILE).read_text())
    table = output_dir / "retrofit.md"
    table.write_text(markdown_table(data["records"], data.get("machine")) + "\n")
    return table, plot(data["records"], output_dir / "retrofit.png")


__all__ = ["RECORDS_FILE", "RetrofitRecord", "SOURCE_ARM", "kept", "markdown_table", "plot", "read_records", "record",
           "write_report"]  # fmt: skip
