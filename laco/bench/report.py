"""The text of every engine's results: terminal tables and a summary of a batched run, the markdown table of a
packed-tower run (which ``docs/native-resolution.md`` quotes) and of a vLLM run (``docs/serving.md``). The JSON is
each result's ``to_dict`` (:mod:`laco.bench.schema`), the plot :mod:`laco.bench.plots`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..measure.timing import Stats
from . import plots
from .measurements import Measurement, measurement
from .native import NativeResult, SizeResult, ttft_bound
from .results import BenchResult, VariantResult
from .schema import RESULT_FILES, write_result
from .serving import METRICS, ServingResult
from .variants import BenchVariant, headline_variant

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
# Tables


def _row(result: BenchResult, spec: Measurement, variant: BenchVariant) -> list[str]:
    row = result.measurements[spec.name][variant.name]
    stats = row.stats()
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
    cells = [
        variant.name,
        _layers(variant),
        str(row.image_tokens),
        ms(stats.median),
        ms(stats.iqr),
        f"{ms(stats.min)}-{ms(stats.max)}",
        *speed_cells,
        f"{row.flops_predicted_full / 1e9:.1f}",
        f"{row.flops_counted / row.flops_predicted:.3f}" if row.flops_predicted else "n/a",
        row.memory.label() if row.memory is not None else "n/a",
    ]
    if spec.rate is not None:
        cells.insert(RATE_COLUMN, f"{spec.rate.per_call(result.settings) / stats.median:.1f}")
    return cells


def _title(result: BenchResult, spec: Measurement) -> str:
    settings = result.settings
    details = [f"batch {settings.batch}, image {settings.preset.resolution}px"]
    if settings.requested.compile:
        details.append("compiled blocks")
    if spec.detail:
        details.append(spec.detail.format(s=settings))
    if spec.needs_llm and settings.llm_layers:
        details.append(f"LLM timed with {settings.llm_layers} of {settings.llm_layers_full} layers, scaled")
    return f"== {spec.name}: {spec.title} (" + "; ".join(details) + ")"


def format_table(result: BenchResult, kind: str) -> str:
    """One measurement as a fixed-width table, with its title and what the columns mean."""
    spec = measurement(kind)
    header = list(COLUMNS)
    if spec.rate is not None:
        header.insert(RATE_COLUMN, spec.rate.unit)
    out = [_title(result, spec), *text_table(header, [_row(result, spec, v) for v in result.variants], right_from=2)]
    legend = LEGEND
    if any(not v.same_tokens_as_baseline for v in result.variants):
        legend += " +: the LLM sees more visual tokens than its baseline (no compression)."
    footnotes = {row.memory.footnote for row in result.measurements[kind].values() if row.memory is not None}
    legend += "".join(f" {note}" for note in sorted(filter(None, footnotes)))
    out.append(legend)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Summary


def format_summary(result: BenchResult, files: dict[str, str] | None = None, provenance: dict | None = None) -> str:
    """The few lines worth reading first: the main target, the efficiency over all placements, run time."""
    settings, machine = result.settings, result.machine
    lines = [
        f"== summary: {result.preset.name} ({result.preset.description})",
        f"   {machine.device} {settings.execution}, {settings.threads} thread(s) on {machine.cpu}"
        + (f", GPU {machine.gpu.name}" if machine.gpu else "")
        + f"; torch {machine.torch}, transformers {machine.transformers}",
    ]
    if provenance is not None:
        lines.append(f"   {provenance_text(provenance)}")
    lines += _headline_lines(result)
    lines += _efficiency_lines(result)
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


def _headline_lines(result: BenchResult) -> list[str]:
    """The headline placement against external compression, under every measurement."""
    main = headline_variant((v.name, v.group) for v in result.variants)
    if main is None:
        return []
    variant = result.variant(main)
    tokens = next(iter(result.measurements.values()))[main].image_tokens
    lines = [
        f"   {main} (after layer {variant.placement.layers[0]} of {result.depth}) vs external, both {tokens} visual tokens:"
    ]
    for spec in result.kinds():
        speed = result.speedup(spec.name, main)
        if speed is not None:
            lines.append(
                f"     {spec.short:<10} {speed.measured:.2f}x measured [{speed.q1:.2f}-{speed.q3:.2f}], "
                f"{speed.bound:.2f}x FLOP bound, {speed.efficiency:.2f} of bound"
            )
            lines += _optimizer_lines(result, spec.name, main)
    if any(spec.target for spec in result.kinds()):
        lines.append("     (target >= 1.5x; docs/benchmarks.md sets measured runs against the paper's figures)")
    return lines


def _efficiency_lines(result: BenchResult) -> list[str]:
    """Measured over bound across every placement and measurement with a gain to collect."""
    efficiencies = [
        (speed.efficiency, kind, variant.name)
        for kind in result.measurements
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


def _optimizer_lines(result: BenchResult, kind: str, name: str) -> list[str]:
    """The training step less its AdamW step: how much of the gap to the FLOP bound the optimizer explains."""
    row: VariantResult = result.measurements[kind][name]
    compute = result.speedup(kind, name, without_optimizer=True)
    if compute is None or not row.optimizer_seconds:
        return []
    optimizer = Stats.of(row.optimizer_seconds).median
    step = row.stats().median
    return [
        f"       of which AdamW: {ms(optimizer)} ms of {ms(step)} ms ({100 * optimizer / step:.0f}%), the same for "
        "any token count;",
        f"       forward + backward alone: {compute.measured:.2f}x [{compute.q1:.2f}-{compute.q3:.2f}], "
        f"{compute.efficiency:.2f} of bound",
    ]


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
        f"the LLM's decoder layers took {ms(times[0])} ms of prefill for {big.sequence_tokens} tokens per sequence "
        f"and {ms(times[1])} ms for {small.sequence_tokens} ({token_ratio:.1f}x the tokens, {time_ratio:.2f}x the "
        "time): this run is bound by host overhead (Python, kernel launches), not by arithmetic, so its speed-ups understate "
        "what the FLOP reduction allows. Raise --batch (and compare runs with --compare)."
    )


def format_anatomy(result: BenchResult) -> list[str]:
    """Where the headline merge's encoder time goes, and the speed-up those part times predict."""
    parts = result.anatomy
    lines = [
        f"   where {parts.variant}'s encoder time goes (parts timed alone, batch {parts.batch}):",
        f"     a block: {ms(parts.block_before.median)} ms at {parts.tokens_before} tokens, "
        f"{ms(parts.block_after.median)} ms at {parts.tokens_after}: {parts.block_time_ratio:.3f} of the time for "
        f"{parts.block_flop_ratio:.3f} of the FLOPs",
        f"     the merge: {ms(parts.merge.median)} ms = {100 * parts.merge_share:.1f}% of the compressed encoder's "
        f"blocks + merge ({100 * parts.flops_merge / parts.compressed_encoder_flops:.1f}% of its FLOPs)",
    ]
    timed_with = next((spec.name for spec in result.kinds() if spec.anatomy), None)
    speed = result.speedup(timed_with, parts.variant) if timed_with is not None else None
    if speed is not None:
        lines.append(
            f"     encoder speed-up: {speed.bound:.2f}x FLOP bound, {parts.time_bound:.2f}x predicted from these times, "
            f"{speed.measured:.2f}x measured"
        )
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Packed towers (native.md)

NATIVE_COLUMNS = (
    "images", "patches", "original s", "LaCo@1/4 keep s", "speed-up (bound)", "of bound", "compress_more s",
    "speed-up (bound)", "of bound", "CPU-time speed-up keep/more", "laco overhead (keep)", "LLM tokens orig/keep/more",
    "TTFT bound keep/more",
)  # fmt: skip


def provenance_text(provenance: dict) -> str:
    """Commit, date and how loaded the machine was: what every engine's report names."""
    load = [p[0] if p else float("nan") for p in (provenance["load_average_start"], provenance["load_average_end"])]
    return (
        f"commit {provenance['commit']}, {provenance['date']}; load average {load[0]:.1f} at start, "
        f"{load[1]:.1f} at end"
    )


def native_markdown(result: NativeResult, provenance: dict) -> str:
    """A header naming the machine and the run, then one row per image set (the docs' table)."""
    m, settings = result.machine, result.settings
    others = m.get("other_processes_cores")
    lines = [
        f"{result.preset.name}: {result.preset.description}. Random weights, {result.dtype}, {settings.attn} "
        f"attention; {m['cpu']}, {m['torch_threads']} thread(s), torch {m['torch']}, transformers {m['transformers']}, "
        f"{provenance_text(provenance)}"
        + (f"; other processes kept {others:.2f} cores busy." if others is not None else "."),
        "",
        *markdown_table(NATIVE_COLUMNS, [_native_row(result, row) for row in result.sizes.values()]),
    ]
    rounds = ", ".join(f"{size}: {row.warmup} warm-up + {row.reps} timed" for size, row in result.sizes.items())
    lines += ["", f"Rounds interleaved, start rotating ({rounds}); speed-ups are medians of per-round ratios."]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _native_row(result: NativeResult, row: SizeResult) -> list[str]:
    original, keep, more = result.variants
    median = {v.name: row.samples[v.name].stats().median for v in result.variants}
    speed = {v.name: row.speedup(v) for v in (keep, more)}
    cpu = {v.name: row.speedup(v, cpu_time=True) for v in (keep, more)}
    tokens = "/".join(str(sum(row.llm_tokens[v.name])) for v in result.variants)
    ttft = "/".join(f"{b:.2f}x" if (b := ttft_bound(row, original.name, v.name)) else "n/a" for v in (keep, more))
    cells = [row.size, str(row.patches), f"{median[original.name]:.3g}"]
    for variant in (keep, more):
        s = speed[variant.name]
        cells += [f"{median[variant.name]:.3g}", f"{s.measured:.2f}x ({s.bound:.2f}x)", f"{s.efficiency:.2f}"]
    return cells + [
        f"{cpu[keep.name].measured:.2f}x/{cpu[more.name].measured:.2f}x",
        f"{100 * row.overhead_share(keep.name):.1f}%",
        tokens,
        ttft,
    ]


# ---------------------------------------------------------------------------------------------------------------
# vLLM serving (serving.md)


def serving_table(result: ServingResult) -> str:
    laco, external = result.names
    rows = [
        [label, f"{result.medians[laco][metric]:.3f}", f"{result.medians[external][metric]:.3f}",
         f"**{result.ratios[key]:.2f}x**", f"{result.bounds[key]:.2f}x", f"{result.ratios[key] / result.bounds[key]:.2f}"]
        for key, metric, label in METRICS
    ]  # fmt: skip
    return "\n".join(markdown_table(["metric", laco, external, "LaCo speed-up", "FLOP bound", "of bound"], rows))


def serving_summary(result: ServingResult, provenance: dict) -> str:
    s, m = result.settings, result.machine
    rounds = ", ".join("/".join(order) for order in result.order)
    return (
        f"{s['preset']} served by vLLM {m.get('vllm')} ({'float32, eager' if s['device'] == 'cpu' else 'bfloat16'}, "
        f"LLM layers: {s['llm_layers'] or 'all'}), {result.image_tokens} image + {result.prompt_tokens} text tokens "
        f"per request; TTFT: one request alone, max_tokens 1; throughput: {s['requests']} concurrent requests of "
        f"{s['output_tokens']} tokens; medians of {s['rounds']} rounds after {s['warmup']} warm-up (order: {rounds}). "
        f"Machine: {m.get('cpu')}, {m.get('usable_cores')} cores, {m.get('memory_gib')} GiB"
        f"{', GPU ' + m['gpu']['name'] if m.get('gpu') else ''}; {provenance_text(provenance)}."
    )
