"""Connectors made 1x (or smaller) for ``keep_llm_tokens``, and the checks that a tile's merged grid fits the model
and that prompts hold as many placeholders as the merged model gives.

A pixel-shuffle connector (InternVL, Idefics3/SmolVLM) concatenates each ``s x s`` block of tokens, token-major
(``dy, dx, c``), and projects ``s*s*C`` channels. When laco's merges (factor ``r`` per side) take over part of that
shuffle, the connector shuffles by ``s / r`` and its projection must take ``(s/r)**2 * C`` channels. Rather than a
new, smaller projection, :class:`Widen` feeds the *pretrained* one: each merged token's channels are repeated
where the ``r x r`` tokens it replaced stood. So

    connector_keep(x) == connector(nearest_upsample(x, r))

exactly: on a block of identical tokens (what an average-pooled input summarises) the connector maps as before.
For InternVL's ``LayerNorm(4C) -> Linear(4C, D)`` (norm weight ``g_i``, bias ``b_i``, linear weight ``W_i`` on block
``i``) this is a 1x connector ``LayerNorm(C)`` (no affine) ``-> Linear(C, D)`` with weight ``sum_i W_i diag(g_i)`` and
bias ``c + sum_i W_i b_i``: a norm's statistics over four copies equal those over one. No tensor changes, so a converted checkpoint keeps every pretrained
tensor, fine-tuning trains the pretrained connector, and :func:`laco.remove` only takes the hook out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...placement import Placement


def widen(x: torch.Tensor, dim: int, side: int, repeat: int) -> torch.Tensor:
    """``(..., side*side*dim)`` token-major blocks -> ``(..., (side*repeat)**2 * dim)``: each of the ``side x side``
    sub-tokens repeated ``repeat x repeat`` times in place (nearest-neighbour up-sampling inside the block)."""
    blocks = x.unflatten(-1, (side, side, dim))
    blocks = blocks.repeat_interleave(repeat, dim=-3).repeat_interleave(repeat, dim=-2)
    return blocks.flatten(-3)


class Widen:
    """Forward pre-hook on a connector's projection: give it the width it was trained on (see module docstring)."""

    def __init__(self, dim: int, side: int, repeat: int) -> None:
        self.dim, self.side, self.repeat = dim, side, repeat

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (widen(args[0], self.dim, self.side, self.repeat), *args[1:])


class TileCheck:
    """Forward pre-hook on the vision tower: refuse, naming the tile size and the fix, a batch of tiles whose merged
    grid the model's own post-encoder compression cannot take (its own code would fail with a bare shape error)."""

    def __init__(self, adapter: Any, model: nn.Module, placement: Placement) -> None:
        self.adapter, self.model, self.placement = adapter, model, placement

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        pixel_values = args[0] if args else kwargs.get("pixel_values")
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
            self.adapter.llm_grid(self.model, self.placement, tuple(pixel_values.shape[-2:]))
        return None


class PlaceholderCheck:
    """Forward pre-hook on a model that gives every tile the same number of tokens: refuse prompts whose image
    placeholders do not match the merged count, naming the prompt and the fix, before the model's own check fails
    with only the totals (typically: a processor laco did not update)."""

    def __init__(self, adapter: Any, model: nn.Module, placement: Placement) -> None:
        self.adapter, self.model, self.placement = adapter, model, placement

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        pixel_values = kwargs.get("pixel_values")
        if not isinstance(input_ids, torch.Tensor) or not isinstance(pixel_values, torch.Tensor):
            return None
        size = tuple(pixel_values.shape[-2:])
        per_tile = self.adapter.num_tokens(self.model, self.placement, size)  # refuses a tile it cannot take
        found = (input_ids == self.model.config.image_token_id).sum(-1).tolist()
        tiles = self.adapter.count_tiles(pixel_values)
        if sum(found) == tiles * per_tile:
            return None
        row = next((i for i, count in enumerate(found) if count % per_tile), None)
        where = (
            f"prompt {row} holds {found[row]} image tokens, not a multiple of {per_tile}; in all, "
            if row is not None
            else ""
        )
        raise ValueError(
            f"{where}the prompts hold {sum(found)} image tokens for {tiles} image tile(s), but after laco's merge "
            f"this {self.adapter.family} gives {per_tile} per tile ({tiles * per_tile}). Were they made by a processor "
            "laco did not update? Pass it to laco.apply(model, ..., processor=processor) and process the prompts "
            "again, or size the placeholders with laco.num_tokens(model)."
        )


__all__ = ["PlaceholderCheck", "TileCheck", "Widen", "widen"]
