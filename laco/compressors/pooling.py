"""Parameter-free average pooling: the floor every learned compressor should beat."""

from __future__ import annotations

import torch

from .. import functional as F
from ..functional import GridSize, PadPolicy
from .base import TokenCompressor, register


@register("avgpool")
class AvgPool(TokenCompressor):
    """``factor x factor`` average pooling of grid tokens (real tokens only on padded borders).

    Its ``shortcut`` option exists for a uniform interface; it would add the same pooling twice, so it is off.
    """

    def __init__(self, dim: int, factor: int = 2, *, pad: PadPolicy = "zero", shortcut: bool = False) -> None:
        if shortcut:
            raise ValueError(
                "avgpool is the shortcut itself; adding it again only doubles the output. Use shortcut=False."
            )
        super().__init__(dim, factor, shortcut=False, pad=pad)

    uses_stacked = True
    neighbourhood_wise = True

    def compress(self, x: torch.Tensor, size: GridSize, stacked: torch.Tensor) -> tuple[torch.Tensor, GridSize]:
        return F.channel_average(stacked, self.factor, size), self.output_size(size)

    def compress_flops(self, size: GridSize, out: GridSize) -> int:
        return size[0] * size[1] * self.dim
