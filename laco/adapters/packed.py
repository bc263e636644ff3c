"""Packed token layouts: native-resolution towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) put every image and video frame
of a call into one ``(tokens, C)`` sequence described by ``grid_thw`` (one ``(t, h, w)`` row per image or video).

Token order, as the image processor emits it: frame after frame, and inside a frame *merge-unit order*: every
``m x m`` block of patches (``m`` = ``spatial_merge_size``, 2) is ``m*m`` consecutive rows, blocks row-major.
Qwen2.5-VL then permutes whole merge units into window order before its blocks (``window_index``).

LaCo's merge with factor ``m`` turns each merge unit into one token, so its four rows are already the stacked
``(dy, dx, c)`` neighbourhood the compressors take: for neighbourhood-wise compressors (LaCo's patch merge,
average pooling, TokenPacker) the merge is a reshape, whatever the window order (the *fast path*). Compressors that
read the grid (LDPv2's convolutions) take the general path: each frame's tokens gathered to row-major, frames of
equal size batched through the compressor, merged tokens scattered to the order the later blocks expect.

After the merge, tokens are laid out as the post-encoder merger needs them:

* ``keep_llm_tokens``: one token per merge unit, in the input's unit order (window order for Qwen2.5-VL), so a
  1x final merger and the model's own un-permutation (``argsort(window_index)``) give the LLM its usual tokens;
* ``compress_more``: the merged grid is itself laid out in merge-unit order (each 2x2 block of merged tokens
  consecutive, then Qwen2.5-VL's window order of those blocks), so the pretrained merger merges it once more.

What later blocks receive (:meth:`PackedLayout.block_inputs`): ``cu_seqlens`` / ``max_seqlen`` per frame of the
merged grid, rotary embeddings at the merged tokens' *block indices* (merged token ``(i, j)`` sits at position
``(i, j)``: the merged grid is seen as an image of half the resolution, the same positions the LLM's M-RoPE gives
the merger's tokens), and for Qwen2.5-VL's windowed blocks the windows of the same image regions (112 px: a merge
never crosses a window, so every window keeps its tokens, 4x fewer of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from ..compressors import TokenCompressor
from ..placement import KEEP, MORE
from .layout import TokenLayout


@dataclass(frozen=True)
class Windows:
    """Qwen2.5-VL's window attention: square windows of ``size`` pixels over ``patch``-pixel patches; blocks in
    ``full_blocks`` (0-based) attend across the whole frame."""

    size: int
    patch: int
    full_blocks: frozenset[int]


def _grid_rows(grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
    return [(int(t), int(h), int(w)) for t, h, w in grid_thw.tolist()]


def check_grid_thw(grid_thw: Any, merge: int, tokens: int | None, mode: str, patch: int) -> torch.Tensor:
    """``grid_thw`` as a long tensor, or a clear error naming the image and its grid (and the fix)."""
    if not isinstance(grid_thw, torch.Tensor) or grid_thw.dim() != 2 or grid_thw.shape[-1] != 3:
        shape = tuple(grid_thw.shape) if isinstance(grid_thw, torch.Tensor) else type(grid_thw).__name__
        raise ValueError(
            f"grid_thw must be an integer tensor of shape (images, 3), one (t, h, w) row per image or video as the "
            f"processor returns it (image_grid_thw / video_grid_thw); got {shape}."
        )
    if grid_thw.is_floating_point() or grid_thw.is_complex() or len(grid_thw) == 0:
        raise ValueError(f"grid_thw must hold at least one row of integers, got dtype {grid_thw.dtype}, {grid_thw}.")
    unit = merge * 2 if mode == MORE else merge
    for index, (t, h, w) in enumerate(_grid_rows(grid_thw)):
        if min(t, h, w) < 1 or h % merge or w % merge:
            raise ValueError(
                f"image {index} has grid_thw {[t, h, w]}: t, h, w must be >= 1 and h, w multiples of the "
                f"spatial merge size {merge} (the processor's merge-unit order); pass the processor's grid_thw."
            )
        if h % unit or w % unit:
            raise ValueError(
                f"image {index} has grid_thw {[t, h, w]}, a {h // merge}x{w // merge} grid of merge units, which "
                f"compress_more cannot merge 2x2 once more (the LLM's placeholder counts and M-RoPE positions need "
                f"whole blocks). Resize images to multiples of {patch * unit} px on each side (e.g. "
                f"{patch * unit * 8}x{patch * unit * 8}), or use mode='keep_llm_tokens', which takes any grid."
            )
    if tokens is not None:
        expected = int(grid_thw.prod(-1).sum())
        if expected != tokens:
            raise ValueError(
                f"grid_thw {grid_thw.tolist()} describes {expected} patches but the tower got {tokens} rows of "
                "pixel values; pass the grid_thw the processor returned with these pixel values."
            )
    return grid_thw.long()


class PackedGrids:
    """The grids of one forward call and every index tensor its layouts need, each computed once when first
    asked for (the input layout and the merged layout of the call share one instance)."""

    def __init__(self, grid_thw: torch.Tensor, merge: int, mode: str, windows: Windows | None) -> None:
        self.grid_thw, self.merge, self.mode, self.windows = grid_thw, merge, mode, windows
        self.rows = _grid_rows(grid_thw)
        self.device = grid_thw.device
        self.group = merge * merge
        self.tokens = sum(t * h * w for t, h, w in self.rows)
        self.units = self.tokens // self.group
        self.max_seqlens: dict[str, int] = {}
        self.rotary: tuple[torch.Tensor, torch.Tensor] | None = None

    def _arange(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device)

    def _frames(self):
        """``(t, units_h, units_w, first unit)`` per image."""
        base = 0
        for t, h, w in self.rows:
            units_h, units_w = h // self.merge, w // self.merge
            yield t, units_h, units_w, base
            base += t * units_h * units_w

    # -- the input, as the model orders it ---------------------------------------------------------------------

    @cached_property
    def position_ids(self) -> torch.Tensor:
        """Rotary (h, w) of every input token, in merge-unit order: the model's own helper."""
        return get_vision_position_ids(self.grid_thw, self.merge)

    @cached_property
    def window_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen2.5-VL's ``(window_index, cu_window_seqlens)`` of the input: the model's own helper."""
        w = self.windows
        return get_vision_window_index(self.grid_thw, self.merge, w.size, w.patch)

    @cached_property
    def input_units(self) -> torch.Tensor | None:
        """The merge unit at each group of ``merge**2`` input rows (``None``: unit order itself)."""
        return None if self.windows is None else self.window_index[0].to(self.device)

    @cached_property
    def unit_rows(self) -> torch.Tensor:
        """Where each merge unit's group of rows lies in the input (inverse of :attr:`input_units`)."""
        units = self.input_units
        return self._arange(self.units) if units is None else torch.argsort(units)

    # -- after the merge -------------------------------------------------------------------------------------------

    @cached_property
    def unit_positions(self) -> torch.Tensor:
        """``(units, 2)``: the (i, j) block index of every merge unit in its frame, in unit order."""
        parts = []
        for t, units_h, units_w, _ in self._frames():
            local = self._arange(units_h * units_w)
            parts.append(torch.stack([local // units_w, local % units_w], dim=-1).repeat(t, 1))
        return torch.cat(parts)

    @cached_property
    def blocks_of_units(self) -> torch.Tensor:
        """Merge units in ``compress_more`` block order: each ``merge x merge`` block of units (what the final merger
        merges) consecutive, blocks row-major."""
        parts, m = [], self.merge
        for t, units_h, units_w, base in self._frames():
            local = self._arange(units_h * units_w).reshape(units_h // m, m, units_w // m, m)
            local = local.permute(0, 2, 1, 3).reshape(-1)
            parts.extend(local + base + frame * units_h * units_w for frame in range(t))
        return torch.cat(parts)

    @cached_property
    def merged_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``compress_more`` in a windowed tower: (window order of the 2x2 blocks, cu_window_seqlens in merged
        tokens), the model's own helper on the merged grid (merged tokens are ``merge * patch`` px patches)."""
        w = self.windows
        merged = self.grid_thw.clone()
        merged[:, 1:] //= self.merge
        return get_vision_window_index(merged, self.merge, w.size, w.patch * self.merge)

    @cached_property
    def merged_units(self) -> torch.Tensor:
        """The merge unit each merged token comes from, in the order later blocks and the final merger take."""
        if self.mode == KEEP:
            return self._arange(self.units) if self.input_units is None else self.input_units
        blocks = self.blocks_of_units
        if self.windows is None:
            return blocks
        return blocks.view(-1, self.group)[self.merged_windows[0].to(self.device)].reshape(-1)

    @cached_property
    def fast_order(self) -> torch.Tensor | None:
        """Gather from the fast path's output (input unit order) to :attr:`merged_units` (``None``: the same)."""
        if self.mode == KEEP:
            return None
        return self.unit_rows[self.merged_units]

    @cached_property
    def cu_seqlens(self) -> torch.Tensor:
        lengths = [units_h * units_w for t, units_h, units_w, _ in self._frames() for _ in range(t)]
        cumulative = torch.tensor([0, *lengths], device=self.device).cumsum(0)
        return cumulative.to(torch.int32)

    @cached_property
    def cu_window_seqlens(self) -> torch.Tensor:
        if self.mode == KEEP:  # the same windows as the input, merge units now single tokens
            return torch.div(self.window_index[1], self.group, rounding_mode="floor").to(self.device)
        return self.merged_windows[1].to(self.device)

    @cached_property
    def output_order(self) -> torch.Tensor:
        """``compress_more`` in a windowed tower: the final merger's outputs (blocks in window order) to row-major."""
        return torch.argsort(self.merged_windows[0].to(self.device))

    @cached_property
    def rows_to_blocks(self) -> torch.Tensor:
        """Gather from per-unit rows in the input's unit order to :attr:`blocks_of_units` (DeepStack taps that
        precede the merge, pooled 2x2 in ``compress_more``)."""
        return self.unit_rows[self.blocks_of_units]

    def max_seqlen(self, key: str, cu_seqlens: torch.Tensor) -> int:
        if key not in self.max_seqlens:  # one device sync per call, and only for FlashAttention
            self.max_seqlens[key] = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        return self.max_seqlens[key]

    # -- the general path -----------------------------------------------------------------------------------------

    @cached_property
    def rowmajor_groups(self) -> list[tuple[tuple[int, int], torch.Tensor, torch.Tensor]]:
        """Frames grouped by size: ``((h, w), input rows (frames, h*w) in row-major patch order, merged units
        (frames, h*w / merge**2) in row-major order of the merged grid)``."""
        m, groups = self.merge, {}
        for (t, h, w), (_, units_h, units_w, base) in zip(self.rows, self._frames()):
            y, x = torch.meshgrid(self._arange(h), self._arange(w), indexing="ij")
            local_unit = ((y // m) * units_w + x // m).reshape(-1)
            sub = ((y % m) * m + x % m).reshape(-1)
            for frame in range(t):
                unit = local_unit + base + frame * units_h * units_w
                rows = self.unit_rows[unit] * self.group + sub
                merged = self._arange(units_h * units_w) + base + frame * units_h * units_w
                groups.setdefault((h, w), []).append((rows, merged))
        return [(size, torch.stack([r for r, _ in f]), torch.stack([u for _, u in f])) for size, f in groups.items()]


class PackedLayout(TokenLayout):
    """The tokens of one call of a packed tower: the input (``merged=False``) or after LaCo's merge.

    Args:
        grids: the call's :class:`PackedGrids`.
        rotary: the tower's rotary module (``rotary(x, position_ids) -> (cos, sin)``), for the merged tokens.
        merged: whether the merge has run.
    """

    def __init__(self, grids: PackedGrids, rotary: nn.Module, merged: bool = False) -> None:
        self.grids, self.rotary, self.merged = grids, rotary, merged
        self._after: PackedLayout | None = None

    def num_tokens(self, include_prefix: bool = True) -> int:
        return self.grids.units if self.merged else self.grids.tokens

    def check(self, hidden: torch.Tensor, where: str) -> None:
        expected = self.num_tokens()
        if hidden.dim() != 2 or hidden.shape[0] != expected:
            raise ValueError(
                f"{where} produced hidden states of shape {tuple(hidden.shape)}, but the call's grid_thw "
                f"{self.grids.grid_thw.tolist()} gives {expected} packed tokens here."
            )

    def after(self, compressor: TokenCompressor) -> PackedLayout:
        if self.merged:
            raise ValueError("a packed tower takes one merge (LaCo's, at one layer); give the placement one layer.")
        if compressor.factor != self.grids.merge:
            raise ValueError(
                f"a packed tower merges whole merge units: factor must be the spatial merge size {self.grids.merge}, "
                f"got {compressor.factor}."
            )
        if self._after is None:  # every later block asks; one layout (and one set of indices) per call
            self._after = PackedLayout(self.grids, self.rotary, merged=True)
        return self._after

    def encoder_inputs(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        grids, kwargs = self.grids, dict(kwargs)
        kwargs.setdefault("position_ids", grids.position_ids)
        if grids.windows is not None and "window_index" not in kwargs and "cu_window_seqlens" not in kwargs:
            kwargs["window_index"], kwargs["cu_window_seqlens"] = grids.window_index
        return args, kwargs

    def merge(self, hidden: torch.Tensor, compressor: TokenCompressor, fast: bool | None = None) -> torch.Tensor:
        """Merge every merge unit into one token; ``fast=False`` forces the general (row-major) path."""
        self.check(hidden, "the merged block")
        grids = self.grids
        if fast is None:
            fast = compressor.neighbourhood_wise
        if fast:
            merged = compressor.merge_stacked(hidden.reshape(1, grids.units, grids.group * hidden.shape[-1]))[0]
            order = grids.fast_order
            return merged if order is None else merged[order.to(merged.device)]
        outputs, units = [], []
        for size, rows, merged_units in grids.rowmajor_groups:
            out, _ = compressor(hidden[rows.to(hidden.device)], size)
            outputs.append(out.reshape(-1, out.shape[-1]))
            units.append(merged_units.reshape(-1))
        position = torch.argsort(torch.cat(units))  # row of each unit in the concatenated outputs
        return torch.cat(outputs)[position[grids.merged_units].to(hidden.device)]

    def block_inputs(self, block_index: int, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        if not self.merged:
            return None
        if "cu_seqlens" not in kwargs or "position_embeddings" not in kwargs:
            raise ValueError(
                f"block {block_index} after LaCo's merge was called without cu_seqlens= and position_embeddings=; "
                "call the tower itself (tower(pixel_values, grid_thw=...)), which passes them."
            )
        grids, windows = self.grids, self.grids.windows
        full = windows is None or block_index in windows.full_blocks
        cu_seqlens = grids.cu_seqlens if full else grids.cu_window_seqlens
        given = kwargs["cu_seqlens"]
        inputs = dict(kwargs, cu_seqlens=cu_seqlens.to(device=given.device, dtype=given.dtype))
        if kwargs.get("max_seqlen") is not None:
            inputs["max_seqlen"] = grids.max_seqlen("full" if full else "window", cu_seqlens)
        if grids.rotary is None:
            reference = kwargs["position_embeddings"][0]
            positions = grids.unit_positions[grids.merged_units].to(reference.device)
            grids.rotary = self.rotary(reference, positions)
        inputs["position_embeddings"] = grids.rotary
        return inputs


__all__ = ["KEEP", "MORE", "PackedGrids", "PackedLayout", "Windows", "check_grid_thw"]
