"""LaCo model types for the retrofitted families, so a converted checkpoint reloads compressed with the Auto classes:
one for each checkpoint class a registered MLLM adapter names (:attr:`~laco.adapters.ModelAdapter.checkpoint_classes`).

Each stock class gets a subclass that differs in two things only: its config's ``model_type`` (``laco_internvl``,
...; LLaVA's is laco's own ``laco_llava``) and a constructor that re-applies the compression recorded in
``config.vision_config.laco`` through the family's whole-model adapter, so the model's counts and connector follow
the merge as after :func:`laco.apply`. They load and save with the stock type's checkpoint key mapping, so
``AutoModelForImageTextToText.from_pretrained(converted)`` (after ``import laco``) and the stock class on the same
files agree on every pretrained tensor.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PretrainedConfig

from ..adapters import model_adapters
from ..patch import CONFIG_ATTRIBUTE, apply_from_config
from ..weights import share_key_mapping
from .modeling import LacoLlavaConfig, LacoLlavaForConditionalGeneration
from .processing import LacoProcessor

# AutoProcessor.from_pretrained(a laco checkpoint) gives the LacoProcessor, found by the class name its
# save_pretrained records (and, for checkpoints saved before that record, by the config's model type).
AutoProcessor.register(LacoLlavaConfig, LacoProcessor, exist_ok=True)

LACO_MODELS: dict[str, type[nn.Module]] = {"llava": LacoLlavaForConditionalGeneration}
"""Stock ``model_type`` -> its LaCo model class (LLaVA's is laco's own model)."""


def _laco_init(self, config: PretrainedConfig) -> None:
    type(self).stock_class.__init__(self, config)
    if getattr(config.vision_config, CONFIG_ATTRIBUTE, None):
        apply_from_config(self)


def _define(config_class: type[PretrainedConfig], model_class: type[nn.Module]) -> type[nn.Module]:
    stock_type = config_class.model_type
    laco_type = f"laco_{stock_type}"
    laco_config = strict(
        type(
            f"Laco{config_class.__name__}",
            (config_class,),
            {"model_type": laco_type, "__module__": __name__, "__doc__": f"{config_class.__name__} of a LaCo model."},
        )
    )
    laco_model = type(
        f"Laco{model_class.__name__}",
        (model_class,),
        {
            "config_class": laco_config,
            "stock_class": model_class,
            "__init__": _laco_init,
            "__module__": __name__,
            "__doc__": f"{model_class.__name__} whose vision tower LaCo compresses as config.vision_config.laco says.",
        },
    )
    for cls in (laco_config, laco_model):
        globals()[cls.__name__] = cls  # importable by name: pickling, and the docs
    AutoConfig.register(laco_type, laco_config, exist_ok=True)
    AutoModelForImageTextToText.register(laco_config, laco_model, exist_ok=True)
    share_key_mapping(laco_model, model_class)
    LACO_MODELS[stock_type] = laco_model
    return laco_model


# One LaCo type per checkpoint class a registered MLLM adapter names (LLaVA's is laco's own model, above), with the
# processor class the adapter saves its checkpoints with, where it has its own.
for _adapter in model_adapters():
    for _model in _adapter.checkpoint_classes:
        if _model.config_class.model_type not in LACO_MODELS:
            _laco_model = _define(_model.config_class, _model)
            _processor = _adapter.laco_processor_class(_model)
            if _processor is not None:
                AutoProcessor.register(_laco_model.config_class, _processor, exist_ok=True)


def laco_model_class(model_type: str) -> type[nn.Module] | None:
    """The LaCo model class for a stock or LaCo ``model_type`` (``None`` if laco has none)."""
    if model_type in LACO_MODELS:
        return LACO_MODELS[model_type]
    return next((cls for cls in LACO_MODELS.values() if cls.config_class.model_type == model_type), None)


__all__ = ["LACO_MODELS", "laco_model_class"]
