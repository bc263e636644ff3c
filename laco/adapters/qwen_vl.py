"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL vision towers: native resolution, every image and video frame of a call packed
into one sequence (:mod:`laco.adapters.packed`), rotary positions, Qwen2.5-VL's window attention, Qwen3-VL's
DeepStack taps, and a post-encoder 2x2 merger (:mod:`laco.adapters.qwen_merger`).

Two modes (:data:`laco.placement.MODES`), ``keep_llm_tokens`` by default:

* ``keep_llm_tokens``: LaCo's merge *is* the tower's 2x2 merge, moved inside the ViT; the final merger becomes 1x,
  so the LLM receives the same tokens at the same positions and only blocks k+1..L get ~4x cheaper;
* ``compress_more``: LaCo's merge inside plus the pretrained merger: 16x fewer tokens for the LLM. The tower's
  ``spatial_merge_size`` attribute becomes 4 (the model splits the merger's output by it); the tower still gets
  positions and windows computed with the real merge size, from the layout.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

from ..placement import AUTO, KEEP, MORE, Placement
from .base import AttentionParts, CallState, EncoderAdapter, GridSize, MlpParts, Undo, _pair
from .packed import PackedGrids, PackedLayout, Windows, check_grid_thw
from .qwen_merger import FinishCall, PoolEarlyTap, SetAsideWindowedOutput, run_one_to_one
from .registry import register_adapter


@register_adapter
class QwenVisionAdapter(EncoderAdapter):
    """Qwen2-VL's tower (``Qwen2VisionTransformerPretrainedModel``); the base of the other two."""

    family = "qwen2-vl"
    model_classes = (Qwen2VisionTransformerPretrainedModel,)
    blocks_path = "blocks"
    rewrites_block_inputs = True

    def hidden_size(self, model: nn.Module) -> int:
        return int(model.blocks[0].norm1.weight.shape[0])  # Qwen2-VL's config.hidden_size is the LLM's width

    def merge_size(self, model: nn.Module) -> int:
        return int(model.config.spatial_merge_size)

    def patch_size(self, model: nn.Module) -> GridSize:
        return _pair(model.config.patch_size)

    def windows(self, model: nn.Module) -> Windows | None:
        return None

    def mlp_parts(self, block: nn.Module) -> MlpParts | None:
        return MlpParts(block.norm2, block.mlp.fc1, block.mlp.fc2)

    def attention_parts(self, block: nn.Module) -> AttentionParts:
        # the tower rotates q and k by 2-D RoPE; inside a 2x2 window the merge attends without positions
        return AttentionParts(block.norm1, block.attn.proj, block.attn.num_heads, qkv=block.attn.qkv)

    # -- token layout ------------------------------------------------------------------------------------------

    def _layout(self, model: nn.Module, grid_thw: Any, tokens: int | None, mode: str) -> PackedLayout:
        merge, patch = self.merge_size(model), self.patch_size(model)[0]
        grid_thw = check_grid_thw(grid_thw, merge, tokens, mode, patch)
        return PackedLayout(PackedGrids(grid_thw, merge, mode, self.windows(model)), model.rotary_pos_emb)

    def layout(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], placement: Placement) -> PackedLayout:
        pixels = args[0] if args else kwargs.get("hidden_states")
        grid_thw = args[1] if len(args) > 1 else kwargs.get("grid_thw")
        tokens = pixels.shape[0] if hasattr(pixels, "shape") else None
        return self._layout(model, grid_thw, tokens, self._mode(placement))

    @staticmethod
    def _mode(placement: Placement) -> str:
        """The mode that lays out the tokens: an uncompressed tower's are those of keep_llm_tokens."""
        return placement.mode if placement.compressed and placement.mode != AUTO else KEEP

    def fallback_layout(self, model: nn.Module, hidden, where: str) -> PackedLayout:
        raise ValueError(
            f"cannot tell which image each packed token at {where} belongs to: call the {self.family} tower itself "
            "with grid_thw (tower(pixel_values, grid_thw=...)), not its blocks."
        )

    def default_image_size(self, model: nn.Module) -> GridSize:
        raise ValueError(
            f"a {self.family} tower takes images at their native resolution and has no default size; pass "
            "image_size=(height, width) in pixels, as the processor resized it (image_grid_thw[1:] * patch size)."
        )

    def layout_for_image_size(
        self, model: nn.Module, placement: Placement, image_size: int | GridSize | None = None
    ) -> PackedLayout:
        import torch

        size = self.default_image_size(model) if image_size is None else _pair(image_size)
        patch, unit = self.patch_size(model)[0], self.patch_size(model)[0] * self.merge_size(model)
        if size[0] % unit or size[1] % unit:
            raise ValueError(
                f"image size {size[0]}x{size[1]} px is not a multiple of {unit} px (patch {patch} x merge "
                f"{self.merge_size(model)}), which the processor resizes every image to; pass the resized size."
            )
        grid_thw = torch.tensor([[1, size[0] // patch, size[1] // patch]])
        return self._layout(model, grid_thw, None, self._mode(placement))

    # -- modes and the mergers around the tower -----------------------------------------------------------------

    def resolve_mode(self, model: nn.Module, placement: Placement) -> str:
        merge = self.merge_size(model)
        if len(placement.layers) != 1:
            raise ValueError(
                f"a {self.family} tower takes one LaCo merge (its merge units are merged once), got layers "
                f"{list(placement.layers)}; give one layer, e.g. '1/4'."
            )
        if placement.factor != merge:
            raise ValueError(
                f"a {self.family} tower merges whole {merge}x{merge} merge units: use factor={merge}, not "
                f"{placement.factor} (compress_more merges {merge}x{merge} once more after the tower)."
            )
        return KEEP if placement.mode == AUTO else placement.mode

    def install(self, model: nn.Module, placement: Placement, state: CallState) -> list[Undo]:
        width, layer = self.hidden_size(model), placement.layers[0]
        if placement.mode == KEEP:
            undo = run_one_to_one(model.merger, width)
            for index in self.taps_after(model, layer):
                undo += run_one_to_one(model.deepstack_merger_list[index], width)
            return undo
        before = model.spatial_merge_size  # the model splits the merger's output into images by it
        model.spatial_merge_size = before * placement.factor
        undo: list[Undo] = [lambda: setattr(model, "spatial_merge_size", before)]
        handles = [model.register_forward_hook(FinishCall(state))]
        if self.windows(model) is not None:
            handles.append(model.merger.register_forward_hook(SetAsideWindowedOutput(state)))
        for index in self.taps_before(model, layer):
            handles.append(model.deepstack_merger_list[index].register_forward_hook(PoolEarlyTap(state)))
        undo.extend(handle.remove for handle in handles)
        return undo

    def taps_after(self, model: nn.Module, layer: int) -> list[int]:
        """DeepStack mergers that read the merged tokens (block index >= layer - 1); none outside Qwen3-VL."""
        return []

    def taps_before(self, model: nn.Module, layer: int) -> list[int]:
        return []


@register_adapter
class Qwen25VisionAdapter(QwenVisionAdapter):
    """Qwen2.5-VL's tower: window attention (``window_size`` px) except in ``fullatt_block_indexes``; SwiGLU MLPs."""

    family = "qwen2.5-vl"
    model_classes = (Qwen2_5_VisionTransformerPretrainedModel,)

    def windows(self, model: nn.Module) -> Windows:
        return Windows(int(model.window_size), self.patch_size(model)[0], frozenset(model.fullatt_block_indexes))

    def mlp_parts(self, block: nn.Module) -> MlpParts | None:
        return None  # SwiGLU: not a two-Linear MLP

    def resolve_mode(self, model: nn.Module, placement: Placement) -> str:
        mode = super().resolve_mode(model, placement)
        windows, merge = self.windows(model), self.merge_size(model)
        if mode == MORE and windows.size // merge // (windows.patch * merge) < 1:
            raise ValueError(
                f"compress_more needs windows of at least {merge * merge * windows.patch} px to hold a {merge}x{merge} "
                f"block of merged tokens; this tower's window_size is {windows.size} px. Use keep_llm_tokens."
            )
        return mode


@register_adapter
class Qwen3VisionAdapter(QwenVisionAdapter):
    """Qwen3-VL's tower: learned absolute positions added at the input, DeepStack taps into the LLM."""

    family = "qwen3-vl"
    model_classes = (Qwen3VLVisionModel,)

    def mlp_parts(self, block: nn.Module) -> MlpParts:
        return MlpParts(block.norm2, block.mlp.linear_fc1, block.mlp.linear_fc2)

    def taps_after(self, model: nn.Module, layer: int) -> list[int]:
        return [i for i, block in enumerate(model.deepstack_visual_indexes) if block >= layer - 1]

    def taps_before(self, model: nn.Module, layer: int) -> list[int]:
        return [i for i, block in enumerate(model.deepstack_visual_indexes) if block < layer - 1]


__all__ = ["Qwen25VisionAdapter", "Qwen3VisionAdapter", "QwenVisionAdapter"]
