"""LLaVA (``LlavaForConditionalGeneration``, laco's own ``LacoLlavaForConditionalGeneration``) and LLaVA-NeXT
(``LlavaNextForConditionalGeneration``): a CLIP/SigLIP tower, hidden states read at ``vision_feature_layer``, CLS
dropped by the ``default`` strategy, a projector, no post-encoder compression (``compress_more`` only).

What follows a merge:

* counts: ``merged grid + prefix tokens - 1 if vision_feature_select_strategy == "default"`` per image (tile);
  ``config.image_seq_length`` says so;
* the stock processors count ``(size // patch_size) ** 2 + num_additional_image_tokens``: their ``patch_size`` becomes
  one that divides the tile into the merged grid (``patch_size * factor`` on even grids);
  LLaVA-NeXT counts AnyRes tiles, unpadding and newlines from the same per-tile grid, so that one value suffices;
* LLaVA-NeXT's model reshapes each tile's features with ``vision_config.image_size // vision_config.patch_size``: its
  inner model gets a config view whose ``patch_size`` gives the merged grid (the saved config keeps the real one);
* merges after a feature layer the LLM reads are refused (they would be skipped, or break a list of layers).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from ...placement import Placement
from ..base import GridSize, _pair
from ..changes import Changes
from ..registry import register_adapter
from .base import MllmAdapter, patch_size_for, require, total_factor


@register_adapter
class LlavaAdapter(MllmAdapter):
    family = "LLaVA"
    model_classes = (LlavaForConditionalGeneration,)
    checkpoint_classes = (LlavaForConditionalGeneration,)

    def feature_layer(self, model: nn.Module) -> int | list[int]:
        return model.config.vision_feature_layer

    def dropped_tokens(self, model: nn.Module) -> int:
        """Tokens the feature selection drops per tile (LLaVA's ``default`` strategy drops the first, the CLS)."""
        return 1 if model.config.vision_feature_select_strategy == "default" else 0

    def num_tokens(
        self, model: nn.Module, placement: Placement, image_size: int | GridSize | None = None, **inputs: Any
    ) -> int:
        """Tokens the LLM receives per image (per tile for LLaVA-NeXT), CLS handling included."""
        if inputs:
            raise ValueError(f"laco.num_tokens of a {self.family} takes image_size only, not {sorted(inputs)}.")
        tile = self.tokens_per_tile(model, placement, image_size)
        return tile + self.num_prefix_tokens(model) - self.dropped_tokens(model)

    def change_model(self, model: nn.Module, placement: Placement, changes: Changes) -> None:
        if hasattr(model.config, "image_seq_length"):
            changes.set(model.config, "image_seq_length", self.num_tokens(model, placement))

    def merged_patch_size(self, model: nn.Module, placement: Placement) -> int:
        """A patch size that divides the tower's tile into the merged grid (the count stock code computes)."""
        tower, adapter = self.encoder(model)
        (size, _), (patch, _) = adapter.default_image_size(tower), adapter.patch_size(tower)
        grid, patch = self.llm_grid(model, placement)[0], patch * total_factor(placement)
        return patch if size // patch == grid else patch_size_for(size, grid)

    def change_processor(self, model: nn.Module, placement: Placement, processor: Any, changes: Changes) -> None:
        if hasattr(processor, "num_image_tokens") and not hasattr(processor, "patch_size"):  # laco's LacoProcessor
            size = processor.image_transform.size
            changes.set(processor, "num_image_tokens", self.num_tokens(model, placement, size))
            return
        require(processor, ("patch_size", "num_additional_image_tokens"), self.family)
        tower, adapter = self.encoder(model)
        height, width = adapter.default_image_size(tower)
        patch = self.merged_patch_size(model, placement)
        # Odd grids are padded by the merge (ceil) but a processor floors: the difference goes into the count of
        # additional tokens, exact at the size the image processor produces (the tower's image_size).
        merged = self.tokens_per_tile(model, placement)
        extra = processor.num_additional_image_tokens + merged - (height // patch) * (width // patch)
        changes.set(processor, "patch_size", patch)
        changes.set(processor, "num_additional_image_tokens", extra)


@register_adapter
class LlavaNextAdapter(LlavaAdapter):
    family = "LLaVA-NeXT"
    model_classes = (LlavaNextForConditionalGeneration,)
    checkpoint_classes = (LlavaNextForConditionalGeneration,)
    fixed_tile_count = False  # unpadding: an image's count depends on its size
    connector_paths = ("model.multi_modal_projector", "model.image_newline")  # the row-end embedding is learned

    def check(self, model: nn.Module, placement: Placement) -> None:
        super().check(model, placement)
        height, width = _pair(model.config.vision_config.image_size)
        if height != width:
            raise ValueError(f"{self.family} needs square tiles; vision_config.image_size is {height}x{width}.")

    def change_model(self, model: nn.Module, placement: Placement, changes: Changes) -> None:
        super().change_model(model, placement, changes)
        changes.config_view(model.model, vision={"patch_size": self.merged_patch_size(model, placement)})

    def change_processor(self, model: nn.Module, placement: Placement, processor: Any, changes: Changes) -> None:
        require(processor, ("patch_size",), self.family)
        changes.set(processor, "patch_size", self.merged_patch_size(model, placement))


__all__ = ["LlavaAdapter", "LlavaNextAdapter"]
