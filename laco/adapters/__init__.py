"""Encoder adapters: one file per vision-encoder family, plus a generic one for any ViT."""

from __future__ import annotations

from torch import nn

from .aimv2 import Aimv2Adapter
from .base import EncoderAdapter, GenericAdapter, MlpParts
from .clip import ClipAdapter
from .dinov2 import Dinov2Adapter
from .internvit import InternVitAdapter
from .layout import GridLayout, TokenLayout
from .model import MODEL_ADAPTERS, ModelAdapter, find_model_adapter, register_model_adapter
from .qwen_vl import QWEN_ADAPTERS
from .siglip import SiglipAdapter

ADAPTERS: list[EncoderAdapter] = [
    SiglipAdapter(),
    ClipAdapter(),
    Dinov2Adapter(),
    Aimv2Adapter(),
    InternVitAdapter(),
    *QWEN_ADAPTERS,
]

from . import mllm  # noqa: E402, F401  (registers the whole-model adapters; they import this package's base modules)

# Composite models keep their vision encoder under one of these attributes (CLIPModel, SiglipModel: vision_model;
# LLaVA-style models: vision_tower, possibly one level down in .model).
_VISION_ATTRIBUTES = ("vision_model", "vision_tower", "model.vision_tower", "model.vision_model")


def find_adapter(model: nn.Module) -> EncoderAdapter | None:
    return next((adapter for adapter in ADAPTERS if adapter.matches(model)), None)


def resolve_encoder(model: nn.Module) -> tuple[nn.Module, EncoderAdapter]:
    """Find the supported vision encoder in ``model`` (itself, inside an MLLM a whole-model adapter knows, or inside
    a CLIP/SigLIP/LLaVA-style wrapper)."""
    adapter = find_adapter(model)
    if adapter is not None:
        return model, adapter
    model_adapter = find_model_adapter(model)
    if model_adapter is not None:
        return model_adapter.encoder(model)
    for path in _VISION_ATTRIBUTES:
        try:
            inner = model.get_submodule(path)
        except AttributeError:
            continue
        adapter = find_adapter(inner)
        if adapter is not None:
            return inner, adapter
    supported = ", ".join(cls.__name__ for a in ADAPTERS for cls in a.model_classes)
    raise ValueError(
        f"laco has no adapter for {type(model).__name__}; supported encoders: {supported}. For any other ViT "
        "pass blocks=, num_prefix_tokens= and patch_size= (or grid=) to laco.apply."
    )


__all__ = [
    "ADAPTERS",
    "MODEL_ADAPTERS",
    "EncoderAdapter",
    "GenericAdapter",
    "GridLayout",
    "MlpParts",
    "ModelAdapter",
    "TokenLayout",
    "find_adapter",
    "find_model_adapter",
    "register_model_adapter",
    "resolve_encoder",
]
