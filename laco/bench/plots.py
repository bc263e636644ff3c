"""The PNG of a run: per measurement, the speed-up over external compression against the depth of the merge,
measured points with their spread, and the FLOP bound of LaCo after every layer."""

from __future__ import annotations

import math
from pathlib import Path

from ..placement import Placement
from .measurements import Measurement, predict
from .results import BenchResult

METHOD_STYLES = {"pixel_shuffle": ("s", "C1"), "ldpv2": ("^", "C2"), "tokenpacker": ("D", "C4"), "avgpool": ("v", "C5")}


def bound_curve(result: BenchResult, spec: Measurement) -> tuple[list[float], list[float]]:
    """FLOP-bound speed-up of LaCo after every layer k = 1..L over external compression, at full depth."""
    settings, depth = result.settings, result.depth
    factor = settings.requested.factor

    def flops(layer: int) -> float:
        return predict(settings, spec.flop_mode, Placement((layer,), "laco", factor), full=True).flops

    external = flops(depth)
    layers = range(1, depth + 1)
    return [layer / depth for layer in layers], [external / flops(layer) for layer in layers]


def _errors(points: list[tuple[float, float, float, float]]) -> list[list[float]]:
    """Error bars from ``(x, median, q1, q3)`` points: the distances to the quartiles."""
    return [[max(0.0, p[1] - p[2]) for p in points], [max(0.0, p[3] - p[1]) for p in points]]


def _panel(axis, result: BenchResult, spec: Measurement) -> None:
    xs, ys = bound_curve(result, spec)
    axis.plot(xs, ys, "-", color="0.55", label="FLOP bound (LaCo after layer k)")
    axis.axhline(1.0, color="0.8", linewidth=0.8)
    points = [(1.0, 1.0, 1.0, 1.0)]  # external is the reference
    for variant in result.variants:
        speed = result.speedup(spec.name, variant.name)
        if speed is None or not variant.same_tokens_as_baseline:
            continue
        point = (variant.fraction(result.depth), speed.measured, speed.q1, speed.q3)
        if variant.group == "depth":
            points.append(point)
        elif variant.group == "two-stage":
            axis.errorbar(
                [point[0]], [point[1]], yerr=_errors([point]), fmt="*", color="C3", markersize=10,
                label=f"{variant.name} vs 16x ext.",
            )  # fmt: skip
            axis.plot(
                [point[0]],
                [speed.bound],
                "*",
                color="C3",
                markerfacecolor="none",
                markersize=10,
                label="its FLOP bound",
            )
        else:
            marker, color = METHOD_STYLES.get(variant.placement.method, ("o", "C6"))
            axis.errorbar([point[0]], [point[1]], yerr=_errors([point]), fmt=marker, color=color, label=variant.name)
    points.sort()
    py = [p[1] for p in points]
    axis.errorbar([p[0] for p in points], py, yerr=_errors(points), fmt="o-", color="C0", label="LaCo measured")
    scaled = spec.needs_llm and result.settings.llm_layers
    axis.set_title(spec.short + (" (scaled LLM)" if scaled else ""))
    axis.set_xlabel("compression depth (fraction of encoder layers)")
    axis.set_xlim(0, 1.05)
    finite = [y for y in ys + py if math.isfinite(y)]
    axis.set_ylim(0, max(finite) * 1.15 if finite else 2)
    axis.grid(alpha=0.3)


def write_plot(result: BenchResult, path: str | Path) -> Path:
    """Speed-up over external compression against depth fraction: measured points, FLOP-bound line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = result.kinds()
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), squeeze=False)
    for axis, spec in zip(axes[0], kinds):
        _panel(axis, result, spec)
    axes[0][0].set_ylabel("speed-up over external compression")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    settings = result.settings
    figure.suptitle(
        f"{result.preset.name}: {settings.device} {settings.execution}, {settings.threads} thread(s), "
        f"median of {settings.reps} interleaved rounds (bars: IQR of per-round ratios)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
