"""The processor a LaCo Qwen-VL checkpoint is saved with: it counts its own placeholders and loads without torchvision.

A stock Qwen-VL processor gives an image ``t * h * w / merge_size**2`` placeholders. Under ``compress_more`` the LLM
receives ``merge_factor**2`` times fewer tokens, and the image processor's ``merge_size`` cannot change (it also
orders the patches), so :func:`laco.apply` wraps the processor *instance*; ``save_pretrained`` cannot write such a
wrapper. ``laco convert`` saves this subclass instead: the stock class plus one saved setting, ``laco_factor``
(``processor_config.json``), by which its placeholder counts divide each grid's height and width.
``AutoProcessor.from_pretrained`` finds it through the LaCo model type (:mod:`laco.mllm.types` registers it).

transformers' video processors import torchvision; without torchvision this class leaves the video processor out,
so images work on any CPU, and a video is refused with the fix.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from typing import Any

import torch
import transformers
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from ...placement import MORE
from ..packed import check_grid_thw


def coarser_grid(grid: Any, factor: int, merge: int, patch: int) -> Any:
    """``grid`` (rows of t, h, w) with h and w divided by ``factor``, refused unless every row divides."""
    rows = torch.as_tensor(grid)
    check_grid_thw(rows.reshape(-1, 3), merge, None, MORE, patch)  # the clear error, naming the image
    if isinstance(grid, torch.Tensor):
        coarse = grid.clone()
    else:
        coarse = rows.clone().numpy() if hasattr(grid, "__array__") else rows.clone()
    coarse[..., 1:] //= factor
    return coarse


_GRIDS = (("replace_image_token", "image_grid_thw"), ("replace_video_token", "video_grid_thw"))


def has_video_processor_backend() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _init(
    self,
    image_processor: Any = None,
    tokenizer: Any = None,
    video_processor: Any = None,
    chat_template: str | None = None,
    laco_factor: int = 1,
    **kwargs: Any,
) -> None:
    # one positional-or-keyword parameter per setting: transformers passes saved settings only to those
    if isinstance(laco_factor, bool) or not isinstance(laco_factor, int) or laco_factor < 1:
        raise ValueError(
            f"laco_factor must be an integer >= 1 (the merge factor of compress_more), got {laco_factor!r}."
        )
    self.laco_factor = laco_factor
    parts = {"image_processor": image_processor, "tokenizer": tokenizer, "chat_template": chat_template}
    if "video_processor" in type(self).get_attributes():
        parts["video_processor"] = video_processor
    type(self).stock_class.__init__(self, **parts, **kwargs)


@classmethod
def _get_attributes(cls) -> list[str]:
    names = list(cls.stock_class.get_attributes())
    return names if has_video_processor_backend() else [name for name in names if name != "video_processor"]


def _call(self, *args: Any, **kwargs: Any) -> Any:
    if kwargs.get("videos") is not None and getattr(self, "video_processor", None) is None:
        raise ValueError(
            "this processor has no video processor: transformers' video processors need torchvision, which is not "
            "installed. Install a torchvision build for your torch to process videos, or pass images only."
        )
    return type(self).stock_class.__call__(self, *args, **kwargs)


def _counting(name: str, key: str):
    def replace(self, inputs: dict, *args: Any, **kwargs: Any) -> str:
        stock = getattr(type(self).stock_class, name)
        if self.laco_factor > 1:
            image = self.image_processor
            grid = coarser_grid(inputs[key], self.laco_factor, image.merge_size, image.patch_size)
            inputs = {**inputs, key: grid}
        return stock(self, inputs, *args, **kwargs)

    replace.__name__ = name
    return replace


@cache
def laco_processor_class(stock: type) -> type:
    """The LaCo subclass of a Qwen-VL processor class (one per stock class)."""
    body = {
        "stock_class": stock,
        "__init__": _init,
        "__call__": _call,
        "get_attributes": _get_attributes,
        "__module__": __name__,
        "__doc__": f"{stock.__name__} that counts placeholders after laco's merge (``laco_factor``).",
        **{name: _counting(name, key) for name, key in _GRIDS},
    }
    laco_class = type(f"Laco{stock.__name__}", (stock,), body)
    globals()[laco_class.__name__] = laco_class  # importable by name, as transformers resolves processor classes
    return laco_class


def stock_processor_class(model_type: str) -> type | None:
    """The processor class transformers pairs with a Qwen-VL ``model_type``."""
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None


def saved_processor(processor: Any, model_type: str, factor: int) -> Any:
    """The processor to save with a LaCo checkpoint: ``processor``'s parts in the LaCo class of the family's stock
    processor, counting placeholders for merges of ``factor`` (1: ``keep_llm_tokens``)."""
    stock = stock_processor_class(model_type)
    if stock is None:
        raise ValueError(f"transformers has no processor class for model type {model_type!r}.")
    parts = {name: getattr(processor, name, None) for name in ("image_processor", "tokenizer", "video_processor")}
    if not has_video_processor_backend():
        parts.pop("video_processor")
    return laco_processor_class(stock)(
        **parts, chat_template=getattr(processor, "chat_template", None), laco_factor=factor
    )


__all__ = [
    "coarser_grid",
    "has_video_processor_backend",
    "laco_processor_class",
    "saved_processor",
    "stock_processor_class",
]
