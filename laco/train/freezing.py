"""Which parameters a training stage updates (LLaVA-style stages: connector first, then the LLM)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .. import patch as laco_patch
from ..adapters import resolve_encoder
from ..config import TRAINABLE_PARTS


def part_parameters(model: nn.Module, part: str) -> list[nn.Parameter]:
    """The parameters of one named part of a :class:`~laco.mllm.LacoLlavaForConditionalGeneration`."""
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
        placement = laco_patch.placement_of(tower)
        if placement is None:
            return []  # nothing follows a merge that is not there: the same recipe runs uncompressed baselines
        _, adapter = resolve_encoder(tower)
        blocks = adapter.blocks(tower)
        after = [p for block in blocks[min(placement.layers) :] for p in block.parameters()]
        # the final norm after the blocks belongs to the part of the tower the merge feeds
        tail = [p for name, p in tower.named_parameters(recurse=True) if not name.startswith(("embeddings", "encoder"))]
        return after + tail
    raise ValueError(f"unknown trainable part {part!r}; choose from {TRAINABLE_PARTS}.")


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
