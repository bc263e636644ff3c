"""Where a merged encoder's time goes: one block before the merge, one block after it, and the merge itself.

Why: the FLOP bound assumes every FLOP costs the same time. Two things break that, and they call for different
fixes: the merge's own memory-bound work (padding, the space-to-channel permute, LayerNorm over 4C channels),
which FLOPs undercount, and matrix products over fewer tokens running at a lower FLOP rate, which is the
hardware's. Timing one block at both token counts and the merge alone, interleaved like every other
measurement, tells them apart and predicts the encoder speed-up from measured times instead of FLOPs:

    time bound = (L * t_before + t_merge) / (k * t_before + t_merge + (L - k) * t_after)

for a merge after block ``k`` of ``L`` against the same merge after block ``L`` (external compression: same
input grid, so the same merge cost).

Each timed call runs its part ``L`` times back to back and reports the time per run. A part timed once would
measure, on a GPU, how fast the host launches a dozen small kernels into an idle device, not what the part
costs inside an encoder forward, where the host queues kernels while earlier blocks still run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..measure.flop_counting import flop_counter_mode
from ..measure.timing import Clock, Stats, run_interleaved
from ..placement import Placement


@dataclass(frozen=True)
class Anatomy:
    """Times (median seconds over the timed rounds) and counted FLOPs of the three parts of a one-stage merge."""

    variant: str
    layer: int
    depth: int
    batch: int
    tokens_before: int  # per image, prefix tokens included
    tokens_after: int
    block_before: Stats
    block_after: Stats
    merge: Stats
    flops_block_before: float
    flops_block_after: float
    flops_merge: float

    @property
    def block_time_ratio(self) -> float:
        """Time of a block after the merge over one before it."""
        return self.block_after.median / self.block_before.median

    @property
    def block_flop_ratio(self) -> float:
        return self.flops_block_after / self.flops_block_before

    @property
    def compressed_encoder_seconds(self) -> float:
        """The blocks and the merge of the compressed encoder, from the parts (embeddings and head left out)."""
        k, rest = self.layer, self.depth - self.layer
        return k * self.block_before.median + self.merge.median + rest * self.block_after.median

    @property
    def compressed_encoder_flops(self) -> float:
        k, rest = self.layer, self.depth - self.layer
        return k * self.flops_block_before + self.flops_merge + rest * self.flops_block_after

    @property
    def merge_share(self) -> float:
        """The merge's share of the compressed encoder's time."""
        return self.merge.median / self.compressed_encoder_seconds

    @property
    def time_bound(self) -> float:
        """Encoder speed-up over external compression predicted from the measured part times."""
        external = self.depth * self.block_before.median + self.merge.median
        return external / self.compressed_encoder_seconds

    def to_dict(self) -> dict[str, Any]:
        parts = ("block_before", "block_after", "merge")
        return {
            **{name: getattr(self, name) for name in _SHAPE},
            "seconds": {part: getattr(self, part).to_dict() for part in parts},
            "flops": {part: getattr(self, f"flops_{part}") for part in parts},
            **{name: getattr(self, name) for name in _RATIOS},
        }


_SHAPE = ("variant", "layer", "depth", "batch", "tokens_before", "tokens_after")
_RATIOS = ("block_time_ratio", "block_flop_ratio", "merge_share", "time_bound")


def _repeated(call, times: int):
    """``call`` run ``times`` times, as a workload (no sub-phase times)."""

    def workload() -> None:
        for _ in range(times):
            call()

    return workload


def _block_caller(block: nn.Module):
    """``block(hidden)``, passing ``attention_mask=None`` where a family's layer requires the argument."""
    parameters = inspect.signature(block.forward).parameters
    mask = parameters.get("attention_mask")
    if mask is not None and mask.default is inspect.Parameter.empty:
        return lambda hidden: block(hidden, attention_mask=None)
    return lambda hidden: block(hidden)


def measure_anatomy(
    switch,
    placement: Placement,
    name: str,
    *,
    batch: int,
    image_size: int | None = None,
    reps: int,
    warmup: int,
    clock: Clock,
    repeat: int | None = None,
) -> Anatomy:
    """Time block ``1`` at the input and at the merged token count, and ``placement``'s merge on its input.

    ``switch`` is the run's :class:`~laco.bench.models.CompressionSwitch`; the encoder is left uncompressed
    while timing, so calling a block runs the block alone. Inputs are ``batch`` images of ``image_size`` (default:
    the encoder's own) in the encoder's dtype, on its device. Every timed call runs its part ``repeat`` times
    (default: the encoder's depth); the times are per run.
    """
    if len(placement.layers) != 1:
        raise ValueError(f"the anatomy of {name} needs a one-stage placement, got layers {placement.layers}.")
    merge = switch.activate(placement)[0]
    switch.activate(Placement())
    encoder, adapter = switch.encoder, switch.adapter
    blocks = adapter.blocks(encoder)
    run_block = _block_caller(blocks[0])
    grid = adapter.grid_for_image_size(encoder, image_size or adapter.default_image_size(encoder))
    prefix, width = adapter.num_prefix_tokens(encoder), adapter.hidden_size(encoder)
    weight = next(encoder.parameters())
    merged_grid = merge.output_size(grid)
    before, after = prefix + grid[0] * grid[1], prefix + merged_grid[0] * merged_grid[1]
    generator = torch.Generator().manual_seed(0)

    def hidden(tokens: int) -> torch.Tensor:
        return torch.randn(batch, tokens, width, generator=generator).to(weight.device, weight.dtype)

    inputs = {"block_before": hidden(before), "block_after": hidden(after), "merge": hidden(grid[0] * grid[1])}
    parts = {
        "block_before": lambda: run_block(inputs["block_before"]),
        "block_after": lambda: run_block(inputs["block_after"]),
        "merge": lambda: merge(inputs["merge"], grid),
    }
    repeat = len(blocks) if repeat is None else repeat
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}.")
    workloads = {part: _repeated(call, repeat) for part, call in parts.items()}
    flops: dict[str, float] = {}
    with torch.inference_mode():
        for part, call in parts.items():
            counter = flop_counter_mode()
            with counter:
                call()
            flops[part] = float(counter.get_total_flops())
        samples = run_interleaved(workloads, reps=reps, warmup=warmup, clock=clock)
    per_run = [Stats.of([seconds / repeat for seconds in samples[part].seconds]) for part in parts]
    return Anatomy(name, placement.layers[0], len(blocks), batch, before, after, *per_run, *flops.values())
