"""Which parameters a training stage updates (LLaVA-style stages: connector first, then the LLM)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .. import patch as laco_patch
from ..adapters import resolve_encoder
from ..adapters.mllm.base import read_layers
from ..config import TRAINABLE_PARTS, VISION_PARTS, StageConfig


def part_parameters(model: nn.Module, part: str) -> list[nn.Parameter]:
    """The parameters of one named part of a :class:`~laco.mllm.LacoLlavaForConditionalGeneration` (assembled by
    laco, or loaded from a converted LLaVA checkpoint: the same module layout)."""
    tower = model.model.vision_tower
    if part == "compressor":
        return [p for c in laco_patch.compressors(tower) for p in c.parameters()]
    if part == "projector":
        return list(model.model.multi_modal_projector.parameters())
    if part == "llm":
        language = list(model.model.language_model.parameters())
        seen = {id(p) for p in language}
        return language + [p for p in model.lm_head.parameters() if id(p) not in seen]
    if part == "vision":
        return list(tower.parameters())
    if part == "vision_after_merge":
        return _after_merge(model, tower)
    raise ValueError(f"unknown trainable part {part!r}; choose from {TRAINABLE_PARTS}.")


def _after_merge(model: nn.Module, tower: nn.Module) -> list[nn.Parameter]:
    """The encoder blocks between the first merge and the deepest layer the LLM reads.

    LLaVA reads ``hidden_states[vision_feature_layer]``: blocks past that layer, and the tower's final norm (which
    hidden states come before), never reach the LLM. They would get no gradient, and DDP, which expects every
    trainable parameter to get one, would stop; so they are not part of it.
    """
    placement = laco_patch.placement_of(tower)
    if placement is None:
        return []  # nothing follows a merge that is not there: the same recipe runs uncompressed baselines
    encoder, adapter = resolve_encoder(tower)
    blocks = adapter.blocks(encoder)
    read = max(read_layers(getattr(model.config, "vision_feature_layer", -1), len(blocks)))
    return [p for block in blocks[min(placement.layers) : read] for p in block.parameters()]


def set_trainable(model: nn.Module, parts: Iterable[str]) -> dict[str, int]:
    """Freeze everything, then unfreeze ``parts``. Returns trainable parameter counts per part."""
    model.requires_grad_(False)
    counts = {}
    for part in parts:
        parameters = part_parameters(model, part)
        for parameter in parameters:
            parameter.requires_grad_(True)
        counts[part] = sum(p.numel() for p in parameters)
    return counts


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared (tied) parameters counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def stage_part_rates(stage: StageConfig) -> dict[str, float]:
    """The stage's per-part learning rates: ``part_learning_rates``, and for the vision parts it trains that are not
    named there, ``learning_rate * vision_learning_rate_scale`` (nothing added at the default scale of 1)."""
    rates = dict(stage.part_learning_rates)
    if stage.vision_learning_rate_scale != 1.0:
        for part in VISION_PARTS:
            if part in stage.trainable and part not in rates:
                rates[part] = stage.learning_rate * stage.vision_learning_rate_scale
    return rates
