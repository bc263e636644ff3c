"""Idefics3 and SmolVLM vision towers (``Idefics3VisionTransformer``, ``SmolVLMVisionTransformer``): SigLIP-like
blocks over square tiles, padded tiles marked by ``patch_attention_mask``, layers that take the attention mask
positionally.

:class:`PaddedGridLayout` merges the mask with the tokens (a merged token is real if any of the tokens it replaces
is) and gives the layers after a merge the mask of the merged grid, built by ``transformers``' own
``create_bidirectional_mask`` for the tower's attention implementation. Before a merge, padded tokens take the value
of the nearest real token of their row and column, so averages at the edge of the real region count real tokens
only (exactly, for 2x2 merges). The whole models are in :mod:`laco.adapters.mllm.idefics3`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionTransformer
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

from ..compressors import TokenCompressor
from ..placement import Placement
from .base import AttentionParts, EncoderAdapter, MlpParts
from .layout import GridLayout
from .registry import register_adapter


@dataclass(frozen=True, eq=False)
class PaddedGridLayout(GridLayout):
    """A :class:`GridLayout` whose images may be padded: ``mask`` ``(batch, H, W)`` marks real tokens (``None``:
    all real); ``config`` is the tower's, for the attention mask of the merged grid."""

    mask: torch.Tensor | None = None
    config: Any = None

    def after(self, compressor: TokenCompressor) -> PaddedGridLayout:
        grid = compressor.output_size(self.grid)
        mask = self.mask
        if mask is not None:  # a merged token is real if any token it replaces is
            factor = compressor.factor
            pooled = nn.functional.max_pool2d(mask[:, None].float(), factor, factor, ceil_mode=True)
            mask = pooled[:, 0].bool()
        return PaddedGridLayout(grid, self.prefix, mask, self.config)

    def merge(self, hidden: torch.Tensor, compressor: TokenCompressor) -> torch.Tensor:
        if self.mask is not None and not bool(self.mask.all()):
            hidden = self._fill_padding(hidden)
        return super().merge(hidden, compressor)

    def _fill_padding(self, hidden: torch.Tensor) -> torch.Tensor:
        """Padded tokens take the nearest real token's value along rows and columns (the real region is the
        top-left rectangle, as the tower's own position ids assume)."""
        height, width = self.grid
        real_h = self.mask[:, :, 0].sum(1).clamp_min(1)
        real_w = self.mask[:, 0, :].sum(1).clamp_min(1)
        rows = torch.minimum(torch.arange(height, device=hidden.device)[None], real_h[:, None] - 1)
        cols = torch.minimum(torch.arange(width, device=hidden.device)[None], real_w[:, None] - 1)
        index = (rows[:, :, None] * width + cols[:, None, :]).flatten(1)
        return hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))

    def block_call(self, block_index: int, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = self.mask
        if mask is None:
            mask = torch.ones(hidden.shape[0], *self.grid, dtype=torch.bool, device=hidden.device)
        attention = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask.reshape(hidden.shape[0], -1)
        )
        if len(args) > 1:
            return (args[0], attention, *args[2:]), kwargs
        return args, {**kwargs, "attention_mask": attention}


@register_adapter
class Idefics3VisionAdapter(EncoderAdapter):
    """``Idefics3VisionTransformer`` / ``SmolVLMVisionTransformer``: no prefix tokens, padded tiles."""

    family = "idefics3-vision"
    model_classes = (Idefics3VisionTransformer, SmolVLMVisionTransformer)
    blocks_path = "encoder.layers"
    rewrites_block_inputs = True

    def layout(
        self, model: nn.Module, args: tuple, kwargs: dict[str, Any], placement: Placement
    ) -> PaddedGridLayout | None:
        pixel_values = args[0] if args else kwargs.get("pixel_values")
        if not (isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4):
            return None
        mask = args[1] if len(args) > 1 else kwargs.get("patch_attention_mask")
        return PaddedGridLayout(self.grid(model, pixel_values), 0, mask, model.config)

    def fallback_layout(self, model: nn.Module, hidden: torch.Tensor, where: str) -> PaddedGridLayout:
        square = GridLayout.square(hidden.shape[1], 0, where)
        return PaddedGridLayout(square.grid, 0, None, model.config)

    def mlp_parts(self, block: nn.Module) -> MlpParts:
        return MlpParts(block.layer_norm2, block.mlp.fc1, block.mlp.fc2)

    def attention_parts(self, block: nn.Module) -> AttentionParts:
        attn = block.self_attn
        return AttentionParts(
            block.layer_norm1, attn.out_proj, attn.num_heads, attn.q_proj, attn.k_proj, attn.v_proj, scaling=attn.scale
        )


__all__ = ["Idefics3VisionAdapter", "PaddedGridLayout"]
