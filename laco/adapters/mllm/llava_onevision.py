"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP tiles (AnyRes: a base tile and a grid of
crops, unpadded, an ``image_newline`` per row, bilinear down-scaling past ``anyres_max_9``), several images per
prompt (one tile each), and video frames pooled 2x2 bilinearly after the projector.

What follows a merge (``compress_more``, the only mode here):

* the model reshapes each tile's and frame's features with ``vision_config.image_size // vision_config.patch_size``:
  its inner model gets a config view whose ``patch_size`` gives the merged grid (the saved config keeps the real
  one), so AnyRes unpadding, newlines and the video pooling all follow the merged grid;
* the processor counts images and videos from ``num_image_tokens`` (tokens of one tile): it becomes the merged
  tile's count, and its own formulas then give AnyRes images, multi-image prompts and videos
  (``ceil(sqrt(num_image_tokens) / 2) ** 2`` per frame + 1) as the model computes them.

Why no ``keep_llm_tokens`` (moving the video pooling inside the encoder): images have no post-encoder compression
to move, so their count must drop, and the processor derives a video frame's count from the image count; it cannot
keep frames at their old count while tiles get fewer tokens.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration

from ...placement import KEEP, MORE, Placement
from ..base import GridSize
from ..changes import Changes
from ..registry import register_adapter
from .base import require
from .llava import LlavaNextAdapter


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "LLaVA-OneVision"
    model_classes = (LlavaOnevisionForConditionalGeneration,)
    checkpoint_classes = (LlavaOnevisionForConditionalGeneration,)

    def resolve_mode(self, model: nn.Module, placement: Placement) -> str:
        if placement.mode == KEEP:
            raise ValueError(
                "mode='keep_llm_tokens' is not available for LLaVA-OneVision: its images have no post-encoder "
                "compression to move inside the encoder, and its processor counts a video frame's tokens from an "
                "image tile's (ceil(sqrt(num_image_tokens) / 2) ** 2), so frames cannot keep their count while tiles "
                "get fewer. Use mode='compress_more' (or 'auto'): tiles and frames are merged in the encoder and frames "
                "are then pooled 2x2 by the model as before."
            )
        return MORE

    def num_tokens(
        self,
        model: nn.Module,
        placement: Placement,
        image_size: int | GridSize | None = None,
        *,
        video_frames: int | None = None,
    ) -> int:
        """Tokens per image tile (what the processor's ``num_image_tokens`` counts, less a CLS the ``default``
        strategy drops), or of a video of ``video_frames`` frames (pooled frames plus one newline)."""
        tile = super().num_tokens(model, placement, image_size)
        if video_frames is None:
            return tile
        height, width = self.merged_tile_grid(model, placement, image_size)
        return video_frames * math.ceil(height / 2) * math.ceil(width / 2) + 1

    def merged_tile_grid(
        self, model: nn.Module, placement: Placement, image_size: int | GridSize | None = None
    ) -> GridSize:
        if not placement.compressed:
            return self.tile_grid(model, image_size)
        return self.llm_grid(model, placement, image_size)

    def change_processor(self, model: nn.Module, placement: Placement, processor: Any, changes: Changes) -> None:
        require(processor, ("num_image_tokens", "vision_feature_select_strategy"), self.family)
        # The processor subtracts the CLS itself under the "default" strategy, so it counts tiles with it.
        count = self.tokens_per_tile(model, placement) + self.num_prefix_tokens(model)
        changes.set(processor, "num_image_tokens", count)


__all__ = ["LlavaOnevisionAdapter"]
