"""The text of every engine's results: one summary (:func:`format_summary`, any engine), the terminal tables of a
batched run, and the markdown tables of a packed-tower run (which ``docs/native-resolution.md`` quotes) and of a
vLLM run (``docs/serving.md``). The JSON is :meth:`~laco.bench.results.Result.to_dict`, the plot
:mod:`laco.bench.plots`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..measure.machine import machine_text, provenance_text
from ..measure.timing import Stats
from . import plots
from .measurements import Measurement, measurement
from .results import Result, plain
from .schema import RESULT_FILES, write_result
from .variants import BenchVariant

TARGET_EFFICIENCY = 0.9
HOST_BOUND_SCALING = 0.5
"""Below this share of the expected growth, an LLM pass over more tokens is taken as host-bound."""
COLUMNS = (
    "variant", "layers", "vis.tok", "median ms", "IQR ms", "min-max ms", "speed-up [IQR]", "FLOP bound",
    "meas/bound", "GFLOP", "count/model", "memory",
)  # fmt: skip
RATE_COLUMN = 6  # where a measurement's throughput column goes, after the timings
LEGEND = (
    "speed-up: median [IQR] of per-round ratios baseline time / variant time; baseline = external compression "
    "to the same visual-token count (two-stage: external 16x). FLOP bound: predicted speed-up at full depth. "
    "GFLOP: cost model, full depth. count/model: FlopCounterMode / cost model for the model as timed."
)


def write_run(data: dict, out: str | Path, text: str | None = None, plot: bool = True) -> dict[str, str]:
    """Write a run's result file, its markdown ``text`` (packed and vllm runs) and its plot into ``out``."""
    stem = Path(out) / RESULT_FILES[data["engine"]].removesuffix(".json")
    files = {"json": str(write_result(data, out))}
    if text is not None:
        stem.with_suffix(".md").write_text(text)
        files["table"] = str(stem.with_suffix(".md"))
    if plot:
        files["plot"] = str(plots.write_run_plot(data, stem.with_suffix(".png")))
    return files


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int | None = None) -> list[str]:
    """Fixed-width lines: header, rule, rows; columns from ``right_from`` on are right-aligned."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def render(cells: Sequence[str]) -> str:
        aligned = (
            c.rjust(w) if right_from is not None and i >= right_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )
        return "  ".join(aligned)

    return [render(header), render(["-" * w for w in widths]), *map(render, rows)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    rule = "|---" * len(header) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(cells) + " |" for cells in rows)]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 100 else f"{seconds * 1e3:.0f}"


def _layers(variant: BenchVariant) -> str:
    if not variant.placement.compressed:
        return "-"
    text = ",".join(str(k) for k in variant.placement.layers)
    return text if variant.placement.factor == 2 else f"{text} ({variant.placement.factor}x{variant.placement.factor})"


# ---------------------------------------------------------------------------------------------------------------
# Batched tables


def _row(result: Result, spec: Measurement, variant: BenchVariant) -> list[str]:
    row = result.rows[spec.name][variant.name]
    stats, facts = row.stats(), row.facts
    speed = result.speedup(spec.name, variant.name)
    if speed is None:
        speed_cells = ["(baseline)", "1.00x", ""]
    else:
        mark = "" if variant.same_tokens_as_baseline else " +"
        speed_cells = [
            f"{speed.measured:.2f}x [{speed.q1:.2f}-{speed.q3:.2f}]{mark}",
            f"{speed.bound:.2f}x",
            f"{speed.efficiency:.2f}",
        ]
    memory = facts.get("memory")
    cells = [
        variant.name,
        _layers(variant),
        str(row.tokens),
        ms(stats.median),
        ms(stats.iqr),
        f"{ms(stats.min)}-{ms(stats.max)}",
        *speed_cells,
        f"{row.flops / 1e9:.1f}",
        f"{facts['flops_counted'] / facts['flops_predicted']:.3f}" if facts.get("flops_predicted") else "n/a",
        memory.label() if memory is not None else "n/a",
    ]
    if spec.rate is not None:
        cells.insert(RATE_COLUMN, f"{spec.rate.per_call(result.settings) / stats.median:.1f}")
    return cells


def _title(result: Result, spec: Measurement) -> str:
    settings = result.settings
    details = [f"batch {settings.batch}, image {settings.preset.resolution}px"]
    if settings.requested.compile:
        details.append("compiled blocks")
    if spec.detail:
        details.append(spec.detail.format(s=settings))
    if spec.needs_llm and settings.llm_layers:
        details.append(f"LLM timed with {settings.llm_layers} of {settings.llm_layers_full} layers, scaled")
    return f"== {spec.name}: {spec.title} (" + "; ".join(details) + ")"


def format_table(result: Result, kind: str) -> str:
    """One measurement of a batched run as a fixed-width table, with its title and what the columns mean."""
    spec = measurement(kind)
    header = list(COLUMNS)
    if spec.rate is not None:
        header.insert(RATE_COLUMN, spec.rate.unit)
    out = [_title(result, spec), *text_table(header, [_row(result, spec, v) for v in result.variants], right_from=2)]
    legend = LEGEND
    if any(not v.same_tokens_as_baseline for v in result.variants):
        legend += " +: the LLM sees more visual tokens than its baseline (no compression)."
    memories = (row.facts.get("memory") for row in result.rows[kind].values())
    footnotes = {memory.footnote for memory in memories if memory is not None}
    legend += "".join(f" {note}" for note in sorted(filter(None, footnotes)))
    out.append(legend)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Summary (every engine)


def format_summary(result: Result, files: dict[str, str] | None = None, provenance: dict | None = None) -> str:
    """The few lines worth reading first, for any engine: the machine, the headline placement against its baseline
    under every measurement, the efficiency over all placements, the engine's warnings and notes."""
    lines = [
        f"== summary: {result.preset.name} ({result.preset.description})",
        f"   {machine_text(plain(result.machine), getattr(result.settings, 'execution', None))}",
    ]
    if provenance is not None:
        lines.append(f"   {provenance_text(provenance)}")
    lines += _headline_lines(result)
    lines += _efficiency_lines(result)
    if result.payload.get("anatomy") is not None:
        lines += format_anatomy(result)
    host_bound = host_bound_warning(result)
    if host_bound:
        lines.append(f"   warning: {host_bound}")
    if "run_seconds" in result.payload:
        lines.append(
            f"   build {result.payload['build_seconds']:.1f} s, measurements {result.payload['run_seconds']:.1f} s"
        )
    lines += [f"   note: {note}" for note in result.notes]
    for label, path in (files or {}).items():
        lines.append(f"   {label}: {path}")
    return "\n".join(lines)


def _headline_lines(result: Result) -> list[str]:
    """The headline placement against its baseline, under every measurement."""
    main = result.headline
    if main is None or not result.rows:
        return []
    variant = result.variant(main)
    tokens = next(iter(result.rows.values()))[main].tokens
    tokens = sum(tokens) if isinstance(tokens, list) else tokens
    both = "both " if variant.same_tokens_as_baseline else ""
    lines = [
        f"   {main} (after layer {variant.placement.layers[0]} of {result.depth}) vs {variant.baseline}, "
        f"{both}{tokens} visual tokens:"
    ]
    for kind in result.rows:
        speed = result.speedup(kind, main)
        if speed is not None:
            lines.append(
                f"     {result.titles.get(kind, kind):<10} {speed.measured:.2f}x measured [{speed.q1:.2f}-{speed.q3:.2f}], "
                f"{speed.bound:.2f}x FLOP bound, {speed.efficiency:.2f} of bound"
            )
            lines += _alternative_lines(result, kind, main)
    if result.engine == "batched" and any(measurement(kind).target for kind in result.rows):
        lines.append("     (target >= 1.5x; docs/benchmarks.md sets measured runs against the paper's figures)")
    return lines


def _alternative_lines(result: Result, kind: str, name: str) -> list[str]:
    """The same speed-up in other times (CPU time; a training step less its AdamW step, whose cost is the same for
    any token count: how much of the gap to the FLOP bound the optimizer explains)."""
    lines = []
    row = result.rows[kind][name]
    if row.phase("optimizer_scaled"):
        optimizer, step = Stats.of(row.phase("optimizer_scaled")).median, row.stats().median
        lines.append(
            f"       of which AdamW: {ms(optimizer)} ms of {ms(step)} ms ({100 * optimizer / step:.0f}%), the same for "
            "any token count;"
        )
    for phase, key in result.alternatives.items():
        if (other := result.speedup(kind, name, phase)) is not None:
            label = "forward + backward alone" if phase == "compute" else key.replace("_", " ")
            lines.append(
                f"       {label}: {other.measured:.2f}x [{other.q1:.2f}-{other.q3:.2f}], {other.efficiency:.2f} of bound"
            )
    return lines


def _efficiency_lines(result: Result) -> list[str]:
    """Measured over bound across every placement and measurement with a gain to collect."""
    efficiencies = [
        (speed.efficiency, kind, variant.name)
        for kind in result.rows
        for variant in result.variants
        if variant.same_tokens_as_baseline
        and (speed := result.speedup(kind, variant.name)) is not None
        and abs(speed.bound - 1.0) > 0.02  # a bound of ~1 (decode) has no gain to collect
    ]
    if not efficiencies:
        return []
    values = sorted(e for e, _, _ in efficiencies)
    worst = min(efficiencies)
    reached = sum(e >= TARGET_EFFICIENCY for e in values)
    return [
        f"   measured/bound over {len(values)} placement x measurement pairs: median {values[len(values) // 2]:.2f}, "
        f"worst {worst[0]:.2f} ({worst[2]}, {worst[1]}); {reached} of {len(values)} reach {TARGET_EFFICIENCY}"
    ]


def host_bound_warning(result: Result) -> str | None:
    """Say so when the LLM's prefill did not get slower with ~3x the tokens: a host-bound run.

    Uncompressed and externally compressed prefills run the same decoder layers over different token counts.
    If the larger one costs hardly more time, the device is waiting for the host to launch kernels (eager mode,
    small batch on a GPU), and every speed-up in the run understates what the FLOP reduction allows.
    """
    rows = result.rows.get("prefill", {}) if result.engine == "batched" else {}
    if "none" not in rows or "external" not in rows:
        return None
    big, small = rows["none"], rows["external"]
    stats = [m.samples.phase_stats().get("stack_forward") for m in (big, small)]
    tokens = [m.facts.get("sequence_tokens") for m in (big, small)]
    if None in stats or not all(tokens) or stats[1].median <= 0:
        return None
    times = [s.median for s in stats]
    token_ratio = tokens[0] / tokens[1]
    time_ratio = times[0] / times[1]
    if token_ratio <= 1.5 or (time_ratio - 1) >= HOST_BOUND_SCALING * (token_ratio - 1):
        return None
    return (
        f"the LLM's decoder layers took {ms(times[0])} ms of prefill for {tokens[0]} tokens per sequence "
        f"and {ms(times[1])} ms for {tokens[1]} ({token_ratio:.1f}x the tokens, {time_ratio:.2f}x the "
        "time): this run is bound by host overhead (Python, kernel launches), not by arithmetic, so its speed-ups understate "
        "what the FLOP reduction allows. Raise --batch (and compare runs with --compare)."
    )


def format_anatomy(result: Result) -> list[str]:
    """Where the headline merge's encoder time goes, and the speed-up those part times predict."""
    parts = result.payload["anatomy"]
    lines = [
        f"   where {parts.variant}'s encoder time goes (parts timed alone, batch {parts.batch}):",
        f"     a block: {ms(parts.block_before.median)} ms at {parts.tokens_before} tokens, "
        f"{ms(parts.block_after.median)} ms at {parts.tokens_after}: {parts.block_time_ratio:.3f} of the time for "
        f"{parts.block_flop_ratio:.3f} of the FLOPs",
        f"     the merge: {ms(parts.merge.median)} ms = {100 * parts.merge_share:.1f}% of the compressed encoder's "
        f"blocks + merge ({100 * parts.flops_merge / parts.compressed_encoder_flops:.1f}% of its FLOPs)",
    ]
    timed_with = next((kind for kind in result.rows if measurement(kind).anatomy), None)
    speed = result.speedup(timed_with, parts.variant) if timed_with is not None else None
    if speed is not None:
        lines.append(
            f"     encoder speed-up: {speed.bound:.2f}x FLOP bound, {parts.time_bound:.2f}x predicted from these times, "
            f"{speed.measured:.2f}x measured"
        )
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Markdown tables: packed towers (native.md) and vLLM serving (serving.md)

NATIVE_COLUMNS = (
    "images", "patches", "original s", "LaCo@1/4 keep s", "speed-up (bound)", "of bound", "compress_more s",
    "speed-up (bound)", "of bound", "CPU-time speed-up keep/more", "laco overhead (keep)", "LLM tokens orig/keep/more",
    "TTFT bound keep/more",
)  # fmt: skip


def markdown(result: Result, provenance: dict) -> str:
    """A packed or vLLM run's markdown file: its table, then the summary."""
    table = serving_table(result) if result.engine == "vllm" else native_table(result)
    return f"{table}\n\n{format_summary(result, provenance=provenance)}\n"


def native_table(result: Result) -> str:
    """One row per image set (the table docs/native-resolution.md quotes)."""
    original, keep, more = result.variants
    cells = []
    for size, rows in result.rows.items():
        median = {name: row.stats().median for name, row in rows.items()}
        speed = {v.name: result.speedup(size, v.name) for v in (keep, more)}
        cpu = {v.name: result.speedup(size, v.name, "cpu") for v in (keep, more)}
        ttft = "/".join(
            f"{b:.2f}x" if (b := rows[v.name].facts.get("ttft_flop_bound")) else "n/a" for v in (keep, more)
        )
        line = [size, str(result.payload["sizes"][size]["patches"]), f"{median[original.name]:.3g}"]
        for variant in (keep, more):
            s = speed[variant.name]
            line += [f"{median[variant.name]:.3g}", f"{s.measured:.2f}x ({s.bound:.2f}x)", f"{s.efficiency:.2f}"]
        cells.append(line + [
            f"{cpu[keep.name].measured:.2f}x/{cpu[more.name].measured:.2f}x",
            f"{100 * rows[keep.name].facts['overhead_share']:.1f}%",
            "/".join(str(sum(rows[v.name].tokens)) for v in result.variants),
            ttft,
        ])  # fmt: skip
    return "\n".join(markdown_table(NATIVE_COLUMNS, cells))


def serving_table(result: Result) -> str:
    """Each metric's medians, LaCo's speed-up (median of the per-round ratios) and its FLOP bound."""
    laco, external = (v.name for v in result.variants)
    rows = []
    for key, metric, label in result.payload["metrics"]:
        medians = [Stats.of(result.rows[key][name].phase(metric)).median for name in (laco, external)]
        speed = result.speedup(key, laco)
        rows.append([label, *(f"{m:.3f}" for m in medians), f"**{speed.measured:.2f}x**", f"{speed.bound:.2f}x",
                     f"{speed.efficiency:.2f}"])  # fmt: skip
    return "\n".join(markdown_table(["metric", laco, external, "LaCo speed-up", "FLOP bound", "of bound"], rows))
