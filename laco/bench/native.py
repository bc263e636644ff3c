"""The ``packed`` engine: LaCo inside a packed native-resolution tower (Qwen2-VL, Qwen2.5-VL).

A random-weight tower at a public geometry takes one packed call per image set. The ``original`` tower and LaCo in
``keep_llm_tokens`` and ``compress_more`` mode (:func:`~laco.bench.variants.packed_tower_variants`) are timed
interleaved, in wall clock and process CPU time (less inflated by other processes), next to the FLOP bounds of
:mod:`laco.cost.native`; what laco adds per call is timed on its own. Not the batched engine: a packed tower takes
``grid_thw`` and several image sets per run, and its variants are modes, not depths and methods.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .. import patch as laco_patch
from ..cost.native import PackedEncoderGeometry, packed_encoder_flops, packed_mllm_flops
from ..measure.machine import RunStart
from ..measure.timing import Clock, Stats, run_interleaved, usable_cores
from ..placement import KEEP
from ..precision import PRECISIONS
from ..precision import choose as choose_precision
from .models import CompressionSwitch
from .options import check_threads, csv, option
from .presets import PRESETS, NativePreset
from .results import Result, Row, check_tokens
from .settings import resolve_device
from .variants import BenchVariant, packed_tower_variants

IMAGE_SETS: dict[str, tuple[tuple[int, int], ...]] = {
    "448": ((448, 448),),
    "896": ((896, 896),),
    "1344": ((1344, 1344),),
    "mixed": ((448, 448), (896, 672), (448, 1344)),  # three sizes in one packed call
}
"""Image sets (height, width in pixels, as the processor resized them); each set is one packed call."""
CPU_SECONDS = "cpu"
"""The sub-phase a timed call reports: this process's CPU seconds during the call."""
OVERHEAD_REPEATS = 5
NATIVE_PRESETS: dict[str, NativePreset] = {name: p for name, p in PRESETS.items() if p.engine == "packed"}


@dataclass(frozen=True)
class NativeSettings:
    """What a packed-tower run asks for; ``None`` fields take the preset's defaults (per image set and device)."""

    preset: str = "qwen2.5-vl-7b-tower"
    sizes: tuple[str, ...] | None = option(
        None, f"image sets to time, one packed call each, from {','.join(IMAGE_SETS)} (default: the preset's)", csv
    )
    reps: int | None = None
    warmup: int | None = None
    threads: int | None = None
    device: str = "auto"
    precision: str = option("auto", "dtype of the tower", choices=PRECISIONS)
    seed: int = 0
    attn: str = option("sdpa", "attention implementation of the tower (sdpa, eager)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes) if self.sizes else None)


def native_preset(name: str) -> NativePreset:
    try:
        return NATIVE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown packed-tower preset {name!r}; choose one of {sorted(NATIVE_PRESETS)}.") from None


def tower_config(geometry: PackedEncoderGeometry):
    """The transformers vision config of ``geometry`` (``Qwen2VLVisionConfig`` / ``Qwen2_5_VLVisionConfig``)."""
    from transformers import Qwen2_5_VLVisionConfig, Qwen2VLVisionConfig

    g = geometry
    common = dict(
        depth=g.layers, num_heads=g.heads, patch_size=g.patch, spatial_merge_size=g.merge,
        temporal_patch_size=g.temporal_patch,
    )  # fmt: skip
    if g.family == "qwen2.5-vl":
        return Qwen2_5_VLVisionConfig(
            hidden_size=g.width, intermediate_size=g.mlp, out_hidden_size=g.out_width, window_size=g.window,
            fullatt_block_indexes=list(g.full_blocks), **common,
        )  # fmt: skip
    if g.family == "qwen2-vl":
        if g.mlp % g.width:
            raise ValueError(
                f"a qwen2-vl tower's MLP width is a whole multiple of its width; {g.name} has {g.mlp}/{g.width}."
            )
        return Qwen2VLVisionConfig(embed_dim=g.width, hidden_size=g.out_width, mlp_ratio=g.mlp // g.width, **common)
    raise ValueError(f"laco bench builds qwen2-vl and qwen2.5-vl towers; {g.name} is a {g.family} geometry.")


def build_tower(geometry: PackedEncoderGeometry, attn: str, seed: int) -> nn.Module:
    """A random-weight tower of ``geometry`` from transformers' config classes, in eval mode."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    config = tower_config(geometry)
    torch.manual_seed(seed)
    family = (
        Qwen2_5_VisionTransformerPretrainedModel
        if geometry.family == "qwen2.5-vl"
        else Qwen2VisionTransformerPretrainedModel
    )
    tower = family(config)
    tower.set_attn_implementation(attn)
    return tower.eval()


def packed_inputs(geometry: PackedEncoderGeometry, images, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random patches of ``images``, packed as the image processor packs them, and their ``grid_thw``."""
    grid_thw = torch.tensor([geometry.grid_thw(image) for image in images])
    rows = int(grid_thw.prod(-1).sum())
    generator = torch.Generator().manual_seed(seed)
    channels = geometry.channels * geometry.temporal_patch * geometry.patch**2
    return torch.randn(rows, channels, generator=generator), grid_thw


def run_native(
    settings: NativeSettings, *, progress: bool = True, on_size: Callable[[Result], None] | None = None
) -> Result:
    """Time the preset's tower on every image set of ``settings``; ``on_size(result)`` after each set (a long run
    stopped early keeps the sets it finished)."""
    preset = native_preset(settings.preset)
    sizes = settings.sizes or preset.sizes
    unknown = sorted(set(sizes) - set(IMAGE_SETS))
    if unknown:
        raise ValueError(f"unknown image set(s) {unknown} for --sizes; choose from {list(IMAGE_SETS)}.")
    device = resolve_device(settings.device)
    precision = choose_precision(settings.precision, device)
    torch.set_num_threads(check_threads(settings.threads, usable_cores()))
    start = RunStart()
    tower = build_tower(preset.encoder, settings.attn, settings.seed).to(device, precision.dtype)
    variants = packed_tower_variants(preset.encoder.layers, preset.layer)
    dtype = str(precision.dtype).removeprefix("torch.")
    result = Result(
        "packed", preset, variants, {**asdict(settings), "dtype": dtype}, start.machine(device).to_dict(),
        headline=variants[1].name, alternatives={CPU_SECONDS: "cpu_time"}, preset_fields={"layer": preset.layer},
        payload={"sizes": {}}, start=start,
    )  # fmt: skip
    notes = [f"random weights, {dtype}, {settings.attn} attention", *preset.notes, precision.describe()]
    switch = CompressionSwitch(tower)
    for size in sizes:
        result.rows[size] = _run_size(result, switch, size, device, progress)
        result.titles[size] = f"{size} px"
        result.machine = start.machine(device).to_dict()  # the load of the sets timed so far
        rounds = ", ".join(
            f"{k}: {v['warmup']} warm-up + {v['reps']} timed" for k, v in result.payload["sizes"].items()
        )
        result.notes = [
            *notes,
            f"rounds interleaved, start rotating ({rounds}); speed-ups are medians of per-round ratios",
        ]
        if on_size is not None:
            on_size(result)
    switch.activate(variants[0].placement)
    return result


def _run_size(result: Result, switch: CompressionSwitch, size: str, device: torch.device, progress: bool):
    """One image set: every variant's samples (wall seconds, ``cpu`` phase), the cost model's FLOPs and LLM tokens,
    the TTFT FLOP bound, and what laco adds per call, timed alone."""
    preset, settings, variants, images = result.preset, result.settings, result.variants, IMAGE_SETS[size]
    pixels, grid_thw = packed_inputs(preset.encoder, images, settings["seed"] + 1)
    pixels, grid_thw = pixels.to(device, getattr(torch, result.settings["dtype"])), grid_thw.to(device)
    patches = int(grid_thw.prod(-1).sum())
    reps = settings["reps"] or preset.reps(size, device)
    warmup = preset.warmup(patches, device) if settings["warmup"] is None else settings["warmup"]
    emitted: dict[str, int] = {}
    calls, prepares = {}, {}
    for variant in variants:
        prepares[variant.name] = lambda placement=variant.placement: switch.activate(placement)
        calls[variant.name] = _timed_call(switch.encoder, pixels, grid_thw, emitted, variant.name)
    if progress:
        print(f"{preset.name} {size}: {patches} patches, {warmup} warm-up + {reps} timed rounds", flush=True)
    report = _progress_line(size, progress)
    samples = run_interleaved(calls, reps=reps, warmup=warmup, clock=Clock(device), prepare=prepares, on_call=report)
    costs = {v.name: packed_encoder_flops(preset.encoder, v.placement, images=images, mode=_mode(v)) for v in variants}
    for name, count in emitted.items():
        check_tokens(name, count, sum(costs[name].info["llm_tokens"]))
    ttft = {
        v.name: packed_mllm_flops(preset.encoder, preset.llm, v.placement, images=images, mode=_mode(v)).total
        for v in variants
        if preset.llm is not None
    }
    result.payload["sizes"][size] = {
        "images": [list(image) for image in images], "grid_thw": grid_thw.tolist(), "patches": patches,
        "warmup": warmup, "reps": reps,
    }  # fmt: skip
    rows = {}
    for v in variants:
        tokens = list(costs[v.name].info["llm_tokens"])
        facts = {"ttft_flops_predicted": ttft.get(v.name)}
        if v.placement.compressed:
            facts["ttft_flop_bound"] = ttft[v.baseline] / ttft[v.name] if ttft else None
            overhead = facts["overhead_seconds"] = laco_overhead(switch, v, pixels, grid_thw)
            facts["overhead_share"] = sum(overhead.values()) / samples[v.name].stats().median
        rows[v.name] = Row(samples[v.name], costs[v.name].total, tokens, facts)
    return rows


def _mode(variant: BenchVariant) -> str:
    return variant.placement.mode if variant.placement.compressed else KEEP


def _timed_call(tower: nn.Module, pixels: torch.Tensor, grid_thw: torch.Tensor, rows: dict[str, int], name: str):
    """One packed forward; reports its CPU seconds and records how many LLM tokens the tower emitted."""

    def call() -> dict[str, float]:
        cpu = time.process_time()
        with torch.inference_mode():
            out = tower(pixels, grid_thw=grid_thw)
        rows[name] = int(out.pooler_output.shape[0])
        return {CPU_SECONDS: time.process_time() - cpu}

    return call


def _progress_line(size: str, enabled: bool):
    if not enabled:
        return None
    calls: dict[str, int] = {}

    def report(name: str, timed: bool) -> None:
        calls[name] = calls.get(name, 0) + 1
        label = "timed" if timed else "warm-up"
        print(f"  {size} {name}: call {calls[name]} ({label}), load {os.getloadavg()[0]:.1f}", flush=True)

    return report


def laco_overhead(switch: CompressionSwitch, variant: BenchVariant, pixels, grid_thw) -> dict[str, float]:
    """Seconds laco adds to one call under ``variant``, timed on their own (median of a few repetitions): the call's
    layout (grids, checks, the index tensors it hands the tower), the merge (with the re-ordering compress_more
    needs) and the arguments of every block after the merge (segments, windows, rotary embeddings)."""
    switch.activate(variant.placement)
    tower, adapter = switch.encoder, switch.adapter
    compressor = laco_patch.compressors(tower)[0]
    layer, depth = variant.placement.layers[0], len(adapter.blocks(tower))
    parameter = next(tower.parameters())
    hidden = torch.randn(pixels.shape[0], adapter.hidden_size(tower), dtype=parameter.dtype, device=parameter.device)
    stand_in = torch.zeros(1, 1, device=parameter.device)  # replaced by what the merged tokens need
    block_kwargs = {"cu_seqlens": torch.zeros(2, dtype=torch.int32), "max_seqlen": None}
    block_kwargs["position_embeddings"] = (stand_in, stand_in)
    times: dict[str, list[float]] = {"layout": [], "merge": [], "block_inputs": []}
    clock = Clock(parameter.device)
    with torch.inference_mode():
        for _ in range(OVERHEAD_REPEATS):
            start = clock.mark()
            layout = adapter.layout(tower, (pixels,), {"grid_thw": grid_thw}, laco_patch.placement_of(tower))
            layout.encoder_inputs((pixels,), {"grid_thw": grid_thw})
            middle = clock.mark()
            layout.merge(hidden, compressor)
            merged = clock.mark()
            after = layout.after(compressor)
            for block in range(layer, depth):
                after.block_inputs(block, block_kwargs)
            end = clock.mark()
            for part, (a, b) in zip(times, ((start, middle), (middle, merged), (merged, end))):
                times[part].append(clock.seconds(a, b))
    return {part: Stats.of(values).median for part, values in times.items()}
