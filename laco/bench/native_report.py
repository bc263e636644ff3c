"""What a packed-tower run (:mod:`laco.bench.native`) produced, as JSON (every raw sample) and as the markdown table
``docs/native-resolution.md`` and ``docs/benchmarks.md`` quote; and its command line (``laco bench --preset
qwen2.5-vl-7b-tower``, dispatched from :mod:`laco.bench.cli`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .native import CPU_SECONDS, NativeResult, NativeSettings, SizeResult, run_native
from .results import preset_summary
from .settings import BenchSettings

SCHEMA = "laco-bench-native/1"
OPTIONS = "--sizes, --reps, --warmup, --threads, --device, --precision, --seed, --out, --no-progress"
"""The options a packed-tower run takes; the others of ``laco bench`` describe batched encoders and MLLMs."""
_OTHER_OPTIONS = ("quick", "batch", "llm_layers", "measure", "methods", "depths", "method_depth", "two_stage", "factor")
_OTHER_OPTIONS += ("compile",)


def settings_from_cli(args: argparse.Namespace) -> NativeSettings:
    """The packed-tower settings ``laco bench``'s options give; refuses the options that do not apply."""
    given = BenchSettings.from_namespace(args)
    unchanged = BenchSettings(preset=given.preset)
    other = [
        f"--{name.replace('_', '-')}" for name in _OTHER_OPTIONS if getattr(given, name) != getattr(unchanged, name)
    ]
    if other:
        raise ValueError(
            f"{', '.join(other)} do(es) not apply to the packed-tower preset {given.preset}: it times the original "
            f"tower, keep_llm_tokens and compress_more at LaCo@1/4 on each image set. Its options: {OPTIONS}."
        )
    return NativeSettings(
        preset=str(given.preset),
        sizes=tuple(args.sizes) if args.sizes else None,
        reps=given.reps,
        warmup=given.warmup,
        threads=given.threads,
        device=given.device,
        precision=given.precision or "auto",
        seed=given.seed,
    )


def main(args: argparse.Namespace, out: str | Path) -> int:
    """``laco bench --preset <packed tower>``: run, write ``native.json`` and ``native.md`` to ``out`` after every
    image set, print the table."""
    out = Path(out)
    result = run_native(settings_from_cli(args), progress=not args.no_progress, on_size=lambda r: write(r, out))
    print("\n" + markdown(result))
    print(f"files: {out / 'native.json'}, {out / 'native.md'}")
    return 0


def write(result: NativeResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "native.json").write_text(json.dumps(to_dict(result), indent=1) + "\n")
    (out / "native.md").write_text(markdown(result))


# ---------------------------------------------------------------------------------------------------------------
# JSON


def to_dict(result: NativeResult) -> dict[str, Any]:
    preset = result.preset
    return {
        "schema": SCHEMA,
        "preset": {**preset_summary(preset), "layer": preset.layer},
        "settings": {**asdict(result.settings), "dtype": result.dtype},
        "machine": result.machine,
        "variants": [variant.to_dict(preset.encoder.layers) for variant in result.variants],
        "sizes": {size: _size_dict(result, row) for size, row in result.sizes.items()},
        "notes": result.notes,
    }


def _size_dict(result: NativeResult, row: SizeResult) -> dict[str, Any]:
    variants = {}
    for variant in result.variants:
        samples = row.samples[variant.name]
        entry = {
            "seconds": samples.seconds,
            "cpu_seconds": samples.phases.get(CPU_SECONDS, []),
            "rounds": samples.rounds,
            "slots": samples.slots,
            "stats_seconds": samples.stats().to_dict(),
            "flops_predicted": row.flops[variant.name],
            "ttft_flops_predicted": row.ttft_flops.get(variant.name),
            "llm_tokens": row.llm_tokens[variant.name],
        }
        if variant.baseline is not None:
            entry["speedup"] = {
                "baseline": variant.baseline,
                **row.speedup(variant).to_dict(),
                "cpu_time": row.speedup(variant, cpu_time=True).to_dict(),
                "ttft_flop_bound": _ttft_bound(row, variant.baseline, variant.name),
            }
            entry["overhead_seconds"] = row.overhead_seconds[variant.name]
            entry["overhead_share"] = row.overhead_share(variant.name)
        variants[variant.name] = entry
    return {
        "images": [list(image) for image in row.images],
        "grid_thw": row.grid_thw,
        "patches": row.patches,
        "warmup": row.warmup,
        "reps": row.reps,
        "variants": variants,
    }


def _ttft_bound(row: SizeResult, baseline: str, name: str) -> float | None:
    return row.ttft_flops[baseline] / row.ttft_flops[name] if row.ttft_flops else None


# ---------------------------------------------------------------------------------------------------------------
# Markdown

_HEADER = (
    "| images | patches | original s | LaCo@1/4 keep s | speed-up (bound) | of bound | compress_more s "
    "| speed-up (bound) | of bound | CPU-time speed-up keep/more | laco overhead (keep) | LLM tokens orig/keep/more "
    "| TTFT bound keep/more |\n" + "|---" * 13 + "|"
)


def markdown(result: NativeResult) -> str:
    """A header naming the machine and the run, then one row per image set (the docs' table)."""
    m, settings = result.machine, result.settings
    others = m.get("other_processes_cores")
    lines = [
        f"{result.preset.name}: {result.preset.description}. Random weights, {result.dtype}, {settings.attn} "
        f"attention; {m['cpu']}, {m['torch_threads']} thread(s), torch {m['torch']}, transformers {m['transformers']}, "
        f"commit {m.get('commit')}, {m.get('date')}; load average {m['load_average_start'][0]:.1f} at start, "
        f"{m.get('load_average_end', [float('nan')])[0]:.1f} at end"
        + (f"; other processes kept {others:.2f} cores busy." if others is not None else "."),
        "",
        _HEADER,
    ]
    lines += [_row(result, row) for row in result.sizes.values()]
    rounds = ", ".join(f"{size}: {row.warmup} warm-up + {row.reps} timed" for size, row in result.sizes.items())
    lines += ["", f"Rounds interleaved, start rotating ({rounds}); speed-ups are medians of per-round ratios."]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _row(result: NativeResult, row: SizeResult) -> str:
    original, keep, more = result.variants
    median = {v.name: row.samples[v.name].stats().median for v in result.variants}
    speed = {v.name: row.speedup(v) for v in (keep, more)}
    cpu = {v.name: row.speedup(v, cpu_time=True) for v in (keep, more)}
    tokens = "/".join(str(sum(row.llm_tokens[v.name])) for v in result.variants)
    ttft = "/".join(_format_bound(_ttft_bound(row, original.name, v.name)) for v in (keep, more))
    cells = [row.size, str(row.patches), f"{median[original.name]:.3g}"]
    for variant in (keep, more):
        s = speed[variant.name]
        cells += [f"{median[variant.name]:.3g}", f"{s.measured:.2f}x ({s.bound:.2f}x)", f"{s.efficiency:.2f}"]
    cells += [
        f"{cpu[keep.name].measured:.2f}x/{cpu[more.name].measured:.2f}x",
        f"{100 * row.overhead_share(keep.name):.1f}%",
        tokens,
        ttft,
    ]
    return "| " + " | ".join(cells) + " |"


def _format_bound(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


__all__ = ["SCHEMA", "main", "markdown", "settings_from_cli", "to_dict", "write"]
