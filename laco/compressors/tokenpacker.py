"""TokenPacker-style point-to-region cross-attention (single level)."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as F
from ..functional import GridSize
from .base import TokenCompressor, register


@register("tokenpacker")
class TokenPacker(TokenCompressor):
    """Each coarse query (the block's average, a "point") attends only to the ``factor x factor`` tokens of its
    own region, then an MLP maps the result to ``out_dim``.

    The attention is computed for all regions at once as a batched ``(B*N', 1, f*f)`` attention through
    ``scaled_dot_product_attention``; padded slots of border regions are masked out. A learned embedding of
    the ``f*f`` slot positions lets queries tell where inside the region a key lies. The output has no internal
    residual to the pooled query, so ``shortcut=True`` is a clean ablation of LaCo's residual on this method.
    """

    def __init__(self, dim: int, factor: int = 2, *, num_heads: int | None = None, **options) -> None:
        super().__init__(dim, factor, **options)  # out_dim, shortcut, pad: TokenCompressor's
        self.num_heads = num_heads or max(1, dim // 64)
        if dim % self.num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {self.num_heads}; pick a divisor of {dim}.")
        slots = factor * factor
        self.slot_embedding = nn.Parameter(torch.zeros(slots, dim))
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, self.out_dim), nn.GELU(), nn.Linear(self.out_dim, self.out_dim))
        nn.init.trunc_normal_(self.slot_embedding, std=0.02)

    uses_stacked = True
    neighbourhood_wise = True

    def compress(self, x: torch.Tensor, size: GridSize, stacked: torch.Tensor) -> tuple[torch.Tensor, GridSize]:
        batch, dim = stacked.shape[0], self.dim
        slots, heads = self.factor * self.factor, self.num_heads
        new_size = self.output_size(size)
        regions = stacked.reshape(batch, -1, slots, dim)
        points = F.channel_average(stacked, self.factor, size)
        tokens = regions.shape[1]

        q = self.q_proj(self.norm_q(points)).reshape(batch * tokens, 1, heads, dim // heads).transpose(1, 2)
        kv = self.norm_kv(regions + self.slot_embedding)
        k = self.k_proj(kv).reshape(batch * tokens, slots, heads, dim // heads).transpose(1, 2)
        v = self.v_proj(kv).reshape(batch * tokens, slots, heads, dim // heads).transpose(1, 2)
        mask = None
        if size[0] % self.factor or size[1] % self.factor:
            mask = self._real_slots(size, stacked.device).repeat(batch, 1)[:, None, None, :]
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attended = attended.transpose(1, 2).reshape(batch, tokens, dim)
        return self.mlp(self.o_proj(attended)), new_size

    def _real_slots(self, size: GridSize, device: torch.device) -> torch.Tensor:
        """Boolean ``(N', f*f)``: which slots of each region hold a real token rather than padding."""
        ones = torch.ones(1, size[0] * size[1], 1, device=device)
        merged, _ = F.space_to_channel(ones, size, self.factor, self.pad)
        return merged[0] > 0

    def compress_flops(self, size: GridSize, out: GridSize) -> int:
        merged, dim = out[0] * out[1], self.dim
        slots = self.factor * self.factor
        # keys and values are projected for every region slot, padded ones included
        projections = 2 * dim * dim * (2 * merged * slots + 2 * merged)
        attention = 2 * 2 * merged * slots * dim
        mlp = 2 * merged * (dim * self.out_dim + self.out_dim * self.out_dim)
        return projections + attention + mlp
