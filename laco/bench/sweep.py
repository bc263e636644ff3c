"""Compare earlier ``laco bench`` runs of any engine: how the headline speed-ups move with one setting.

A single run answers "how much faster here"; a sweep answers "when does the gain show" (on a GPU the ratios grow
with the batch until kernels are big enough for the FLOP bound to hold; on a CPU they move with the thread count).
Nothing is re-timed: this reads the runs' ``speedups`` records (:mod:`laco.bench.schema`).

>>> from laco.bench.sweep import load_runs, format_sweep
>>> print(format_sweep(load_runs(["runs/b8/bench.json", "runs/b32/bench.json"]), "batch"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .measurements import MEASUREMENTS
from .plots import Series, write_plot
from .report import text_table
from .schema import read_result, schema_version
from .variants import headline_variant

PREFERRED_KEYS = ("batch", "compile", "threads", "dtype", "llm_layers", "reps")
LATER_SETTINGS = {"compile": False}  # settings added after runs were first recorded, as older runs ran them
LEGACY = {"measured": "measured", "q1": "paired_q1", "q3": "paired_q3", "bound": "flop_bound"}
"""A ``speedups`` record's keys, and where a schema-1 measurement row keeps them."""


@dataclass(frozen=True)
class Run:
    """One result file of any engine: where it came from, and its data."""

    path: Path
    data: dict[str, Any]

    @property
    def engine(self) -> str:
        return self.data.get("engine", "batched")  # schema 1 files were batched or packed; packed ones say sizes

    @property
    def settings(self) -> dict[str, Any]:
        return {**LATER_SETTINGS, **self.data["settings"]} if self.engine == "batched" else dict(self.data["settings"])

    @property
    def label(self) -> str:
        """Which line of the plot the run belongs to: preset on device (GPU name where there is one)."""
        machine = self.data["machine"]
        threads = self.settings.get("threads") or machine.get("torch_threads")
        device = machine["gpu"]["name"] if machine.get("gpu") else f"CPU, {threads} thr."
        engine = "" if self.engine == "batched" else f", {self.engine}"
        return f"{self.data['preset']['name']} ({device}{engine})"

    def headline(self) -> str | None:
        """The variant the run's own summary leads with."""
        if "headline" in self.data:
            return self.data["headline"]
        return headline_variant((v["name"], v["group"]) for v in self.data["variants"])

    def speedups(self) -> list[dict[str, Any]]:
        """The run's ``speedups`` records; files of schema 1 (batched runs) carry them in their measurement rows."""
        if "speedups" in self.data:
            return self.data["speedups"]
        return [
            {
                "measurement": kind,
                "title": _short(kind),
                "variant": name,
                **{k: row["speedup"][v] for k, v in LEGACY.items()},
            }
            for kind, rows in self.data["measurements"].items()
            for name, row in rows.items()
            if row.get("speedup")
        ]


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Read result files of any engine (or directories holding one), checking they are ``laco bench`` output."""
    runs = []
    for given in paths:
        path, data = read_result(given)
        if schema_version(data, path) == 1 and "sizes" in data:
            raise ValueError(f"{path} is a packed-tower run of schema 1, which has no speed-up records; rerun it.")
        runs.append(Run(path, data))
    if len(runs) < 2:
        raise ValueError(f"a comparison needs at least two runs, got {len(runs)}.")
    return runs


def varying_setting(runs: Sequence[Run]) -> str:
    """The setting the runs differ in, for the x axis (batch first, where several differ)."""
    differing = [
        key for key in runs[0].settings if len({json.dumps(run.settings.get(key), sort_keys=True) for run in runs}) > 1
    ]
    for key in PREFERRED_KEYS:
        if key in differing:
            return key
    numeric = [key for key in differing if isinstance(runs[0].settings.get(key), int | float)]
    if not numeric:
        raise ValueError(
            "the runs differ in no numeric setting (they differ in "
            f"{differing or 'nothing'}); name one with --by, e.g. --by batch."
        )
    return numeric[0]


def rows(runs: Sequence[Run], key: str, variant: str | None = None) -> list[dict[str, Any]]:
    """One row per run and measurement with a speed-up of ``variant`` (default: each run's headline) against its
    baseline."""
    out = []
    for run in runs:
        if key not in run.settings:
            raise ValueError(f"{run.path} has no setting {key!r}; settings are {sorted(run.settings)}.")
        name = variant or run.headline()
        if name is None:
            continue
        if variant is not None and all(v["name"] != variant for v in run.data.get("variants", [])):
            names = [v["name"] for v in run.data["variants"]]
            raise ValueError(f"{run.path} has no variant {variant!r}; it ran {names}.")
        for record in run.speedups():
            if record["variant"] == name:
                where = {"label": run.label, "value": run.settings[key], "path": str(run.path)}
                out.append({**record, "kind": record["measurement"], **where})
    order = {kind: index for index, kind in enumerate(MEASUREMENTS)}
    return sorted(out, key=lambda row: (row["label"], order.get(row["kind"], len(order)), row["value"]))


def _short(kind: str) -> str:
    """A measurement's short label; a run may hold one this laco does not register."""
    return MEASUREMENTS[kind].short if kind in MEASUREMENTS else kind


def _subject(variant: str | None) -> str:
    return variant or "headline LaCo placement"


def format_sweep(runs: Sequence[Run], key: str, variant: str | None = None) -> str:
    """A table: per preset and measurement, the speed-up of ``variant`` (default: headline) at each ``key``."""
    table = rows(runs, key, variant)
    header = ["preset (device)", key, "measurement", "variant", "speed-up [IQR]", "FLOP bound", "meas/bound"]
    cells = [
        [
            row["label"],
            str(row["value"]),
            row["title"],
            row["variant"],
            f"{row['measured']:.2f}x [{row['q1']:.2f}-{row['q3']:.2f}]",
            f"{row['bound']:.2f}x",
            f"{row['measured'] / row['bound']:.2f}",
        ]
        for row in table
    ]
    title = f"== speed-up against {key} ({_subject(variant)} vs its external-compression baseline)"
    return "\n".join([title, *text_table(header, cells)])


def plot_sweep(runs: Sequence[Run], key: str, path: str | Path, variant: str | None = None) -> Path:
    """One panel per measurement: measured speed-up (IQR bars) and FLOP bound (dashed) against ``key``."""
    table = rows(runs, key, variant)
    # A measurement whose bound is ~1 everywhere (decode: LaCo and external feed the LLM the same tokens) has no
    # gain to show; the table keeps it.
    kinds = [
        kind
        for kind in dict.fromkeys(r["kind"] for r in table)
        if any(r["kind"] == kind and abs(r["bound"] - 1) > 0.02 for r in table)
    ]
    if not kinds:
        raise ValueError("none of the runs has a headline speed-up to plot (did they run a LaCo placement?).")
    labels = sorted({row["label"] for row in table})
    numeric = all(isinstance(row["value"], int | float) and not isinstance(row["value"], bool) for row in table)
    panels = {}
    for kind in kinds:
        panels[next(r["title"] for r in table if r["kind"] == kind)] = [
            Series.of(
                label,
                points,
                [r["value"] if numeric else str(r["value"]) for r in points],
                color=f"C{index}",
                bound_line=True,
            )
            for index, label in enumerate(labels)
            if (points := [r for r in table if r["kind"] == kind and r["label"] == label])
        ]
    title = f"{_subject(variant)} vs its baseline, against {key}"
    return write_plot(path, panels, xlabel=key, title=title, log2x=numeric and key == "batch")


def compare(
    paths: Sequence[str | Path], by: str | None = None, out: str | Path | None = None, variant: str | None = None
) -> str:
    """Load runs, print-ready table for ``by`` (default: the setting they differ in), and ``out/sweep.png``;
    ``variant`` picks the placement (default: each run's headline LaCo placement)."""
    runs = load_runs(paths)
    key = by or varying_setting(runs)
    text = format_sweep(runs, key, variant)
    if out is not None:
        text += f"\n   plot: {plot_sweep(runs, key, Path(out) / 'sweep.png', variant)}"
    return text
