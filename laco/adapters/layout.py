"""Token layouts: where the image tokens of one forward call lie in the hidden states an encoder's blocks pass on.

An adapter builds a layout from the encoder's inputs (:meth:`EncoderAdapter.layout`); laco's hooks then ask it
to merge the tokens after a block (:meth:`TokenLayout.merge`) and what the blocks after that merge must receive
instead of what the encoder computed for the full grid (:meth:`TokenLayout.block_inputs`). A layout is derived
from the input alone, never carried over from the previous call, so recomputation under gradient checkpointing
sees the same layouts.

:class:`GridLayout` is the layout of every ViT that batches images: ``(batch, prefix + H * W, C)`` with prefix
tokens (CLS, registers) first and grid tokens in row-major order. Packed layouts (Qwen-VL's variable-resolution
sequences) live with their adapters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import functional as F
from ..compressors import TokenCompressor
from ..functional import GridSize


class TokenLayout:
    """Where the tokens of one forward call are; subclasses implement the four methods below."""

    def after(self, compressor: TokenCompressor) -> TokenLayout:
        """The layout once ``compressor`` has merged these tokens (shapes only, no tensors)."""
        raise NotImplementedError

    def merge(self, hidden: torch.Tensor, compressor: TokenCompressor) -> torch.Tensor:
        """Merge the image tokens of ``hidden`` with ``compressor``; other tokens pass through unchanged."""
        raise NotImplementedError

    def check(self, hidden: torch.Tensor, where: str) -> None:
        """Raise a clear error if ``hidden`` does not hold the tokens this layout describes."""

    def encoder_inputs(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        """Arguments the encoder itself must receive instead of ``(args, kwargs)``, or ``None`` to leave them.

        A packed layout hands the encoder index tensors it computed anyway (rotary positions, window order), so
        the encoder does not compute them twice, and so they stay right where the adapter changed an attribute
        they are derived from (Qwen-VL's ``spatial_merge_size`` in ``compress_more`` mode)."""
        return None

    def block_inputs(self, block_index: int, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """Keyword arguments block ``block_index`` (0-based) must receive on these tokens instead of ``kwargs``,
        or ``None`` when the block needs nothing but the tokens (every batched ViT)."""
        return None

    def block_call(self, block_index: int, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        """The ``(args, kwargs)`` block ``block_index`` (0-based) must be called with on these tokens, or ``None`` to
        keep the call as it is. Only keyword arguments change by default (:meth:`block_inputs`); a layout overrides
        this for blocks that take what changes positionally (Idefics3's attention mask)."""
        replaced = self.block_inputs(block_index, kwargs)
        return None if replaced is None else (args, replaced)

    def num_tokens(self, include_prefix: bool = True) -> int:
        """Tokens per image (or per frame) in this layout."""
        raise NotImplementedError


@dataclass(frozen=True)
class GridLayout(TokenLayout):
    """``(batch, prefix + H * W, C)``: ``prefix`` leading tokens that bypass merges, then a row-major grid."""

    grid: GridSize
    prefix: int = 0

    def after(self, compressor: TokenCompressor) -> GridLayout:
        return GridLayout(compressor.output_size(self.grid), self.prefix)

    def merge(self, hidden: torch.Tensor, compressor: TokenCompressor) -> torch.Tensor:
        prefix, tokens = F.split_prefix(hidden, self.prefix)
        merged, _ = compressor(tokens, self.grid)
        return torch.cat([prefix, merged], dim=1) if self.prefix else merged

    def check(self, hidden: torch.Tensor, where: str) -> None:
        grid_tokens = hidden.shape[1] - self.prefix
        if grid_tokens != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"{where} produced {grid_tokens} grid tokens (after {self.prefix} prefix tokens) but the input grid "
                f"gives {self.grid[0]}x{self.grid[1]} here; is num_prefix_tokens right for this encoder?"
            )

    def num_tokens(self, include_prefix: bool = True) -> int:
        return self.grid[0] * self.grid[1] + (self.prefix if include_prefix else 0)

    @classmethod
    def square(cls, tokens: int, prefix: int, where: str) -> GridLayout:
        """The only grid that can be inferred from a token count alone (no ``pixel_values`` seen)."""
        grid_tokens = tokens - prefix
        side = math.isqrt(max(grid_tokens, 0))
        if grid_tokens < 1 or side * side != grid_tokens:
            raise ValueError(
                f"cannot infer the grid of {grid_tokens} tokens at {where}: call the encoder with pixel_values, "
                "or describe it with laco.apply(..., grid=(H, W))."
            )
        return cls((side, side), prefix)


__all__ = ["GridLayout", "TokenLayout"]
