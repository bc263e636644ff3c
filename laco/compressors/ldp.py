"""MobileVLM V2's lightweight downsample projector (LDPv2), at the width of the tokens it compresses."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as F
from ..functional import GridSize
from .base import TokenCompressor, register


@register("ldpv2")
class LDPv2(TokenCompressor):
    """MLP -> ``factor x factor`` average pooling -> depthwise 3x3 convolution added back (a positional
    encoding generator, PEG).

    MobileVLM V2 maps vision width to LLM width in the MLP; here ``out_dim`` (default ``dim``) sets that, so
    the same module works inside the encoder and after it.
    """

    def __init__(self, dim: int, factor: int = 2, **options) -> None:
        super().__init__(dim, factor, **options)  # out_dim, shortcut, pad: TokenCompressor's
        self.mlp = nn.Sequential(nn.Linear(dim, self.out_dim), nn.GELU(), nn.Linear(self.out_dim, self.out_dim))
        self.peg = nn.Conv2d(self.out_dim, self.out_dim, kernel_size=3, padding=1, groups=self.out_dim)

    def compress(self, x: torch.Tensor, size: GridSize, stacked: torch.Tensor | None) -> tuple[torch.Tensor, GridSize]:
        pooled, new_size = F.avg_pool_tokens(self.mlp(x), size, self.factor, self.pad)
        image = F.tokens_to_image(pooled, new_size)
        pooled = pooled + F.image_to_tokens(self.peg(image))[0]
        return pooled, new_size

    def compress_flops(self, size: GridSize, out: GridSize) -> int:
        tokens, merged = size[0] * size[1], out[0] * out[1]
        mlp = 2 * tokens * (self.dim * self.out_dim + self.out_dim * self.out_dim)
        return mlp + tokens * self.out_dim + 2 * merged * self.out_dim * 9
