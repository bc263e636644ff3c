"""The one plot of ``laco bench``: speed-ups with their spread (IQR of per-round ratios) next to their FLOP bound,
one panel per measurement. A run of any engine is drawn against the depth of the merge (:func:`write_run_plot`, from
the ``speedups`` records of its result file); ``--compare`` draws the same panels against the setting the runs
differ in (:mod:`laco.bench.sweep`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHOD_STYLES = {"pixel_shuffle": ("s", "C1"), "ldpv2": ("^", "C2"), "tokenpacker": ("D", "C4"), "avgpool": ("v", "C5")}
YLABEL = "speed-up over its baseline"


@dataclass
class Series:
    """Points of one line: measured medians with quartiles, and their FLOP bounds (a dashed line when
    ``bound_line``, else hollow markers; ``None``: not drawn)."""

    label: str
    xs: list[Any]
    measured: list[float]
    q1: list[float]
    q3: list[float]
    bounds: list[float] | None = None
    marker: str = "o"
    color: str = "C0"
    line: bool = True
    bound_line: bool = False

    @classmethod
    def of(cls, label: str, points: Sequence[Mapping], xs: list, with_bounds: bool = True, **style: Any) -> Series:
        """A line through ``speedups`` records (or rows with their keys: measured, q1, q3, bound) at ``xs``."""
        values = {key: [p[key] for p in points] for key in ("measured", "q1", "q3", "bound")}
        return cls(
            label, xs, values["measured"], values["q1"], values["q3"], values["bound"] if with_bounds else None, **style
        )


def write_plot(
    path: str | Path,
    panels: Mapping[str, Sequence[Series]],
    *,
    xlabel: str,
    title: str,
    curves: Mapping[str, tuple[list[float], list[float]]] | None = None,
    log2x: bool = False,
    xlim: tuple[float, float] | None = None,
) -> Path:
    """One panel per entry of ``panels``; ``curves`` adds a grey FLOP-bound curve to a panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("nothing to plot: no speed-up of a compressed variant over its baseline.")
    curves = curves or {}
    # A single panel gets the width of two, so the title naming the run fits.
    figure, axes = plt.subplots(1, len(panels), figsize=(max(8.4, 4.2 * len(panels)), 3.8), squeeze=False)
    for axis, (name, series) in zip(axes[0], panels.items()):
        tops = [1.0]
        if name in curves:
            xs, ys = curves[name]
            axis.plot(xs, ys, "-", color="0.55", label="FLOP bound (LaCo after layer k)")
            tops += ys
        for line in series:
            tops += _draw(axis, line)
        axis.axhline(1.0, color="0.8", linewidth=0.8)
        axis.set_title(name)
        axis.set_xlabel(xlabel)
        axis.set_ylim(0, max(tops) * 1.15)
        if xlim is not None:
            axis.set_xlim(*xlim)
        if log2x:
            axis.set_xscale("log", base=2)
            values = sorted({x for line in series for x in line.xs})
            axis.set_xticks(values, [str(v) for v in values])
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(YLABEL)
    unique = {}
    for axis in axes[0]:
        handles, names = axis.get_legend_handles_labels()
        unique.update(zip(names, handles))
    axes[0][-1].legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _draw(axis, line: Series) -> list[float]:
    errors = [[max(0.0, m - q) for m, q in zip(line.measured, line.q1)]]
    errors.append([max(0.0, q - m) for m, q in zip(line.measured, line.q3)])
    fmt = line.marker + ("-" if line.line else "")
    axis.errorbar(line.xs, line.measured, yerr=errors, fmt=fmt, color=line.color, capsize=3, label=line.label)
    if not line.bounds:
        return list(line.q3)
    if line.bound_line:
        axis.plot(line.xs, line.bounds, "--", color=line.color, alpha=0.7, label=f"{line.label} FLOP bound")
    else:
        axis.plot(line.xs, line.bounds, line.marker, color=line.color, markerfacecolor="none", markersize=9,
                  label=f"{line.label} FLOP bound")  # fmt: skip
    return [*line.q3, *line.bounds]


def _series(records: list[dict[str, Any]], with_bounds: bool) -> list[Series]:
    """A run's records of one measurement as lines: single-stage LaCo joined (from external at depth 1), every
    other variant on its own."""
    depth = sorted((r for r in records if r["group"] == "depth"), key=lambda r: r["fraction"])
    lines = []
    if depth:
        points = [{"fraction": 1.0, "measured": 1.0, "q1": 1.0, "q3": 1.0, "bound": 1.0}, *depth]
        points.sort(key=lambda r: r["fraction"])
        lines.append(Series.of("LaCo measured", points, [p["fraction"] for p in points], with_bounds))
    for index, record in enumerate(r for r in records if r["group"] not in ("depth", "reference")):
        if record["group"] == "two-stage":
            marker, color = "*", "C3"
        else:
            marker, color = METHOD_STYLES.get(record["method"], ("o", f"C{6 + index}"))
        lines.append(
            Series.of(record["variant"], [record], [record["fraction"]], marker=marker, color=color, line=False)
        )
    return lines


def write_run_plot(data: Mapping[str, Any], path: str | Path) -> Path:
    """The PNG of one run of any engine: per measurement, speed-up against the depth of the merge."""
    curves = {
        _title(data, name): ([x for x, _ in points], [y for _, y in points])
        for name, points in (data.get("bound_curves") or {}).items()
    }
    panels: dict[str, list[Series]] = {}
    for record in data["speedups"]:
        panels.setdefault(record["title"], []).append(record)
    machine = data["machine"]
    device = machine["gpu"]["name"] if machine.get("gpu") else f"{machine.get('torch_threads')} CPU thread(s)"
    return write_plot(
        path,
        {title: _series(records, title not in curves) for title, records in panels.items()},
        xlabel="compression depth (fraction of encoder layers)",
        title=f"{data['preset']['name']} ({data['engine']}, {device}): medians of interleaved rounds, bars: IQR",
        curves=curves,
        xlim=(0, 1.05),
    )


def _title(data: Mapping[str, Any], measurement: str) -> str:
    return next((r["title"] for r in data["speedups"] if r["measurement"] == measurement), measurement)
