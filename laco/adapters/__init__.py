"""Adapters: one file per vision-encoder family and one per MLLM family (:mod:`laco.adapters.mllm`), each
registered once in :mod:`laco.adapters.registry`, plus a generic adapter for any other ViT."""

from .base import CallState, EncoderAdapter, GenericAdapter, MlpParts
from .layout import GridLayout, TokenLayout
from .model import ModelAdapter
from .registry import (
    encoder_adapters,
    find_adapter,
    find_model_adapter,
    model_adapters,
    register_adapter,
    resolve_encoder,
    supported_names,
    unregister_adapter,
)

__all__ = [
    "CallState",
    "EncoderAdapter",
    "GenericAdapter",
    "GridLayout",
    "MlpParts",
    "ModelAdapter",
    "TokenLayout",
    "encoder_adapters",
    "find_adapter",
    "find_model_adapter",
    "model_adapters",
    "register_adapter",
    "resolve_encoder",
    "supported_names",
    "unregister_adapter",
]
