"""The one registry of adapters: every encoder family and every MLLM family laco knows, each registered once.

A family's file registers its adapter with one call, :func:`register_adapter` (a class decorator), so adding a
family is adding a file. The files of laco's own families are found by walking this package the first time the
registry is read (:func:`encoder_adapters`, :func:`model_adapters`), not at ``import laco``, so their
``transformers`` modelling imports are paid when an adapter is first looked up. A plugin outside laco registers a
lazy ``"module:Class"`` entry, imported at the same moment.

Lookups match on the model's class: the adapter that lists the most derived class in the model's MRO wins, so a
subclass (laco's own LaCo model types) finds its stock family's adapter and the order of registration never
matters. Whole-model adapters are asked before encoder adapters.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from torch import nn

from .base import EncoderAdapter
from .model import ModelAdapter

AdapterClass = TypeVar("AdapterClass", bound=type)

_ENCODERS: list[EncoderAdapter] = []
_MODELS: list[ModelAdapter] = []
_LAZY: list[str] = []
_discovered = False


def register_adapter(adapter: AdapterClass | str) -> AdapterClass | str:
    """Register an encoder adapter or a whole-model adapter: a class (used as a decorator; one instance is kept)
    or a ``"module:Class"`` string, imported when the registry is first read."""
    if isinstance(adapter, str):
        if ":" not in adapter:
            raise ValueError(f"a lazy adapter entry is 'module:Class', got {adapter!r}.")
        if adapter not in _LAZY:
            _LAZY.append(adapter)
        return adapter
    _add(adapter())
    return adapter


def _add(instance: object) -> None:
    if isinstance(instance, ModelAdapter):
        target = _MODELS
    elif isinstance(instance, EncoderAdapter):
        target = _ENCODERS
    else:
        raise TypeError(f"{type(instance).__name__} is neither an EncoderAdapter nor a ModelAdapter.")
    if not instance.model_classes:
        raise ValueError(f"{type(instance).__name__} lists no model_classes; set the classes it describes.")
    target[:] = [known for known in target if type(known) is not type(instance)]  # re-registration replaces
    target.append(instance)


def unregister_adapter(adapter_class: type) -> None:
    """Remove an adapter class registered with :func:`register_adapter` (tests, plugins being reloaded)."""
    for target in (_ENCODERS, _MODELS):
        target[:] = [known for known in target if type(known) is not adapter_class]


def _discover() -> None:
    """Import every module of this package (the built-in families register themselves) and the lazy entries."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first, so a family module that looks an adapter up while importing does not recurse
    try:
        package = importlib.import_module(__package__)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{__package__}."):
            if not info.name.rpartition(".")[2].startswith("_"):
                importlib.import_module(info.name)
        for entry in list(_LAZY):
            module, _, name = entry.partition(":")
            _add(getattr(importlib.import_module(module), name)())
    except Exception:
        _discovered = False
        raise


def encoder_adapters() -> tuple[EncoderAdapter, ...]:
    """Every registered encoder adapter."""
    _discover()
    return tuple(_ENCODERS)


def model_adapters() -> tuple[ModelAdapter, ...]:
    """Every registered whole-model (MLLM) adapter."""
    _discover()
    return tuple(_MODELS)


def _most_specific(model: nn.Module | type, adapters: tuple) -> object | None:
    for cls in (model if isinstance(model, type) else type(model)).__mro__:
        for adapter in adapters:
            if cls in adapter.model_classes:
                return adapter
    return None


def find_adapter(model: nn.Module | type) -> EncoderAdapter | None:
    """The encoder adapter of ``model`` (or of a model class) itself, not of an encoder inside it, or ``None``."""
    return _most_specific(model, encoder_adapters())


def find_model_adapter(model: nn.Module | type) -> ModelAdapter | None:
    """The whole-model adapter of ``model`` (or of a model class), or ``None``."""
    return _most_specific(model, model_adapters())


# Composite models keep their vision encoder under one of these attributes (CLIPModel, SiglipModel: vision_model;
# LLaVA-style models: vision_tower, possibly one level down in .model).
_VISION_ATTRIBUTES = ("vision_model", "vision_tower", "model.vision_tower", "model.vision_model")


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
    raise ValueError(
        f"laco has no adapter for {type(model).__name__}; supported encoders: {supported_names('encoder')}. For any "
        "other ViT pass blocks=, num_prefix_tokens= and patch_size= (or grid=) to laco.apply."
    )


def supported_names(kind: str) -> str:
    """The classes laco supports, for messages: ``kind`` is ``"encoder"`` or ``"model"``."""
    adapters = encoder_adapters() if kind == "encoder" else model_adapters()
    return ", ".join(sorted(cls.__name__ for adapter in adapters for cls in adapter.model_classes)) or "none"


__all__ = [
    "encoder_adapters",
    "find_adapter",
    "find_model_adapter",
    "model_adapters",
    "register_adapter",
    "resolve_encoder",
    "supported_names",
    "unregister_adapter",
]
