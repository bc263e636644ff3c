"""LaCo's patch merge with a 2x2 window self-attention in front: the in-encoder merge LLaVA-UHD v4 measured best.

Each ``factor x factor`` window of tokens first attends within itself (a pre-norm multi-head self-attention with a
residual, restricted to the window's ``factor**2`` tokens), then the patch merge folds the window into one token:
``AvgPool(h) + MLP(concat(norm(h_i)))`` with ``h = x + Attn(norm(x))`` computed per window. Initialised from
block ``k`` (``init="ffn_reuse"``), the attention is block ``k``'s own (its norm, projections, heads, softmax
scale and layer scale) and the MLP is block ``k``'s FFN run on each token and averaged
(:meth:`PatchMerge.init_from_ffn`), so on a window of identical tokens the merge computes exactly what block ``k``
computes on that token: it starts as one more pretrained layer, applied at the coarser grid.

The attention needs nothing but the window, so the merge stays neighbourhood-wise: packed towers (Qwen-VL's merge
units are 4 consecutive rows) take it by the same reshape as the plain patch merge. It attends without positions
(every family laco supports adds absolute positions at the input, except Qwen-VL's rotary towers, whose rotation
is not applied inside the window); the MLP sees each slot at its own channels, so the fold keeps the layout.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as F
from ..functional import GridSize
from .base import register
from .patch_merge import Init, PatchMerge, copy_norm

HEAD_WIDTH = 64
"""Head width of the window attention when neither ``num_heads`` nor a block gives the head count."""


def default_heads(dim: int) -> int:
    return dim // HEAD_WIDTH if dim % HEAD_WIDTH == 0 else 1


@register("laco-window")
class WindowAttentionMerge(PatchMerge):
    """Window self-attention, then LaCo's patch merge with a per-token norm (see the module docstring).

    Args beyond :class:`PatchMerge`'s:
        num_heads: heads of the window attention; ``laco.apply`` takes the block's, otherwise ``dim // 64`` (or 1).
        init: ``"zero"`` (default: the attention's output projection and the MLP's last Linear are zero, so the
            untrained merge is exactly average pooling), ``"default"`` (PyTorch's), or ``"ffn_reuse"`` (from the
            block the merge follows: :meth:`init_from_attention` and :meth:`PatchMerge.init_from_ffn`).
            ``"layer"`` is the plain patch merge's tiled init over a normalised window and is refused here.

    ``branch_scale`` scales the MLP branch only; the attention keeps the block's own layer scale. On padded grids
    the attention never reads padded slots; they stay zero for the shortcut and read their nearest real token for
    the MLP (see :meth:`PatchMerge.normalise`).
    """

    token_norm = True

    def __init__(self, dim: int, factor: int = 2, *, num_heads: int | None = None, init: Init = "zero", **options):
        if init == "layer":
            raise ValueError(
                "method 'laco-window' takes init='zero', 'default' or 'ffn_reuse'; init='layer' is the plain patch "
                "merge's tiled MLP init. Use init='ffn_reuse' to start from the block's attention and FFN."
            )
        heads = default_heads(dim) if num_heads is None else num_heads
        if heads < 1 or dim % heads:
            raise ValueError(f"num_heads={num_heads} does not divide the token width {dim}; pick a divisor of {dim}.")
        super().__init__(dim, factor, init=init, **options)
        self.num_heads = heads
        self.scaling = (dim // heads) ** -0.5
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if not hasattr(self, "proj"):  # PatchMerge's constructor calls this before the attention exists
            return
        self.attn_norm.reset_parameters()
        self.qkv.reset_parameters()
        self.proj.reset_parameters()
        if self.init == "zero":
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    @torch.no_grad()
    def init_from_attention(self, parts) -> None:
        """Copy a block's pre-norm self-attention (an :class:`~laco.adapters.base.AttentionParts`), its layer scale
        folded into the output projection."""
        if parts.num_heads != self.num_heads:
            raise ValueError(
                f"the block's attention has {parts.num_heads} heads but this merge was built with num_heads="
                f"{self.num_heads}; leave num_heads unset to take the block's."
            )
        self.attn_norm = copy_norm(parts.norm, self.attn_norm)
        linears = [parts.qkv] if parts.qkv is not None else [parts.q, parts.k, parts.v]
        if any(linear is None for linear in linears) or parts.out.in_features != self.dim:
            raise ValueError("AttentionParts needs a fused qkv or all of q, k and v, of the merge's width.")
        self.qkv.weight.copy_(torch.cat([linear.weight for linear in linears]))
        biases = [
            linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
            for linear in linears
        ]
        self.qkv.bias.copy_(torch.cat(biases))
        scale = parts.scale if parts.scale is not None else torch.ones_like(self.proj.bias)
        self.proj.weight.copy_(parts.out.weight * scale[:, None])
        self.proj.bias.copy_((parts.out.bias if parts.out.bias is not None else torch.zeros_like(scale)) * scale)
        if parts.scaling is not None:
            self.scaling = float(parts.scaling)

    def prepare_windows(self, stacked: torch.Tensor, size: GridSize | None) -> torch.Tensor:
        batch, windows, _ = stacked.shape
        groups, heads = self.factor * self.factor, self.num_heads
        tokens = stacked.reshape(batch * windows, groups, self.dim)
        qkv = self.qkv(self.attn_norm(tokens)).reshape(batch * windows, groups, 3, heads, self.dim // heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        real = None
        if size is not None and (size[0] % self.factor or size[1] % self.factor):
            real = F.real_slots(size, self.factor, stacked.device).repeat(batch, 1)  # (batch * windows, groups)
        mask = None if real is None else real[:, None, None, :]  # padded slots are never attended to
        attended = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scaling)
        hidden = tokens + self.proj(attended.transpose(1, 2).reshape(batch * windows, groups, self.dim))
        if real is not None:
            hidden = hidden * real[..., None].to(hidden.dtype)
        return hidden.reshape(batch, windows, groups * self.dim)

    def compress_flops(self, size: GridSize, out: GridSize) -> int:
        windows, groups = out[0] * out[1], self.factor * self.factor
        projections = 2 * groups * self.dim * 4 * self.dim  # q, k, v and the output projection
        scores = 2 * 2 * groups * groups * self.dim  # q k^T and the weighted sum of v
        return super().compress_flops(size, out) + windows * (projections + scores)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}"
