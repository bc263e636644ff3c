"""Token compressors: LaCo's patch merge and the methods it is compared with, behind one interface.

``build(name, dim=..., factor=...)`` creates any of them; every one accepts ``shortcut=True`` to add LaCo's
non-parametric average-pooling residual.
"""

from .base import TokenCompressor, available, build, compressor_class, register
from .ldp import LDPv2
from .patch_merge import PatchMerge, PixelShuffle
from .pooling import AvgPool
from .tokenpacker import TokenPacker
from .window_merge import WindowAttentionMerge

__all__ = [
    "AvgPool",
    "LDPv2",
    "PatchMerge",
    "PixelShuffle",
    "TokenCompressor",
    "TokenPacker",
    "WindowAttentionMerge",
    "available",
    "build",
    "compressor_class",
    "register",
]
