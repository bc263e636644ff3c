"""Time LaCo inside a Qwen-VL vision tower on this machine, next to its FLOP bound (laco.cost_native).

Self-contained runner (to be folded into ``laco bench``): a random-weight tower of a public geometry (default the
Qwen2.5-VL-7B tower: 32 blocks, width 1280, 112 px windows, full attention in blocks 7/15/23/31), one packed call per
image set, three variants of the same instance switched with ``laco.apply`` / ``laco.remove``:

* ``original``: the unmodified tower;
* ``keep``: LaCo@1/4 in ``keep_llm_tokens`` mode (the LLM receives the same tokens as from ``original``);
* ``more``: LaCo@1/4 in ``compress_more`` mode (16x fewer LLM tokens than patches, against ``original``'s 4x).

Rounds are interleaved (every variant once per round, the order rotating), after one warm-up call per variant; the
speed-up is the median of the per-round ratios. The merge and the rewritten per-block arguments are timed on their
own (layout, merge, arguments of every later block; median of several repetitions) as a share of the compressed
tower's median time.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 python scripts/bench_qwen_tower.py --sizes 448 1344 mixed 896 --rounds 3 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import Qwen2_5_VLVisionConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's laco, not another installed one

import laco  # noqa: E402
from laco import Placement  # noqa: E402
from laco.cost_native import (  # noqa: E402
    PACKED_ENCODERS,
    PACKED_LLMS,
    PackedEncoderGeometry,
    packed_encoder_flops,
    packed_mllm_flops,
)

SIZES = {
    "448": [(448, 448)],
    "896": [(896, 896)],
    "1344": [(1344, 1344)],
    "mixed": [(448, 448), (896, 672), (448, 1344)],  # three sizes in one packed call
}
VARIANTS = {
    "original": None,
    "keep": Placement("1/4", mode="keep_llm_tokens"),
    "more": Placement("1/4", mode="compress_more"),
}


def build_tower(g: PackedEncoderGeometry, attn: str) -> torch.nn.Module:
    common = dict(depth=g.layers, num_heads=g.heads, patch_size=g.patch, spatial_merge_size=g.merge)
    torch.manual_seed(0)
    if g.family == "qwen2.5-vl":
        config = Qwen2_5_VLVisionConfig(
            hidden_size=g.width, intermediate_size=g.mlp, out_hidden_size=g.out_width, window_size=g.window,
            fullatt_block_indexes=list(g.full_blocks), **common,
        )  # fmt: skip
        tower = Qwen2_5_VisionTransformerPretrainedModel(config)
    elif g.family == "qwen2-vl":
        config = Qwen2VLVisionConfig(embed_dim=g.width, hidden_size=g.out_width, mlp_ratio=g.mlp // g.width, **common)
        tower = Qwen2VisionTransformerPretrainedModel(config)
    else:
        raise ValueError(f"no bench tower for {g.name}")
    tower.set_attn_implementation(attn)
    return tower.eval()


def packed_inputs(g: PackedEncoderGeometry, images) -> tuple[torch.Tensor, torch.Tensor]:
    grid_thw = torch.tensor([g.grid_thw(image) for image in images])
    rows = int(grid_thw.prod(-1).sum())
    generator = torch.Generator().manual_seed(1)
    return torch.randn(rows, g.channels * g.temporal_patch * g.patch**2, generator=generator), grid_thw


def switch(tower: torch.nn.Module, placement: Placement | None) -> None:
    if laco.is_patched(tower):
        laco.remove(tower)
    if placement is not None:
        laco.apply(tower, placement)


def timed_call(tower, pixels, grid_thw) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CPU time is less inflated by other processes' load)."""
    with torch.inference_mode():
        start, cpu = time.perf_counter(), time.process_time()
        tower(pixels, grid_thw=grid_thw)
        return time.perf_counter() - start, time.process_time() - cpu


def overhead(tower, pixels, grid_thw, placement: Placement, repeats: int = 5) -> dict[str, float]:
    """Seconds laco adds to one call, timed on their own: the call's layout (grids, checks), the merge (incl. the
    re-ordering compress_more needs) and the arguments of every block after the merge (segments, rotary)."""
    switch(tower, placement)
    encoder, adapter = tower, next(a for a in laco.adapters.ADAPTERS if a.matches(tower))
    compressor = laco.attached_compressors(tower)[0]
    width, depth, layer = adapter.hidden_size(tower), len(tower.blocks), laco.placement_of(tower).layers[0]
    hidden = torch.randn(pixels.shape[0], width)
    reference = (torch.zeros(1, 1), torch.zeros(1, 1))
    block_kwargs = {
        "cu_seqlens": torch.zeros(2, dtype=torch.int32),
        "max_seqlen": None,
        "position_embeddings": reference,
    }
    times: dict[str, list[float]] = {"layout": [], "merge": [], "block_inputs": []}
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            layout = adapter.layout(encoder, (pixels,), {"grid_thw": grid_thw})
            layout.encoder_inputs((pixels,), {"grid_thw": grid_thw})  # what the tower would compute itself
            middle = time.perf_counter()
            layout.merge(hidden, compressor)
            merged = time.perf_counter()
            after = layout.after(compressor)
            for block in range(layer, depth):
                after.block_inputs(block, block_kwargs)
            end = time.perf_counter()
            times["layout"].append(middle - start)
            times["merge"].append(merged - middle)
            times["block_inputs"].append(end - merged)
    return {key: statistics.median(values) for key, values in times.items()}


def run_size(tower, geometry: PackedEncoderGeometry, size: str, rounds: int, warmup: bool) -> dict:
    images = SIZES[size]
    pixels, grid_thw = packed_inputs(geometry, images)
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    cpu_times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    if warmup:
        for placement in VARIANTS.values():
            switch(tower, placement)
            timed_call(tower, pixels, grid_thw)
    order = list(VARIANTS)
    for round_index in range(rounds):
        for variant in order[round_index % 3 :] + order[: round_index % 3]:
            switch(tower, VARIANTS[variant])
            wall, cpu = timed_call(tower, pixels, grid_thw)
            times[variant].append(wall)
            cpu_times[variant].append(cpu)
            load = os.getloadavg()[0]
            print(
                f"  {size} round {round_index + 1}/{rounds} {variant}: {wall:.2f}s ({cpu:.2f} cpu-s, load {load:.1f})"
            )
    result = {"images": images, "grid_thw": grid_thw.tolist(), "patches": pixels.shape[0], "times_s": times}
    result["cpu_times_s"] = cpu_times
    base_flops = packed_encoder_flops(geometry, images=images).total
    llm = PACKED_LLMS[geometry.name.removesuffix("-smoke")]
    base_ttft = packed_mllm_flops(geometry, llm, images=images).total
    for variant in ("keep", "more"):
        placement = VARIANTS[variant]
        flops = packed_encoder_flops(geometry, placement, images=images, mode=placement.mode)
        ttft = packed_mllm_flops(geometry, llm, placement, images=images, mode=placement.mode)
        ratios = [o / v for o, v in zip(times["original"], times[variant])]
        cpu_ratios = [o / v for o, v in zip(cpu_times["original"], cpu_times[variant])]
        speedup = statistics.median(ratios)
        cost = overhead(tower, pixels, grid_thw, placement)
        result[variant] = {
            "speedup": speedup,
            "ratios": ratios,
            "cpu_time_speedup": statistics.median(cpu_ratios),
            "flop_bound": base_flops / flops.total,
            "fraction_of_bound": speedup / (base_flops / flops.total),
            "ttft_flop_bound": base_ttft / ttft.total,
            "llm_tokens": list(flops.info["llm_tokens"]),
            "overhead_s": cost,
            "overhead_share": sum(cost.values()) / statistics.median(times[variant]),
        }
    switch(tower, None)
    result["original_llm_tokens"] = list(packed_encoder_flops(geometry, images=images).info["llm_tokens"])
    return result


def machine(threads: int) -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "threads": threads,
        "torch": torch.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg_start": os.getloadavg(),
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"{report['tower']} tower, random weights, float32, {report['attn']} attention; {m['cpu']}, "
        f"{m['threads']} threads, torch {m['torch']}, commit {m['commit']}, {m['date']}; load average "
        f"{m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end.",
        "",
        "| images | patches | original s | LaCo@1/4 keep s | speed-up (bound) | of bound | compress_more s "
        "| speed-up (bound) | of bound | CPU-time speed-up keep/more | laco overhead (keep) | LLM tokens orig/keep/more "
        "| TTFT bound keep/more |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, r in report["sizes"].items():
        t = {k: statistics.median(v) for k, v in r["times_s"].items()}
        keep, more = r["keep"], r["more"]
        tokens = f"{sum(r['original_llm_tokens'])}/{sum(keep['llm_tokens'])}/{sum(more['llm_tokens'])}"
        lines.append(
            f"| {size} | {r['patches']} | {t['original']:.1f} | {t['keep']:.1f} | {keep['speedup']:.2f}x "
            f"({keep['flop_bound']:.2f}x) | {keep['fraction_of_bound']:.2f} | {t['more']:.1f} | {more['speedup']:.2f}x "
            f"({more['flop_bound']:.2f}x) | {more['fraction_of_bound']:.2f} | {keep['cpu_time_speedup']:.2f}x/"
            f"{more['cpu_time_speedup']:.2f}x | {100 * keep['overhead_share']:.1f}% | "
            f"{tokens} | {keep['ttft_flop_bound']:.2f}x/{more['ttft_flop_bound']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tower", default="qwen2.5-vl-7b", choices=sorted(PACKED_LLMS))
    parser.add_argument("--sizes", nargs="+", default=["448", "896", "1344", "mixed"], choices=sorted(SIZES))
    parser.add_argument("--rounds", nargs="+", type=int, default=[5, 3, 2, 2], help="per size (last one repeats)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--no-warmup-above", type=int, default=4096, help="skip the warm-up above this many patches")
    parser.add_argument("--out", type=Path, default=Path("docs/bench-cpu"))
    parser.add_argument("--depth", type=int, help="smoke test: a shallower tower (full-attention blocks kept in range)")
    args = parser.parse_args()
    geometry = PACKED_ENCODERS[args.tower]
    if args.depth:
        full = tuple(b for b in geometry.full_blocks if b < args.depth)
        geometry = replace(geometry, name=f"{geometry.name}-smoke", layers=args.depth, full_blocks=full)
    torch.set_num_threads(args.threads)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    report = {"tower": geometry.name, "attn": args.attn, "machine": machine(args.threads), "sizes": {}}
    tower = build_tower(geometry, args.attn)
    for index, size in enumerate(args.sizes):
        rounds = args.rounds[min(index, len(args.rounds) - 1)]
        warmup = packed_inputs(geometry, SIZES[size])[0].shape[0] <= args.no_warmup_above
        print(f"{size}: {rounds} rounds, warm-up {warmup}", flush=True)
        report["sizes"][size] = run_size(tower, geometry, size, rounds, warmup)
        report["machine"]["loadavg_end"] = os.getloadavg()
        write(report, args.out / f"{geometry.name}-tower")  # after every size: a long run stopped early keeps them
    print(markdown(report))


def write(report: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.parent.joinpath(f"{stem.name}.json").write_text(json.dumps(report, indent=1))  # names hold dots (qwen2.5)
    stem.parent.joinpath(f"{stem.name}.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
