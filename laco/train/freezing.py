"""Which parameters a training stage updates (LLaVA-style stages: connector first, then the LLM), in every family."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .. import patch as laco_patch
from ..adapters import find_model_adapter, resolve_encoder
from ..adapters.mllm.base import read_layers
from ..config import TRAINABLE_PARTS, VISION_PARTS, StageConfig


def part_parameters(model: nn.Module, part: str) -> list[nn.Parameter]:
    """The parameters of one named part of a LaCo MLLM: laco's LLaVA (assembled, or loaded from a converted LLaVA
    checkpoint) or any family's converted model. Where each family keeps its connector and LLM is data on its
    whole-model adapter (``connector_paths``, ``llm_paths``); ``projector`` and ``merger`` both name the connector
    (Qwen-VL's is the tower's merger)."""
    adapter = find_model_adapter(model)
    if adapter is None:
        raise ValueError(
            f"laco has no whole-model adapter for {type(model).__name__}, so it cannot tell its parts apart; train a "
            "model of a family laco.apply supports."
        )
    tower, _ = adapter.encoder(model)
    if part == "compressor":
        return [p for c in laco_patch.compressors(tower) for p in c.parameters()]
    if part in ("projector", "merger"):
        return _unique(_at_paths(model, adapter.connector_paths, part))
    if part == "llm":
        return _unique(_at_paths(model, adapter.llm_paths, part))
    if part == "vision":
        return list(tower.parameters())
    if part == "vision_after_merge":
        return _after_merge(model, tower)
    raise ValueError(f"unknown trainable part {part!r}; choose from {TRAINABLE_PARTS}.")


def _at_paths(model: nn.Module, paths: Iterable[str], part: str) -> list[nn.Parameter]:
    """Every parameter of the submodules (or the parameters themselves) at ``paths``; paths the model lacks (a
    Qwen3-VL-only DeepStack merger on Qwen2-VL) are skipped, but one must be there."""
    found: list[nn.Parameter] = []
    for path in paths:
        try:
            found += list(model.get_submodule(path).parameters())
        except AttributeError:
            try:
                found.append(model.get_parameter(path))
            except AttributeError:
                continue
    if not found:
        raise ValueError(
            f"{type(model).__name__} has none of {list(paths)}, where its adapter says the {part!r} part is; the "
            "model's layout differs from the family's (fix the adapter's connector_paths / llm_paths)."
        )
    return found


def _unique(parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    """Once each: a tied LM head shares the embedding's parameter."""
    return list({id(p): p for p in parameters}.values())


def _after_merge(model: nn.Module, tower: nn.Module) -> list[nn.Parameter]:
    """The encoder blocks between the first merge and the deepest layer the LLM reads.

    LLaVA reads ``hidden_states[vision_feature_layer]``: blocks past that layer, and the tower's final norm (which
    hidden states come before), never reach the LLM. They would get no gradient, and DDP, which expects every
    trainable parameter to get one, would stop; so they are not part of it. Families without a feature layer
    (Qwen-VL, Idefics3, Gemma3) read the tower's last block.
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
