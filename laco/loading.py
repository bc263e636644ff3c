"""``laco.load``: a model saved after :func:`laco.apply` (or written by ``laco convert`` or ``laco train``), rebuilt
compressed, every weight read strictly from safetensors (:mod:`laco.weights`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import find_model_adapter
from .digests import check_weight_files
from .mllm.types import laco_model_class
from .patch import COMPRESSOR_ATTRIBUTE, apply_from_config, placement_of
from .weights import (
    CheckpointMismatch,
    check_shards,
    checkpoint_names,
    from_pretrained_strict,
    refuse_pickle,
    safetensors_files,
    saved_class,
)


def load(
    path: str | Path, model_class: type[nn.Module] | None = None, *, processor: Any | None = None, **kwargs: Any
) -> nn.Module:
    """Load a model saved (with ``save_pretrained``) after :func:`apply`, compressors and any module laco replaced
    included; ``processor`` (the model's own) is updated in place as :func:`laco.apply` would update it.

    A multimodal LLM of a family laco knows (a ``laco convert`` output, or a stock model saved after
    ``laco.apply``) loads as that family's LaCo class (:mod:`laco.mllm.types`), which re-applies the
    compression from ``vision_config.laco`` before its weights load, so every tensor, a Qwen-VL merger made 1x
    included, loads strictly under its own shape. Anything else (a vision encoder, an MLLM's inner ``*Model``, or
    ``model_class`` given) loads through ``model_class.from_pretrained`` (default: the class ``config.json`` names,
    else ``AutoModel``), so its key conversions apply; the compression is rebuilt from ``config.laco`` and every
    weight laco owns is read from the same safetensors file(s). Any other mismatch between checkpoint and model is
    an error.
    """
    path = Path(path)
    refuse_pickle(path)
    check_shards(path)
    if path.is_dir():  # a directory without digests (saved by hand) is checked by structure only
        check_weight_files(path)
    laco_class = _laco_class_for(path) if model_class is None else None
    if laco_class is not None:
        return _load_mllm(path, laco_class, processor, **kwargs)
    return _load_rebuilt(path, model_class or saved_class(path), processor, **kwargs)


def _laco_class_for(path: Path) -> type[nn.Module] | None:
    """The LaCo model class a checkpoint loads as, or ``None``: the config's ``model_type`` must have one and its
    ``architectures`` (if any) must name that class or a class it derives from, so a saved inner ``*Model`` (same
    ``model_type``, no LM head) is not loaded as the whole model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    model_class = laco_model_class(config.model_type)
    saved = (getattr(config, "architectures", None) or [None])[0]
    if model_class is None or saved is None:
        return model_class
    return model_class if saved in {cls.__name__ for cls in model_class.__mro__} else None


def _load_mllm(path: Path, model_class: type[nn.Module], processor: Any | None, **kwargs: Any) -> nn.Module:
    # a stock model_type loaded as its LaCo class is meant, not a mistake; any tensor that does not fit is one
    model = from_pretrained_strict(model_class, path, **kwargs).eval()
    if processor is not None:
        update_processor(model, processor)
    return model


def update_processor(model: nn.Module, processor: Any) -> None:
    """Bring ``processor`` in line with a whole MLLM laco already compressed (built from a saved config), as
    ``laco.apply(model, ..., processor=processor)`` would have; :func:`laco.remove` undoes it with the rest."""
    model_adapter, placement = find_model_adapter(model), placement_of(model)
    if model_adapter is None or placement is None:
        raise ValueError(
            f"processor= is for a whole MLLM laco compressed; this {type(model).__name__} is "
            f"{'not one laco knows' if model_adapter is None else 'not compressed'}. Leave processor out."
        )
    encoder, _ = model_adapter.encoder(model)
    encoder._laco.undo += model_adapter.install_processor(model, placement, processor)


def _load_rebuilt(path: Path, model_class: type[nn.Module], processor: Any | None, **kwargs: Any) -> nn.Module:
    """Load the pretrained weights, rebuild the compression from the config, then read the tensors laco owns."""
    from safetensors import safe_open
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # laco's keys are "unexpected" or "mismatched" until apply_from_config
    try:
        model, info = model_class.from_pretrained(
            path, output_loading_info=True, ignore_mismatched_sizes=True, use_safetensors=True, **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    apply_from_config(model, processor=processor)
    state = model.state_dict()
    mismatched = {entry[0] for entry in info.get("mismatched_keys", ())}
    compressor_keys = {name for name in state if f".{COMPRESSOR_ATTRIBUTE}." in name}
    expected = compressor_keys | ((set(info["missing_keys"]) | mismatched | set(info["unexpected_keys"])) & set(state))
    names = checkpoint_names(model, expected)  # save_pretrained may rename keys (Qwen-VL: model.visual -> visual)
    saved: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as handle:
            saved.update({names[name]: handle.get_tensor(name) for name in handle.keys() if name in names})
    other_unexpected = sorted(set(info["unexpected_keys"]) - set(state))
    missing = sorted(expected - set(saved))
    shapes = sorted(name for name, tensor in saved.items() if tensor.shape != state[name].shape)
    if missing or other_unexpected or shapes:
        raise CheckpointMismatch(
            f"checkpoint {path} does not match the model rebuilt from its config: missing {missing}, unexpected "
            f"{other_unexpected}, mis-shaped {shapes}. Point at the directory laco saved for this config."
        )
    model.load_state_dict(saved, strict=False)
    return model.eval()


__all__ = ["load", "update_processor"]
