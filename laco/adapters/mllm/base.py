"""What the whole-model adapters of :mod:`laco.adapters.mllm` share: the tower, the feature layers the LLM reads,
the model's own post-encoder compression and the two modes, and token counts per tile.

Vocabulary: a model's *own factor* ``s`` is the per-side reduction it applies after its encoder (InternVL's and
Idefics3's pixel-shuffle, Gemma3's average pooling; 1 where there is none). LaCo's merges reduce each side by
``F = factor ** len(layers)`` inside the encoder. ``keep_llm_tokens`` leaves ``s / F`` of the model's own compression
after the encoder (the LLM receives what it did before); ``compress_more`` keeps ``s`` (the LLM receives ``F**2``
times fewer tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ... import functional as F
from ...placement import AUTO, KEEP, MORE, Placement
from ..base import EncoderAdapter, GridSize, Undo, _pair
from ..changes import Changes
from ..model import ModelAdapter
from ..registry import find_adapter
from .connector import PlaceholderCheck, TileCheck


def total_factor(placement: Placement) -> int:
    """Per-side reduction of all of a placement's merges together."""
    return placement.factor ** len(placement.layers)


def merged_grid(grid: GridSize, placement: Placement) -> GridSize:
    """The grid after every merge of ``placement`` (odd sides are padded: ceil)."""
    for _ in placement.layers:
        grid = F.merged_size(grid, placement.factor)
    return grid


def patch_size_for(pixels: int, tokens: int) -> int:
    """An integer patch size ``p`` with ``pixels // p == tokens``, for processors and model code that count a
    tile's tokens as ``size // patch_size`` after a merge (so odd grids, padded by the merge, count right too)."""
    for patch in range(max(1, pixels // (tokens + 1)), pixels // tokens + 1):
        if pixels // patch == tokens:
            return patch
    raise ValueError(
        f"no integer patch size divides {pixels} px into {tokens} tokens per side, which the model's own token count "
        "needs; merge at a factor that divides the patch grid."
    )


def read_layers(feature_layer: int | list[int], depth: int) -> list[int]:
    """The blocks after which the LLM reads hidden states (``hidden_states[i]`` follows block ``i mod (depth+1)``)."""
    indices = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    return [index % (depth + 1) for index in indices]


class MllmAdapter(ModelAdapter):
    """A LLaVA-like MLLM: tower at :attr:`tower_path`, optional own post-encoder compression, a processor whose
    placeholder counts follow the tokens per tile."""

    tower_path = "model.vision_tower"
    own_compression = ""
    """What the model's own post-encoder compression is, for messages (empty: it has none)."""

    # -- the tower ---------------------------------------------------------------------------------------------

    def encoder(self, model: nn.Module) -> tuple[nn.Module, EncoderAdapter]:
        tower = model.get_submodule(self.tower_path)
        adapter = find_adapter(tower)
        if adapter is None:
            raise ValueError(
                f"laco has no adapter for the vision tower of this {self.family} ({type(tower).__name__})."
            )
        return tower, adapter

    def depth(self, model: nn.Module) -> int:
        tower, adapter = self.encoder(model)
        return len(adapter.blocks(tower))

    def tile_grid(self, model: nn.Module, image_size: int | GridSize | None = None) -> GridSize:
        """The patch grid of one tile (image) before any merge."""
        tower, adapter = self.encoder(model)
        return adapter.layout_for_image_size(tower, Placement(), image_size).grid

    def num_prefix_tokens(self, model: nn.Module) -> int:
        tower, adapter = self.encoder(model)
        return adapter.num_prefix_tokens(tower)

    def feature_layer(self, model: nn.Module) -> int | list[int] | None:
        """The config's ``vision_feature_layer`` (``None``: the model reads the tower's last output)."""
        return None

    # -- modes ---------------------------------------------------------------------------------------------------

    def own_factor(self, model: nn.Module) -> int:
        return 1

    def resolve_mode(self, model: nn.Module, placement: Placement) -> str:
        if self.own_factor(model) == 1:
            if placement.mode == KEEP:
                raise ValueError(
                    f"mode={KEEP!r} moves a model's own post-encoder compression inside the encoder, and "
                    f"{self.family} has none; use mode={MORE!r} (or 'auto')."
                )
            return MORE
        return KEEP if placement.mode == AUTO else placement.mode

    def remaining_factor(self, model: nn.Module, placement: Placement) -> int:
        """The per-side reduction left after the encoder under ``placement``'s (resolved) mode."""
        own = self.own_factor(model)
        if placement.mode != KEEP:
            return own
        laco = total_factor(placement)
        if own % laco:
            raise ValueError(
                f"mode='keep_llm_tokens' moves {self.own_compression} (factor {own}) inside the encoder, so laco's "
                f"merges may reduce each side by a factor dividing {own}; {placement.label()} reduces it by {laco}. "
                "Use fewer merges, another factor, or mode='compress_more'."
            )
        return own // laco

    # -- checks --------------------------------------------------------------------------------------------------

    def check(self, model: nn.Module, placement: Placement) -> None:
        self.check_feature_layers(model, placement)
        self.llm_grid(model, placement)  # raises for a tile whose merged grid the model cannot take

    def check_feature_layers(self, model: nn.Module, placement: Placement) -> None:
        feature_layer = self.feature_layer(model)
        if feature_layer is None:
            return
        depth, last_merge = self.depth(model), max(placement.layers)
        read = read_layers(feature_layer, depth)
        if min(read) >= last_merge:
            return
        if len(read) == 1:
            problem, alternative = (
                f"a merge after layer {last_merge} would be ignored",
                ", or set config.vision_feature_layer=-1",
            )
        else:
            problem = (
                f"the hidden states it concatenates would have different token counts (merge after layer {last_merge})"
            )
            alternative = ""
        raise ValueError(
            f"this {self.family} reads the vision tower's hidden states after layer(s) {read} "
            f"(config.vision_feature_layer={feature_layer!r}), so {problem}. Merge at layer {min(read)} or earlier "
            f"(laco.apply(model, {min(read)}) or a fraction of depth){alternative}."
        )

    def llm_grid(self, model: nn.Module, placement: Placement, image_size: int | GridSize | None = None) -> GridSize:
        """The grid of tokens the LLM receives for one tile (of ``image_size``, default the model's) under
        ``placement``; a clear error where the model's own compression cannot take the merged grid."""
        grid = self.tile_grid(model, image_size)
        merged, rest = merged_grid(grid, placement), self.remaining_factor(model, placement)
        if merged[0] % rest or merged[1] % rest:
            pixels = "" if image_size is None else "{}x{} px ".format(*_pair(image_size))
            size = f"a {pixels}tile of {grid[0]}x{grid[1]} patches"
            keep = f", mode={KEEP!r}" if placement.mode == MORE else ""
            raise ValueError(
                f"{size} becomes {merged[0]}x{merged[1]} tokens after {placement.label()}, which {self.own_compression} "
                f"of this {self.family} cannot reduce by {rest} per side. Use tiles whose patch grid is a multiple of "
                f"{total_factor(placement) * rest} per side{keep}, or fewer merges."
            )
        return merged[0] // rest, merged[1] // rest

    # -- counts and install --------------------------------------------------------------------------------------

    def tokens_per_tile(self, model: nn.Module, placement: Placement, image_size: int | GridSize | None = None) -> int:
        """Tokens the LLM receives for one tile (image) of ``image_size`` under ``placement`` (``Placement()``:
        not compressed)."""
        if not placement.compressed:
            grid = self.tile_grid(model, image_size)
            rest = self.own_factor(model)
            return (grid[0] // rest) * (grid[1] // rest)
        height, width = self.llm_grid(model, placement, image_size)
        return height * width

    fixed_tile_count = True
    """Whether every tile of ``pixel_values`` gives the LLM the same number of tokens (not so for AnyRes unpadding):
    then prompts are checked against the merged count before the forward."""

    def count_tiles(self, pixel_values: torch.Tensor) -> int:
        """Tiles (images) in a batch of ``pixel_values`` as the model's forward takes it."""
        return int(pixel_values.shape[0])

    def num_tokens(
        self, model: nn.Module, placement: Placement, image_size: int | GridSize | None = None, **inputs: Any
    ) -> int:
        if inputs:
            raise ValueError(f"laco.num_tokens of a {self.family} takes image_size only, not {sorted(inputs)}.")
        return self.tokens_per_tile(model, placement, image_size)

    def install(self, model: nn.Module, placement: Placement, processor: Any | None) -> list[Undo]:
        changes = Changes()
        try:
            if self.remaining_factor(model, placement) > 1:
                tower, _ = self.encoder(model)
                changes.forward_pre_hook(tower, TileCheck(self, model, placement), with_kwargs=True)
            if self.fixed_tile_count:
                changes.forward_pre_hook(model, PlaceholderCheck(self, model, placement), with_kwargs=True)
            self.change_model(model, placement, changes)
            if processor is not None:
                self.change_processor(model, placement, processor, changes)
        except Exception:
            changes.revert()  # laco.apply then removes the merge: nothing stays half-done
            raise
        return changes.undo

    def install_processor(self, model: nn.Module, placement: Placement, processor: Any) -> list[Undo]:
        changes = Changes()
        try:
            self.change_processor(model, placement, processor, changes)
        except Exception:
            changes.revert()
            raise
        return changes.undo

    def change_model(self, model: nn.Module, placement: Placement, changes: Changes) -> None:
        """Bring the model in line with the merged tower (``changes`` records how to undo it)."""

    def change_processor(self, model: nn.Module, placement: Placement, processor: Any, changes: Changes) -> None:
        """Update the placeholder counts of ``processor`` in place."""
        raise NotImplementedError


def require(processor: Any, names: tuple[str, ...], family: str) -> None:
    """Refuse a processor that lacks the attributes this family counts placeholders with."""
    missing = [name for name in names if not hasattr(processor, name)]
    if missing:
        raise ValueError(
            f"processor= must be the {family} model's own processor; {type(processor).__name__} has no {missing}. "
            "Pass the processor the model was released with (AutoProcessor.from_pretrained), or leave it out and size "
            "placeholders with laco.num_tokens(model)."
        )


__all__ = ["MllmAdapter", "merged_grid", "patch_size_for", "read_layers", "require", "total_factor"]
