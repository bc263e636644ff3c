"""Turn a :class:`~laco.bench.runner.BenchResult` into a terminal table, a JSON file and a PNG plot.

The JSON keeps every raw sample (with its round and slot), the sub-phase timings, the FLOP counts and the
machine description, so any statistic can be recomputed later without rerunning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..cost import encoder_flops, mllm_flops
from ..placement import Placement
from .runner import BenchResult, BenchVariant, Measurement, SpeedUp
from .timing import Stats

SCHEMA = "laco-bench/1"

TITLES = {
    "encoder": "vision encoder forward (inference)",
    "train": "training step: forward + answer loss + backward + AdamW step, everything trainable",
    "prefill": "time to first token: prefill of image + prompt, first token",
    "decode": "decode: greedy tokens with the KV cache",
}
SHORT = {"encoder": "encoder", "train": "train step", "prefill": "TTFT", "decode": "decode"}
TARGET_EFFICIENCY = 0.9


# ---------------------------------------------------------------------------------------------------------------
# Terminal


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 100 else f"{seconds * 1e3:.0f}"


def _execution(settings: dict[str, Any]) -> str:
    """How the model ran: its dtype, and whether its blocks were compiled."""
    return settings["dtype"] + (", compiled" if settings.get("compile") else "")


def _layers(variant: BenchVariant) -> str:
    if not variant.placement.compressed:
        return "-"
    text = ",".join(str(k) for k in variant.placement.layers)
    return text if variant.placement.factor == 2 else f"{text} ({variant.placement.factor}x{variant.placement.factor})"


def _memory(measurement: Measurement) -> str:
    memory = measurement.memory
    if memory.get("kind") == "cuda_peak_allocated":
        return f"{memory['peak_bytes'] / 2**30:.2f} GiB"
    if memory.get("kind") == "saved_for_backward":
        return f"{memory['bytes'] / 2**20:.0f} MiB*"
    return "n/a"


def format_table(result: BenchResult, kind: str) -> str:
    """One measurement as a fixed-width table, with its title and what the columns mean."""
    rows = result.measurements[kind]
    settings = result.settings
    header = [
        "variant", "layers", "vis.tok", "median ms", "IQR ms", "min-max ms", "speed-up [IQR]", "FLOP bound",
        "meas/bound", "GFLOP", "count/model", "memory",
    ]  # fmt: skip
    if kind == "decode":
        header.insert(6, "tok/s")
    lines = []
    for variant in result.variants:
        m = rows[variant.name]
        stats = m.stats()
        speed = result.speedup(kind, variant.name)
        if speed is None:
            speed_cells = ["(baseline)", "1.00x", ""]
        else:
            mark = "" if variant.same_tokens_as_baseline else " +"
            speed_cells = [
                f"{speed.measured:.2f}x [{speed.q1:.2f}-{speed.q3:.2f}]{mark}",
                f"{speed.bound:.2f}x",
                f"{speed.efficiency:.2f}",
            ]
        cells = [
            variant.name,
            _layers(variant),
            str(m.image_tokens),
            _ms(stats.median),
            _ms(stats.iqr),
            f"{_ms(stats.min)}-{_ms(stats.max)}",
            *speed_cells,
            f"{m.flops_predicted_full / 1e9:.1f}",
            f"{m.flops_counted / m.flops_predicted:.3f}" if m.flops_predicted else "n/a",
            _memory(m),
        ]
        if kind == "decode":
            cells.insert(6, f"{settings['answer_tokens'] * settings['batch'] / stats.median:.1f}")
        lines.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(header)]
    render = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    title = f"== {kind}: {TITLES[kind]}"
    details = [f"batch {settings['batch']}, image {settings['image_size']}px"]
    if settings.get("compile"):
        details.append("compiled blocks")
    if kind == "train":
        details.append(
            f"sequence = image + {settings['prompt_tokens']} prompt + {settings['answer_tokens']} answer tokens"
        )
    elif kind == "prefill":
        details.append(f"prompt = image + {settings['prompt_tokens']} text tokens")
    elif kind == "decode":
        details.append(f"{settings['answer_tokens']} tokens after the prefill")
    if kind != "encoder" and settings.get("llm_layers"):
        details.append(f"LLM timed with {settings['llm_layers']} of {settings['llm_layers_full']} layers, scaled")
    out = [title + " (" + "; ".join(details) + ")", render(header), render(["-" * w for w in widths])]
    out += [render(row) for row in lines]
    legend = (
        "speed-up: median [IQR] of per-round ratios baseline time / variant time; baseline = external compression "
        "to the same visual-token count (two-stage: external 16x). FLOP bound: predicted speed-up at full depth. "
        "GFLOP: cost model, full depth. count/model: FlopCounterMode / cost model for the model as timed."
    )
    if any(not v.same_tokens_as_baseline for v in result.variants):
        legend += " +: the LLM sees more visual tokens than its baseline (no compression)."
    if any(m.memory.get("kind") == "saved_for_backward" for m in rows.values()):
        legend += " *: bytes saved for backward (activations), not a peak."
    out.append(legend)
    return "\n".join(out)


def format_summary(result: BenchResult, files: dict[str, str] | None = None) -> str:
    """The few lines worth reading first: the main target, the efficiency over all placements, run time."""
    settings, machine = result.settings, result.machine
    lines = [
        f"== summary: {result.preset.name} ({result.preset.description})",
        f"   {machine['device']} {_execution(settings)}, {settings['threads']} thread(s) on {machine['cpu']}"
        + (f", GPU {machine['gpu']['name']}" if machine.get("gpu") else "")
        + f"; torch {machine['torch']}, transformers {machine['transformers']}",
    ]
    main = headline_variant((v.name, v.group) for v in result.variants)
    if main is not None:
        variant = result.variant(main)
        tokens = next(iter(result.measurements.values()))[main].image_tokens
        lines.append(
            f"   {main} (after layer {variant.placement.layers[0]} of {result.depth}) vs external, both {tokens} visual tokens:"
        )
        for kind in result.measurements:
            speed = result.speedup(kind, main)
            if speed is not None:
                lines.append(
                    f"     {SHORT[kind]:<10} {speed.measured:.2f}x measured [{speed.q1:.2f}-{speed.q3:.2f}], "
                    f"{speed.bound:.2f}x FLOP bound, {speed.efficiency:.2f} of bound"
                )
                if kind == "train":
                    lines += _optimizer_lines(result, main)
        if {"train", "prefill"} & set(result.measurements):
            lines.append("     (target >= 1.5x; the paper reports 1.20x training, 1.15x inference)")
    efficiencies = [
        (speed.efficiency, kind, variant.name)
        for kind in result.measurements
        for variant in result.variants
        if variant.same_tokens_as_baseline
        and (speed := result.speedup(kind, variant.name)) is not None
        and abs(speed.bound - 1.0) > 0.02  # a bound of ~1 (decode) has no gain to collect
    ]
    if efficiencies:
        values = sorted(e for e, _, _ in efficiencies)
        worst = min(efficiencies)
        reached = sum(e >= TARGET_EFFICIENCY for e in values)
        lines.append(
            f"   measured/bound over {len(values)} placement x measurement pairs: median {values[len(values) // 2]:.2f}, "
            f"worst {worst[0]:.2f} ({worst[2]}, {worst[1]}); {reached} of {len(values)} reach {TARGET_EFFICIENCY}"
        )
    if result.anatomy is not None:
        lines += format_anatomy(result)
    host_bound = host_bound_warning(result)
    if host_bound:
        lines.append(f"   warning: {host_bound}")
    lines.append(f"   build {result.build_seconds:.1f} s, measurements {result.run_seconds:.1f} s")
    lines += [f"   note: {note}" for note in result.notes]
    for label, path in (files or {}).items():
        lines.append(f"   {label}: {path}")
    return "\n".join(lines)


def _optimizer_lines(result: BenchResult, name: str) -> list[str]:
    """The training step less its AdamW step: how much of the gap to the FLOP bound the optimizer explains."""
    compute = result.speedup("train", name, without_optimizer=True)
    rows = result.measurements["train"]
    if compute is None or not rows[name].optimizer_seconds:
        return []
    optimizer = Stats.of(rows[name].optimizer_seconds).median
    step = rows[name].stats().median
    return [
        f"       of which AdamW: {_ms(optimizer)} ms of {_ms(step)} ms ({100 * optimizer / step:.0f}%), the same for "
        "any token count;",
        f"       forward + backward alone: {compute.measured:.2f}x [{compute.q1:.2f}-{compute.q3:.2f}], "
        f"{compute.efficiency:.2f} of bound",
    ]


HOST_BOUND_SCALING = 0.5
"""Below this share of the expected growth, an LLM pass over more tokens is taken as host-bound."""


def host_bound_warning(result: BenchResult) -> str | None:
    """Say so when the LLM's prefill did not get slower with ~3x the tokens: a host-bound run.

    Uncompressed and externally compressed prefills run the same decoder layers over different token counts.
    If the larger one costs hardly more time, the device is waiting for the host to launch kernels (eager mode,
    small batch on a GPU), and every speed-up in the run understates what the FLOP reduction allows.
    """
    rows = result.measurements.get("prefill", {})
    if "none" not in rows or "external" not in rows:
        return None
    big, small = rows["none"], rows["external"]
    stats = [m.samples.phase_stats().get("stack_forward") for m in (big, small)]
    if None in stats or not big.sequence_tokens or not small.sequence_tokens or stats[1].median <= 0:
        return None
    times = [s.median for s in stats]
    token_ratio = big.sequence_tokens / small.sequence_tokens
    time_ratio = times[0] / times[1]
    if token_ratio <= 1.5 or (time_ratio - 1) >= HOST_BOUND_SCALING * (token_ratio - 1):
        return None
    return (
        f"the LLM's decoder layers took {_ms(times[0])} ms of prefill for {big.sequence_tokens} tokens per sequence "
        f"and {_ms(times[1])} ms for {small.sequence_tokens} ({token_ratio:.1f}x the tokens, {time_ratio:.2f}x the "
        "time): this run is bound by host overhead (Python, kernel launches), not by arithmetic, so its speed-ups understate "
        "what the FLOP reduction allows. Raise --batch (and compare runs with --compare)."
    )


def format_anatomy(result: BenchResult) -> list[str]:
    """Where the headline merge's encoder time goes, and the speed-up those part times predict."""
    parts = result.anatomy
    lines = [
        f"   where {parts.variant}'s encoder time goes (parts timed alone, batch {parts.batch}):",
        f"     a block: {_ms(parts.block_before.median)} ms at {parts.tokens_before} tokens, "
        f"{_ms(parts.block_after.median)} ms at {parts.tokens_after}: {parts.block_time_ratio:.3f} of the time for "
        f"{parts.block_flop_ratio:.3f} of the FLOPs",
        f"     the merge: {_ms(parts.merge.median)} ms = {100 * parts.merge_share:.1f}% of the compressed encoder's "
        f"blocks + merge ({100 * parts.flops_merge / parts.compressed_encoder_flops:.1f}% of its FLOPs)",
    ]
    speed = (
        result.speedup("encoder", parts.variant) if parts.variant in result.measurements.get("encoder", {}) else None
    )
    if speed is not None:
        lines.append(
            f"     encoder speed-up: {speed.bound:.2f}x FLOP bound, {parts.time_bound:.2f}x predicted from these times, "
            f"{speed.measured:.2f}x measured"
        )
    return lines


def headline_variant(variants: Iterable[tuple[str, str]]) -> str | None:
    """The headline of a run, from its variants' ``(name, group)``: LaCo at 1/4 depth if it was run, else the
    first single-stage LaCo placement. Shared by the summary and :mod:`laco.bench.sweep` (which reads JSON)."""
    depth_names = [name for name, group in variants if group == "depth"]
    if "laco@1/4" in depth_names:
        return "laco@1/4"
    return depth_names[0] if depth_names else None


# ---------------------------------------------------------------------------------------------------------------
# JSON


def _stats_dict(values: list[float]) -> dict[str, float] | None:
    return Stats.of(values).to_dict() if values else None


def to_json_dict(result: BenchResult) -> dict[str, Any]:
    """Everything in the result as plain JSON types."""
    preset = result.preset
    measurements: dict[str, Any] = {}
    for kind, rows in result.measurements.items():
        measurements[kind] = {}
        for variant in result.variants:
            m = rows[variant.name]
            speed = result.speedup(kind, variant.name)
            measurements[kind][variant.name] = {
                "seconds": m.samples.seconds,
                "scaled_seconds": m.scaled_seconds,
                "rounds": m.samples.rounds,
                "slots": m.samples.slots,
                "phases_seconds": m.samples.phases,
                "stats_seconds": m.stats().to_dict(),
                "phase_stats_seconds": {name: _stats_dict(values) for name, values in m.samples.phases.items()},
                "image_tokens": m.image_tokens,
                "sequence_tokens": m.sequence_tokens,
                "flops_counted": m.flops_counted,
                "flops_predicted": m.flops_predicted,
                "flops_predicted_full": m.flops_predicted_full,
                "memory": m.memory,
                "speedup": None if speed is None else {"baseline": variant.baseline, **_speedup_json(speed)},
            }
            if m.optimizer_seconds:
                compute = result.speedup(kind, variant.name, without_optimizer=True)
                measurements[kind][variant.name]["optimizer_scaled_seconds"] = m.optimizer_seconds
                if compute is not None:
                    measurements[kind][variant.name]["speedup"]["without_optimizer"] = _speedup_json(compute)
    return {
        "schema": SCHEMA,
        "preset": {
            "name": preset.name,
            "description": preset.description,
            "encoder": _asdict(preset.encoder),
            "llm": _asdict(preset.llm) if preset.llm else None,
            "image_size": preset.resolution,
        },
        "settings": result.settings,
        "machine": result.machine,
        "variants": [variant.to_dict(result.depth) for variant in result.variants],
        "measurements": measurements,
        "notes": result.notes,
        "anatomy": result.anatomy.to_dict() if result.anatomy is not None else None,
        "build_seconds": result.build_seconds,
        "run_seconds": result.run_seconds,
    }


def _speedup_json(speed: SpeedUp) -> dict[str, float]:
    return {
        "measured": speed.measured,
        "paired_q1": speed.q1,
        "paired_q3": speed.q3,
        "flop_bound": speed.bound,
        "measured_over_bound": speed.efficiency,
    }


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def write_json(result: BenchResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json_dict(result), indent=1) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Plot


def _bound_curve(result: BenchResult, kind: str) -> tuple[list[float], list[float]]:
    """FLOP-bound speed-up of LaCo after every layer k = 1..L over external compression, at full depth."""
    preset, settings = result.preset, result.settings
    depth = preset.encoder.layers
    factor = settings["factor"]
    xs, ys = [], []

    def flops(placement: Placement) -> float:
        if preset.llm is None or kind == "encoder":
            return encoder_flops(
                preset.encoder, placement, image_size=preset.resolution, images=settings["batch"]
            ).total
        return mllm_flops(
            preset.encoder,
            preset.llm,
            placement,
            mode=kind,
            image_size=preset.resolution,
            images=settings["batch"],
            prompt_tokens=settings["prompt_tokens"],
            answer_tokens=settings["answer_tokens"],
        ).total

    external = flops(Placement((depth,), "laco", factor))
    for layer in range(1, depth + 1):
        xs.append(layer / depth)
        ys.append(external / flops(Placement((layer,), "laco", factor)))
    return xs, ys


def write_plot(result: BenchResult, path: str | Path) -> Path:
    """Speed-up over external compression against depth fraction: measured points, FLOP-bound line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = list(result.measurements)
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), squeeze=False)
    styles = {"pixel_shuffle": ("s", "C1"), "ldpv2": ("^", "C2"), "tokenpacker": ("D", "C4"), "avgpool": ("v", "C5")}
    for axis, kind in zip(axes[0], kinds):
        xs, ys = _bound_curve(result, kind)
        axis.plot(xs, ys, "-", color="0.55", label="FLOP bound (LaCo after layer k)")
        axis.axhline(1.0, color="0.8", linewidth=0.8)
        points = [(1.0, 1.0, 1.0, 1.0)]  # external is the reference
        for variant in result.variants:
            speed = result.speedup(kind, variant.name)
            if speed is None or not variant.same_tokens_as_baseline:
                continue
            x = variant.fraction(result.depth)
            err = [[max(0.0, speed.measured - speed.q1)], [max(0.0, speed.q3 - speed.measured)]]
            if variant.group == "depth":
                points.append((x, speed.measured, speed.q1, speed.q3))
            elif variant.group == "two-stage":
                axis.errorbar(
                    [x],
                    [speed.measured],
                    yerr=err,
                    fmt="*",
                    color="C3",
                    markersize=10,
                    label=f"{variant.name} vs 16x ext.",
                )
                axis.plot(
                    [x], [speed.bound], "*", color="C3", markerfacecolor="none", markersize=10, label="its FLOP bound"
                )
            else:
                marker, color = styles.get(variant.placement.method, ("o", "C6"))
                axis.errorbar([x], [speed.measured], yerr=err, fmt=marker, color=color, label=variant.name)
        points.sort()
        px = [p[0] for p in points]
        py = [p[1] for p in points]
        err = [[max(0.0, p[1] - p[2]) for p in points], [max(0.0, p[3] - p[1]) for p in points]]
        axis.errorbar(px, py, yerr=err, fmt="o-", color="C0", label="LaCo measured")
        axis.set_title(
            f"{SHORT[kind]}" + (" (scaled LLM)" if kind != "encoder" and result.settings.get("llm_layers") else "")
        )
        axis.set_xlabel("compression depth (fraction of encoder layers)")
        axis.set_xlim(0, 1.05)
        finite = [y for y in ys + py if math.isfinite(y)]
        axis.set_ylim(0, max(finite) * 1.15 if finite else 2)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("speed-up over external compression")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    settings = result.settings
    figure.suptitle(
        f"{result.preset.name}: {settings['device']} {_execution(settings)}, {settings['threads']} thread(s), "
        f"median of {settings['reps']} interleaved rounds (bars: IQR of per-round ratios)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
