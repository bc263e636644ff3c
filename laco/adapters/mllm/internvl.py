"""InternVL (``InternVLForConditionalGeneration``): InternViT per square tile (CLS, dropped by the ``default``
strategy), then pixel-shuffle by ``1 / downsample_ratio`` (2) and a projector ``LayerNorm(4C) -> Linear(4C, D) ->
GELU -> Linear``; ``image_seq_length`` tokens per tile (256 for 448 px tiles).

Modes (``auto`` is ``keep_llm_tokens``):

* ``keep_llm_tokens``: laco's 2x2 merge takes the pixel-shuffle's place. The inner model gets a config view with
  ``downsample_ratio = 1`` (the saved config keeps 0.5, so the projector is rebuilt at 4C), and the projector is fed
  each merged token repeated four times (:class:`~laco.adapters.mllm.connector.Widen`): a 1x connector initialised
  from the pretrained one. Counts do not change.
* ``compress_more``: laco's merge, then the model's pixel-shuffle; ``image_seq_length`` (config and processor) drops
  4x per merge. A tile whose merged grid is odd cannot be shuffled: refused at apply for the configured tile and at
  forward for any other.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import InternVLForConditionalGeneration

from ...placement import KEEP, Placement
from ..changes import Changes
from ..registry import register_adapter
from .base import MllmAdapter, require, total_factor
from .connector import Widen


@register_adapter
class InternVLAdapter(MllmAdapter):
    family = "InternVL"
    model_classes = (InternVLForConditionalGeneration,)
    checkpoint_classes = (InternVLForConditionalGeneration,)
    own_compression = "the pixel-shuffle"

    def feature_layer(self, model: nn.Module) -> int | list[int]:
        return model.config.vision_feature_layer

    def own_factor(self, model: nn.Module) -> int:
        return round(1 / model.config.downsample_ratio)

    def change_model(self, model: nn.Module, placement: Placement, changes: Changes) -> None:
        changes.set(model.config, "image_seq_length", self.tokens_per_tile(model, placement))
        rest = self.remaining_factor(model, placement)
        if placement.mode == KEEP:
            changes.config_view(model.model, downsample_ratio=1 / rest)
            dim = model.config.vision_config.hidden_size
            changes.forward_pre_hook(model.model.multi_modal_projector, Widen(dim, rest, total_factor(placement)))

    def change_processor(self, model: nn.Module, placement: Placement, processor: Any, changes: Changes) -> None:
        require(processor, ("image_seq_length",), self.family)
        changes.set(processor, "image_seq_length", self.tokens_per_tile(model, placement))


__all__ = ["InternVLAdapter"]
