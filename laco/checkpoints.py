"""Saved LaCo models: rebuild the compression recorded in a config, and load an encoder saved after apply.

A patched model records its placement as ``config.laco`` (see :func:`laco.apply`), so ``save_pretrained`` writes
the settings next to the compressors' weights (safetensors, under the blocks they follow) and these functions
rebuild both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import resolve_encoder
from .patch import COMPRESSOR_ATTRIBUTE, CONFIG_ATTRIBUTE, apply
from .placement import Placement


def apply_from_config(model: nn.Module, *, processor: Any | None = None) -> nn.Module:
    """Re-apply the compression recorded in ``model.config.laco`` (for models built from a saved config).

    ``model`` may be an encoder or a whole MLLM laco knows (its tower's config holds the settings); ``processor`` is
    updated as :func:`laco.apply` would update it.
    """
    encoder, _ = resolve_encoder(model)
    recorded = getattr(encoder.config, CONFIG_ATTRIBUTE, None)
    if not recorded:
        return model
    extra = {} if processor is None else {"processor": processor}
    return apply(model, Placement.from_dict(recorded), **extra)


def load(
    path: str | Path, model_class: type[nn.Module] | None = None, *, processor: Any | None = None, **kwargs: Any
) -> nn.Module:
    """Load a model saved (with ``save_pretrained``) after :func:`apply`: an encoder, or a whole MLLM laco knows
    (e.g. ``Qwen2_5_VLForConditionalGeneration``), compressors and any module laco replaced included.

    The pretrained weights load through ``model_class.from_pretrained`` (default: the class ``config.json`` names,
    else ``AutoModel``), so its key conversions apply; the compression is rebuilt from ``config.laco`` (updating
    ``processor`` in place where the model's mode needs it); then every weight laco owns is read from the same
    safetensors file(s): the compressors, and modules laco replaced with others of a new shape (a Qwen-VL merger
    made 1x). Any other mismatch between checkpoint and model is an error.
    """
    from safetensors import safe_open
    from transformers.utils import logging as hf_logging

    path = Path(path)
    model_class = model_class or _saved_class(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # laco's keys are "unexpected" or "mismatched" until apply_from_config
    try:
        model, info = model_class.from_pretrained(
            path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    apply_from_config(model, processor=processor)
    state = model.state_dict()
    mismatched = {entry[0] for entry in info.get("mismatched_keys", ())}
    compressor_keys = {name for name in state if f".{COMPRESSOR_ATTRIBUTE}." in name}
    expected = compressor_keys | ((set(info["missing_keys"]) | mismatched | set(info["unexpected_keys"])) & set(state))
    names = _checkpoint_names(model, expected)  # save_pretrained may rename keys (Qwen-VL: model.visual -> visual)
    saved: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path):
        with safe_open(file, framework="pt") as handle:
            saved.update({names[name]: handle.get_tensor(name) for name in handle.keys() if name in names})
    other_unexpected = sorted(set(info["unexpected_keys"]) - set(state))
    missing = sorted(expected - set(saved))
    if missing or other_unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing}, unexpected {other_unexpected}."
        )
    model.load_state_dict(saved, strict=False)
    return model.eval()


def _checkpoint_names(model: nn.Module, keys: set[str]) -> dict[str, str]:
    """``{name in the checkpoint: name in the model}`` for ``keys``, through the renaming ``save_pretrained`` applies."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without weight conversions saves the model's own names
        return {key: key for key in keys}
    names = {}
    for key in keys:
        (saved_name,) = revert_weight_conversion(model, {key: torch.empty(0)})
        names[saved_name] = key
    return names


def _saved_class(path: Path) -> type[nn.Module]:
    """The class ``config.json`` names (``architectures``), found in ``transformers`` or its model's module."""
    import importlib

    import transformers
    from transformers import AutoConfig, AutoModel

    config_file = path / "config.json"
    names = (json.loads(config_file.read_text()).get("architectures") or []) if config_file.exists() else []
    if not names:
        return AutoModel
    found = getattr(transformers, names[0], None)
    if found is None:
        module = type(AutoConfig.from_pretrained(path)).__module__.replace(".configuration_", ".modeling_")
        found = getattr(importlib.import_module(module), names[0], None)
    return found or AutoModel


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"no model.safetensors (or index) in {path}; laco only loads safetensors weights.")
    return [single]
