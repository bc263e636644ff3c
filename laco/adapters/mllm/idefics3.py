"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``): a SigLIP-like
tower over square tiles (a grid of crops plus a global image), padded tiles marked by ``pixel_attention_mask``, and
a connector that pixel-shuffles by ``scale_factor`` (2 for Idefics3, 3 or 4 for SmolVLM) before one bias-free
Linear; ``image_seq_len`` tokens per tile.

The tower has its own encoder adapter (:mod:`laco.adapters.idefics3`: padded tiles).

Modes (``auto`` is ``keep_llm_tokens``):

* ``keep_llm_tokens``: laco's merges take over part of the pixel-shuffle (``scale_factor / F`` is left, set on the
  connector instance) and the projection is fed each merged token repeated ``F x F`` times
  (:class:`~laco.adapters.mllm.connector.Widen`); counts do not change.
* ``compress_more``: laco's merges, then the full pixel-shuffle; ``image_seq_len`` (model and processor) drops
  ``F**2``-fold; a merged tile grid the shuffle cannot divide is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

from ...placement import KEEP, Placement
from ..changes import Changes
from ..registry import register_adapter
from .base import MllmAdapter, require, total_factor
from .connector import Widen


@register_adapter
class Idefics3Adapter(MllmAdapter):
    family = "Idefics3"
    model_classes = (Idefics3ForConditionalGeneration,)
    checkpoint_classes = (Idefics3ForConditionalGeneration,)
    connector_paths = ("model.connector",)
    llm_paths = ("model.text_model", "lm_head")
    tower_path = "model.vision_model"
    own_compression = "the connector's pixel-shuffle"

    def own_factor(self, model: nn.Module) -> int:
        return int(model.config.scale_factor)

    def change_model(self, model: nn.Module, placement: Placement, changes: Changes) -> None:
        changes.set(model.model, "image_seq_len", self.tokens_per_tile(model, placement))
        if placement.mode == KEEP:
            rest, connector = self.remaining_factor(model, placement), model.model.connector
            changes.set(connector, "scale_factor", rest)
            dim = model.config.vision_config.hidden_size
            changes.forward_pre_hook(connector.modality_projection, Widen(dim, rest, total_factor(placement)))

    def count_tiles(self, pixel_values: torch.Tensor) -> int:
        # (batch, images, 3, H, W): all-zero images pad the batch and are dropped by the model
        return int((pixel_values.flatten(-3) != 0).any(-1).sum())

    def change_processor(self, model: nn.Module, placement: Placement, processor: Any, changes: Changes) -> None:
        require(processor, ("image_seq_len",), self.family)
        changes.set(processor, "image_seq_len", self.tokens_per_tile(model, placement))


@register_adapter
class SmolVLMAdapter(Idefics3Adapter):
    family = "SmolVLM"
    model_classes = (SmolVLMForConditionalGeneration,)
    checkpoint_classes = (SmolVLMForConditionalGeneration,)


__all__ = ["Idefics3Adapter", "SmolVLMAdapter"]
