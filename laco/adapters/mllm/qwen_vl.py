"""Whole Qwen2-VL, Qwen2.5-VL and Qwen3-VL models (``*ForConditionalGeneration`` and ``*Model``).

``keep_llm_tokens`` changes nothing outside the tower: the LLM receives the same tokens at the same M-RoPE
positions, so the processor, ``get_rope_index``, chat templates and a serving engine's placeholder counts stay.

``compress_more`` gives the LLM one token per 2x2 block of merge units (16x fewer tokens than patches, against the
model's own 4x), and three things follow, each changed on this model's or processor's *instance* and undone by
:func:`laco.remove`:

* the model splits the tower's output per image by ``visual.spatial_merge_size`` (set by the tower's adapter);
* ``get_rope_index`` (the LLM's 3-D positions, called by the forward and by ``generate``) receives every grid with
  ``h`` and ``w`` divided by the factor, so its ``h // merge_size`` is the merged grid: an instance attribute
  wrapping the class's own method;
* the processor's ``replace_image_token`` / ``replace_video_token`` receive the same coarser grids, so each image
  gets ``t * h * w / 16`` placeholders (the image processor itself, whose patch order depends on its
  ``merge_size``, is left alone).

Grids whose merge units do not pair up 2x2 (sides that are not multiples of 56 px) are refused where they are
first seen (processor, rope index or tower) with an error naming the image and its grid.

This adapter derives from :class:`~laco.adapters.model.ModelAdapter`, not :class:`~laco.adapters.mllm.base.MllmAdapter`:
the latter counts tokens per fixed-size tile (``image_size // patch``, one grid per tile, checked by forward
pre-hooks on the tower and on the model), while a Qwen-VL image has its own ``grid_thw`` and the model's own 2x2
merge is done by the tower's merger, which the tower's adapter (:mod:`laco.adapters.qwen_vl`) already replaces.
Saved models reload through the same LaCo model types as the other families (:mod:`laco.mllm.types`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2VLForConditionalGeneration,
    Qwen2VLModel,
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
)

from ...placement import KEEP, MORE, Placement
from ..base import EncoderAdapter, GridSize, Undo, _pair
from ..changes import Changes
from ..model import ModelAdapter
from ..packed import check_grid_thw
from ..qwen_vl import QwenVisionAdapter
from ..registry import find_adapter, register_adapter
from .qwen_processor import coarser_grid, laco_processor_class, saved_processor, stock_processor_class

_WHOLE = (Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration)
_INNER = (Qwen2VLModel, Qwen2_5_VLModel, Qwen3VLModel)
_GRID_KEYS = ("image_grid_thw", "video_grid_thw")


def _inner(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, _WHOLE) else model


class CoarserRopeIndex:
    """Instance attribute ``get_rope_index`` of a Qwen-VL model in ``compress_more`` mode: the class's method on
    grids of the merged tokens. Holds the model (not a bound method) so ``copy.deepcopy`` maps it to the copy."""

    def __init__(self, model: nn.Module, factor: int, merge: int, patch: int) -> None:
        self.model, self.factor, self.merge, self.patch = model, factor, merge, patch

    def __call__(self, *args: Any, **kwargs: Any):
        method = type(self.model).get_rope_index
        bound = inspect.signature(method).bind(self.model, *args, **kwargs)
        for key in _GRID_KEYS:
            if bound.arguments.get(key) is not None:
                bound.arguments[key] = coarser_grid(bound.arguments[key], self.factor, self.merge, self.patch)
        return method(*bound.args, **bound.kwargs)


class CoarserPlaceholders:
    """Instance attribute ``replace_image_token`` / ``replace_video_token`` of a Qwen-VL processor in
    ``compress_more`` mode: the class's method, given grids of the merged tokens."""

    def __init__(self, processor: Any, name: str, key: str, factor: int, merge: int, patch: int) -> None:
        self.processor, self.name, self.key = processor, name, key
        self.factor, self.merge, self.patch = factor, merge, patch

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        method = getattr(type(self.processor), self.name)
        bound = inspect.signature(method).bind(self.processor, *args, **kwargs)
        name = list(bound.signature.parameters)[1]  # image_inputs / video_inputs
        inputs = bound.arguments[name]
        bound.arguments[name] = {
            **inputs,
            self.key: coarser_grid(inputs[self.key], self.factor, self.merge, self.patch),
        }
        return method(*bound.args, **bound.kwargs)


@register_adapter
class QwenVLModelAdapter(ModelAdapter):
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL models: the tower is ``model.visual`` (``model.model.visual``)."""

    family = "qwen-vl"
    model_classes = _WHOLE + _INNER
    checkpoint_classes = _WHOLE
    summary_image_size = (448, 448)  # native resolution has no size of its own
    # the tower's own 2x2 merger (and Qwen3-VL's DeepStack mergers) connects it to the LLM
    connector_paths = ("model.visual.merger", "model.visual.deepstack_merger_list")

    def encoder(self, model: nn.Module) -> tuple[nn.Module, EncoderAdapter]:
        visual = _inner(model).visual
        adapter = find_adapter(visual)
        if not isinstance(adapter, QwenVisionAdapter):
            raise ValueError(f"laco has no adapter for this Qwen-VL tower ({type(visual).__name__}).")
        return visual, adapter

    def _geometry(self, model: nn.Module) -> tuple[QwenVisionAdapter, nn.Module, int, int]:
        visual, adapter = self.encoder(model)
        return adapter, visual, adapter.merge_size(visual), adapter.patch_size(visual)[0]

    def install(self, model: nn.Module, placement: Placement, processor: Any | None) -> list[Undo]:
        if placement.mode != MORE:
            return []  # keep_llm_tokens: the LLM's tokens, positions and placeholders do not change
        _, _, merge, patch = self._geometry(model)
        changes = Changes()
        changes.override(
            _inner(model), "get_rope_index", CoarserRopeIndex(_inner(model), placement.factor, merge, patch)
        )
        if processor is not None:
            try:
                changes.undo += self.install_processor(model, placement, processor)
            except Exception:
                changes.revert()  # laco.apply then removes the merge: nothing stays half-done
                raise
        return changes.undo

    def install_processor(self, model: nn.Module, placement: Placement, processor: Any) -> list[Undo]:
        factor = placement.factor if placement.mode == MORE else 1
        if hasattr(processor, "laco_factor"):  # a LaCo processor counts by its own setting
            changes = Changes()
            if processor.laco_factor != factor:
                changes.set(processor, "laco_factor", factor)
            return changes.undo
        if placement.mode != MORE:
            return []
        _, _, merge, patch = self._geometry(model)
        methods = (("replace_image_token", "image_grid_thw"), ("replace_video_token", "video_grid_thw"))
        lacking = [name for name, _ in methods if not callable(getattr(processor, name, None))]
        if lacking:  # checked before any change, so a refused processor is left as it was
            raise ValueError(
                f"processor= must be the model's Qwen-VL processor (with {lacking}); got {type(processor).__name__}."
            )
        changes = Changes()
        for name, key in methods:
            changes.override(processor, name, CoarserPlaceholders(processor, name, key, placement.factor, merge, patch))
        return changes.undo

    def _stock_type(self, model_class: type[nn.Module]) -> str:
        stock = next(cls for cls in self.checkpoint_classes + _INNER if issubclass(model_class, cls))
        return stock.config_class.model_type

    def saved_processor(self, model: nn.Module, placement: Placement, processor: Any) -> Any:
        factor = placement.factor if placement.mode == MORE else 1
        return saved_processor(processor, self._stock_type(type(model)), factor)

    def laco_processor_class(self, model_class: type[nn.Module]) -> type | None:
        stock = stock_processor_class(self._stock_type(model_class))
        return None if stock is None else laco_processor_class(stock)

    def num_tokens(
        self,
        model: nn.Module,
        placement: Placement,
        image_size: int | GridSize | None = None,
        *,
        grid_thw: Any = None,
        **inputs: Any,
    ) -> int | list[int]:
        """Tokens the LLM receives: for one image of ``image_size`` (pixels, as the processor resized it), or per
        row of ``grid_thw`` (a list for several rows, an int for one ``(t, h, w)``)."""
        if inputs:
            raise ValueError(f"{type(model).__name__} takes image_size= or grid_thw=, not {sorted(inputs)}.")
        adapter, visual, merge, patch = self._geometry(model)
        mode = placement.mode if placement.compressed else KEEP
        per_token = merge * merge * (placement.factor**2 if mode == MORE else 1)
        if grid_thw is None:
            if image_size is None:
                adapter.default_image_size(visual)  # raises: native resolution has no default
            height, width = _pair(image_size)
            grid_thw = [1, height // patch, width // patch]
            if height % (patch * merge) or width % (patch * merge):
                raise ValueError(
                    f"image size {height}x{width} px is not a multiple of {patch * merge} px, which the processor "
                    "resizes every image to; pass the resized size or grid_thw."
                )
        rows = torch.as_tensor(grid_thw)
        single = rows.dim() == 1
        rows = check_grid_thw(rows.reshape(-1, 3), merge, None, mode, patch)
        counts = [int(t * h * w) // per_token for t, h, w in rows.tolist()]
        return counts[0] if single else counts


__all__ = ["CoarserPlaceholders", "CoarserRopeIndex", "QwenVLModelAdapter"]
