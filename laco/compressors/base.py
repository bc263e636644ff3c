"""The compressor interface and its registry.

A compressor maps tokens on an ``(H, W)`` grid to fewer tokens on a coarser grid: ``forward(x, size) ->
(y, new_size)``. Every compressor can add LaCo's non-parametric shortcut (``factor x factor`` average pooling
of its input) to its output, so the residual can be ablated on all of them, not only on LaCo's own merge.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from .. import functional as F
from ..functional import GridSize, PadPolicy

_REGISTRY: dict[str, type["TokenCompressor"]] = {}


class TokenCompressor(nn.Module):
    """Base class: validates input, applies the optional shortcut, reports its output grid and cost.

    Subclasses implement :meth:`compress` (the learned or fixed reduction) and :meth:`compress_flops`. Those that
    work on the ``factor x factor`` neighbourhoods set ``uses_stacked``: the stacked layout (:func:`space_to_channel`)
    is then computed once per call and shared with the shortcut, instead of being laid out twice.
    """

    uses_stacked: bool = False
    neighbourhood_wise: bool = False
    """Whether :meth:`compress` maps each ``factor x factor`` neighbourhood on its own, from ``stacked`` alone (never
    reading ``x`` or the grid's arrangement beyond padding): then :meth:`merge_stacked` can merge neighbourhoods that
    a packed layout has already stacked (Qwen-VL's merge units are 4 consecutive tokens), without a grid."""

    def __init__(
        self,
        dim: int,
        factor: int = 2,
        *,
        out_dim: int | None = None,
        shortcut: bool = False,
        pad: PadPolicy = "zero",
    ) -> None:
        super().__init__()
        F.check_factor(factor)
        if pad not in F.PAD_POLICIES:
            raise ValueError(f"unknown pad policy {pad!r}; choose one of {F.PAD_POLICIES}.")
        out_dim = dim if out_dim is None else out_dim
        if shortcut and out_dim != dim:
            raise ValueError(
                f"the average-pooling shortcut has width {dim} but out_dim is {out_dim}; "
                "use shortcut=False, or keep out_dim equal to dim and project afterwards."
            )
        self.dim, self.factor, self.out_dim = dim, factor, out_dim
        self.shortcut, self.pad = shortcut, pad

    def output_size(self, size: GridSize) -> GridSize:
        F._padding(size, self.factor, self.pad)  # raises for pad="error" on indivisible grids
        return F.merged_size(size, self.factor)

    def forward(self, x: torch.Tensor, size: GridSize) -> tuple[torch.Tensor, GridSize]:
        F.check_tokens(x, size)
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} was built for width {self.dim} but got tokens of width {x.shape[-1]}; "
                "build it with dim equal to the encoder's hidden size."
            )
        stacked = F.space_to_channel(x, size, self.factor, self.pad)[0] if self.uses_stacked or self.shortcut else None
        if stacked is not None:
            stacked = self.prepare_windows(stacked, size)
        y, new_size = self.compress(x, size, stacked)
        if self.shortcut:
            y = y + F.channel_average(stacked, self.factor, size)
        return y, new_size

    def merge_stacked(self, stacked: torch.Tensor) -> torch.Tensor:
        """Merge complete (unpadded) neighbourhoods already stacked along channels: ``(B, M, f*f*C) -> (B, M, out)``.

        Only for :attr:`neighbourhood_wise` compressors, whose output for a neighbourhood does not depend on where
        it lies, so the ``M`` neighbourhoods are treated as one unpadded row of them.
        """
        if not self.neighbourhood_wise:
            raise ValueError(
                f"{type(self).__name__} reads the token grid, not neighbourhoods alone; call it on (x, size)."
            )
        groups = self.factor * self.factor
        if stacked.dim() != 3 or stacked.shape[-1] != groups * self.dim:
            raise ValueError(
                f"expected stacked neighbourhoods of shape (batch, M, {groups} * {self.dim}), got {tuple(stacked.shape)}."
            )
        stacked = self.prepare_windows(stacked, None)
        y, _ = self.compress(None, (self.factor, self.factor * stacked.shape[1]), stacked)
        if self.shortcut:
            y = y + F.channel_average(stacked, self.factor)
        return y

    def prepare_windows(self, stacked: torch.Tensor, size: GridSize | None) -> torch.Tensor:
        """A step on each stacked ``factor x factor`` window before both the merge and the shortcut read it (the
        window attention of ``"laco-window"``); the identity here. ``size`` is the unpadded grid (``None``: no
        window is padded)."""
        return stacked

    def compress(self, x: torch.Tensor, size: GridSize, stacked: torch.Tensor | None) -> tuple[torch.Tensor, GridSize]:
        """Reduce ``x`` on grid ``size``; ``stacked`` is ``space_to_channel(x)`` (each ``factor x factor``
        neighbourhood stacked along channels) when :attr:`uses_stacked` is set."""
        raise NotImplementedError

    def flops(self, size: GridSize, batch: int = 1) -> int:
        """Forward FLOPs (multiply-add = 2) on one grid of ``size``, shortcut included."""
        out = self.output_size(size)
        shortcut = size[0] * size[1] * self.dim if self.shortcut else 0
        return batch * (self.compress_flops(size, out) + shortcut)

    def compress_flops(self, size: GridSize, out: GridSize) -> int:
        return 0

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, factor={self.factor}, out_dim={self.out_dim}, shortcut={self.shortcut}, pad={self.pad!r}"
        )


def register(name: str) -> Callable[[type[TokenCompressor]], type[TokenCompressor]]:
    """Class decorator that makes a compressor available to :func:`build` under ``name``."""

    def decorator(cls: type[TokenCompressor]) -> type[TokenCompressor]:
        if name in _REGISTRY:
            raise ValueError(f"a compressor named {name!r} is already registered ({_REGISTRY[name].__name__}).")
        _REGISTRY[name] = cls
        cls.method_name = name
        return cls

    return decorator


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(_REGISTRY)


def compressor_class(name: str) -> type[TokenCompressor]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown compression method {name!r}; choose one of {available()}.") from None


def check_options(name: str, options: dict) -> None:
    """Refuse, by name, options the compressor registered as ``name`` does not take (before any model is loaded)."""
    cls = compressor_class(name)
    accepted = {
        p.name
        for klass in cls.__mro__
        if issubclass(klass, TokenCompressor)
        for p in inspect.signature(klass.__init__).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"compressor {name!r} does not take option(s) {unknown}; it accepts {sorted(accepted)}.")


def build(name: str, dim: int, factor: int = 2, **options) -> TokenCompressor:
    """Build the compressor registered as ``name`` for tokens of width ``dim``.

    >>> build("laco", dim=768, factor=2)             # LaCo's patch merge with the shortcut
    >>> build("ldpv2", dim=768, shortcut=True)       # a baseline given the same residual
    """
    check_options(name, options)
    cls = compressor_class(name)
    return cls(dim, factor, **options)
