"""Aggregate study cells into tables (markdown + JSON) and plots (accuracy vs depth, accuracy vs encoder cost)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from typing import Any

DEPTH_ORDER = ["1/12", "1/6", "1/4", "1/2", "ext"]


def aggregate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds for every (task, variant)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        groups[(cell["task"], cell["variant"])].append(cell)
    rows = []
    for (task, variant), group in sorted(groups.items()):
        accuracies = [c["accuracy"] for c in group]
        first = group[0]
        rows.append(
            {
                "task": task,
                "variant": variant,
                "family": first["family"],
                "method": first["method"],
                "depth": "+".join(first["depth"]) or "-",
                "layers": first["layers"],
                "seeds": len(group),
                "accuracy": mean(accuracies),
                "accuracy_std": stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "encoder_gflops": first["encoder_gflops"],
                "encoder_ms_per_16": first["encoder_ms_per_16"],
                "seconds": mean(c["seconds"] for c in group),
                "majority_accuracy": first["majority_accuracy"],
                "spatial_detail": first["spatial_detail"],
            }
        )
    return rows


def _sort_key(row: dict[str, Any]) -> tuple:
    depth = row["depth"].split("+")[0]
    return (DEPTH_ORDER.index(depth) if depth in DEPTH_ORDER else -1, row["family"])


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """One table per task, plus a depth x method pivot of the accuracy (with vs without the shortcut side by side)."""
    lines: list[str] = []
    tasks = sorted({r["task"] for r in rows})
    for task in tasks:
        task_rows = sorted((r for r in rows if r["task"] == task), key=_sort_key)
        baseline = next((r for r in task_rows if r["variant"] == "none"), None)
        detail = "spatial detail matters" if task_rows[0]["spatial_detail"] else "spatial detail hardly matters"
        lines += [f"### {task} ({detail}; majority class {task_rows[0]['majority_accuracy']:.1%})", ""]
        lines += [
            "| variant | layers | accuracy (mean ± std) | vs none | encoder GFLOPs | encoder ms / 16 img |",
            "|---|---|---|---|---|---|",
        ]
        for row in task_rows:
            delta = "" if baseline is None else f"{(row['accuracy'] - baseline['accuracy']) * 100:+.1f}"
            lines.append(
                f"| {row['variant']} | {','.join(map(str, row['layers'])) or '-'} | "
                f"{row['accuracy']:.1%} ± {row['accuracy_std']:.1%} (n={row['seeds']}) | {delta} | "
                f"{row['encoder_gflops']:.2f} | {row['encoder_ms_per_16']:.0f} |"
            )
        lines.append("")
        lines += _pivot(task_rows)
    return "\n".join(lines)


def _pivot(task_rows: list[dict[str, Any]]) -> list[str]:
    depths = [d for d in DEPTH_ORDER if any(r["depth"] == d for r in task_rows)]
    families = sorted({r["family"] for r in task_rows if r["depth"] in depths})
    if not depths or not families:
        return []
    by_key = {(r["family"], r["depth"]): r for r in task_rows}
    lines = ["| method \\ depth | " + " | ".join(depths) + " |", "|---" * (len(depths) + 1) + "|"]
    for family in families:
        cells = [f"{by_key[(family, d)]['accuracy']:.1%}" if (family, d) in by_key else "" for d in depths]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot(rows: list[dict[str, Any]], directory: Path) -> list[Path]:
    """``study_depth.png`` (accuracy vs depth per method, per task) and ``study_pareto.png`` (accuracy vs GFLOPs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    paths = []
    for name, draw, title in (
        (
            "study_depth.png",
            _draw_depth,
            "Accuracy vs compression depth (one colour per compressor; solid: with the average-pooling shortcut, "
            "dashed: without, dash-dot: pooling alone)",
        ),
        ("study_pareto.png", _draw_pareto, "Accuracy vs encoder cost (line: Pareto frontier)"),
    ):
        figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
        for axis, task in zip(axes[0], tasks):
            draw(axis, [r for r in rows if r["task"] == task])
            axis.set_title(task)
            axis.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: no data hidden
        figure.suptitle(title)
        figure.tight_layout()
        paths.append(directory / name)
        figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(figure)
    return paths


def _draw_depth(axis, task_rows: list[dict[str, Any]]) -> None:
    families = sorted({r["family"] for r in task_rows if r["depth"] in DEPTH_ORDER})
    for family in families:
        points = sorted(
            (
                (DEPTH_ORDER.index(r["depth"]), r)
                for r in task_rows
                if r["family"] == family and r["depth"] in DEPTH_ORDER
            ),
            key=lambda item: item[0],
        )
        if not points:
            continue
        colour, style, marker = _family_style(family, families)
        axis.errorbar(
            [p[0] for p in points],
            [p[1]["accuracy"] for p in points],
            yerr=[p[1]["accuracy_std"] for p in points],
            label=family,
            color=colour,
            linestyle=style,
            marker=marker,
            markersize=4 if marker != "o" else 3,
            capsize=2,
        )
    none = next((r for r in task_rows if r["variant"] == "none"), None)
    if none:
        axis.axhline(none["accuracy"], color="black", linewidth=0.8, label="none (no compression)")
    axis.axhline(task_rows[0]["majority_accuracy"], color="grey", linestyle=":", linewidth=0.8, label="majority class")
    axis.set_xticks(range(len(DEPTH_ORDER)), DEPTH_ORDER)
    axis.set_xlabel("compression depth (fraction of layers; ext = after the last)")
    axis.set_ylabel("test accuracy")


def _draw_pareto(axis, task_rows: list[dict[str, Any]]) -> None:
    for method in sorted({r["method"] for r in task_rows}):
        points = [r for r in task_rows if r["method"] == method]
        colour = METHOD_COLOURS.get(method, "black")  # the depth plot's colours; "none" in black
        axis.scatter(
            [r["encoder_gflops"] for r in points], [r["accuracy"] for r in points], label=method, s=14, color=colour
        )
    frontier = _pareto(task_rows)
    axis.plot([r["encoder_gflops"] for r in frontier], [r["accuracy"] for r in frontier], color="black", linewidth=0.8)
    for row in frontier:
        axis.annotate(row["variant"], (row["encoder_gflops"], row["accuracy"]), fontsize=6)
    axis.set_xlabel("encoder forward GFLOPs per image")
    axis.set_ylabel("test accuracy")


# One colour per compressor, so a compressor with and without the shortcut reads as one pair of lines.
METHOD_COLOURS = {
    "laco": "tab:orange",
    "pixel_shuffle": "tab:green",
    "avgpool": "tab:blue",
    "ldpv2": "tab:red",
    "tokenpacker": "tab:purple",
}
EXTRA_COLOURS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "black")
EXTRA_MARKERS = ("s", "^", "D", "v", "P", "X")


def _family_style(family: str, families: list[str]) -> tuple[str, str, str]:
    """(colour, line style, marker): compressors keep their colour with and without the shortcut; variants of
    LaCo run at one depth only (initialisations, factor 3) get their own colour and marker."""
    base = family.removesuffix("+sc")
    if base in METHOD_COLOURS:
        if base == "avgpool":
            style = "-."
        else:
            style = "-" if (family.endswith("+sc") or family == "laco") else "--"
        return METHOD_COLOURS[base], style, "o"
    extras = [f for f in families if f.removesuffix("+sc") not in METHOD_COLOURS]
    index = extras.index(family) % len(EXTRA_COLOURS)
    return EXTRA_COLOURS[index], "-", EXTRA_MARKERS[index]


def _pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    frontier, best = [], -1.0
    for row in sorted(rows, key=lambda r: (r["encoder_gflops"], -r["accuracy"])):
        if row["accuracy"] > best:
            frontier.append(row)
            best = row["accuracy"]
    return frontier


BEGIN, END = "<!-- laco study: generated tables begin -->", "<!-- laco study: generated tables end -->"


def write_report(cells: list[dict[str, Any]], directory: Path, docs: Path | None = None) -> dict[str, Any]:
    """Tables, JSON and plots into ``directory``; with ``docs``, also refresh that markdown file's generated part.

    ``docs`` (e.g. ``docs/study.md``) keeps its hand-written text; only the part between the two generated-tables
    markers is replaced, and the plots are copied next to it (``figures/<study dir name>_*.png``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    rows = aggregate(cells)
    tables = markdown_tables(rows)
    (directory / "study_results.json").write_text(json.dumps({"rows": rows, "cells": cells}, indent=2) + "\n")
    (directory / "study_tables.md").write_text(tables + "\n")
    paths = plot(rows, directory) if rows else []
    if docs is not None:
        update_docs(docs, tables, paths, directory.name)
        save_rows(docs, directory.name, rows)
    return {
        "json": directory / "study_results.json",
        "tables": directory / "study_tables.md",
        "plots": paths,
        "rows": rows,
    }


def rows_path(docs: Path, name: str) -> Path:
    """Where a docs page keeps the aggregated rows behind its generated tables (``docs/study-data/<name>.json``),
    so tables and plots can be redrawn (e.g. with recounted costs) without the cells that produced them."""
    return docs.parent / "study-data" / f"{name}.json"


def save_rows(docs: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    path = rows_path(docs, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return path


def refresh_costs(docs: Path, name: str, costs: dict[str, dict[str, float]], directory: Path) -> list[dict[str, Any]]:
    """Redraw the generated part of ``docs`` for study ``name`` with every row's encoder GFLOPs taken from ``costs``
    (variant -> ``encoder_gflops``); accuracies and times stay as measured. Plots go to ``directory`` first."""
    path = rows_path(docs, name)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the study with --docs {docs} once to record its rows.")
    rows = json.loads(path.read_text())
    missing = sorted({row["variant"] for row in rows} - set(costs))
    if missing:
        raise ValueError(f"no cost counted for variant(s) {missing}; run with the study config that produced {docs}.")
    for row in rows:
        row["encoder_gflops"] = costs[row["variant"]]["encoder_gflops"]
    directory.mkdir(parents=True, exist_ok=True)
    update_docs(docs, markdown_tables(rows), plot(rows, directory), name)
    save_rows(docs, name, rows)
    return rows


def update_docs(docs: Path, tables: str, plots: list[Path], name: str) -> None:
    """Replace the generated part of ``docs`` (one pair of markers per study name) and copy the plots beside it."""
    import shutil

    figures = docs.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    images = []
    for plot_path in plots:
        target = figures / f"{name}_{plot_path.name}"
        shutil.copyfile(plot_path, target)
        images.append(f"![{plot_path.stem}](figures/{target.name})")
    begin, end = f"{BEGIN[:-4]} ({name}) -->", f"{END[:-4]} ({name}) -->"
    generated = "\n".join([begin, "", *images, "", tables, end])
    text = docs.read_text() if docs.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + generated + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + generated + "\n"
    docs.write_text(text)
