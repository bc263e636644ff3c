"""Gemma3 (``Gemma3ForConditionalGeneration``): SigLIP at 896 px (64x64 patches), average-pooled ``k x k`` (4x4) by
its projector to ``mm_tokens_per_image`` (256) tokens, then RMSNorm and a linear map; pan-and-scan crops are
further images of the same size.

The projector keeps its geometry as instance attributes set at construction (``patches_per_image``,
``kernel_size``, its ``avg_pool`` module, ``tokens_per_side``); they follow the merge here, on the instance (the
config keeps ``mm_tokens_per_image``, which builds the projector, unchanged):

* ``keep_llm_tokens`` (``auto``): laco's merges do part of the pooling inside the encoder and the projector pools
  ``k / F`` (average pooling composes, so an untrained merge after the last layer differs from the original only by
  the tower's final LayerNorm, applied before the remaining pooling instead of after all of it); counts unchanged.
* ``compress_more``: the projector pools ``k x k`` over the merged grid; the processor's ``image_seq_length`` (and
  its precomputed ``full_image_sequence``) drop ``F**2``-fold.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from transformers import Gemma3ForConditionalGeneration

from ...placement import Placement
from ..base import _pair
from ..changes import Changes
from ..registry import register_adapter
from .base import MllmAdapter, require


@register_adapter
class Gemma3Adapter(MllmAdapter):
    family = "Gemma3"
    model_classes = (Gemma3ForConditionalGeneration,)
    checkpoint_classes = (Gemma3ForConditionalGeneration,)
    own_compression = "the projector's average pooling"

    def own_factor(self, model: nn.Module) -> int:
        vision = model.config.vision_config
        patches = _pair(vision.image_size)[0] // _pair(vision.patch_size)[0]
        return patches // math.isqrt(model.config.mm_tokens_per_image)

    def change_model(self, model: nn.Module, placement: Placement, changes: Changes) -> None:
        projector, rest = model.model.multi_modal_projector, self.remaining_factor(model, placement)
        merged = self.llm_grid(model, placement)[0] * rest
        changes.set(projector, "patches_per_image", merged)
        changes.set(projector, "tokens_per_side", merged // rest)
        changes.set(projector, "kernel_size", rest)
        changes.set(projector, "avg_pool", nn.AvgPool2d(kernel_size=rest, stride=rest))

    def change_processor(self, model: nn.Module, placement: Placement, processor: Any, changes: Changes) -> None:
        require(processor, ("image_seq_length", "full_image_sequence"), self.family)
        count, image_token = self.tokens_per_tile(model, placement), processor.tokenizer.image_token
        old = image_token * processor.image_seq_length
        if processor.full_image_sequence.count(old) != 1:
            raise ValueError(
                f"cannot find {processor.image_seq_length} image tokens in this Gemma3 processor's full_image_sequence; "
                "pass the processor the model was released with."
            )
        changes.set(processor, "full_image_sequence", processor.full_image_sequence.replace(old, image_token * count))
        changes.set(processor, "image_seq_length", count)


__all__ = ["Gemma3Adapter"]
