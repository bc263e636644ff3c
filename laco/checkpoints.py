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


def apply_from_config(model: nn.Module) -> nn.Module:
    """Re-apply the compression recorded in ``model.config.laco`` (for models built from a saved config)."""
    encoder, _ = resolve_encoder(model)
    recorded = getattr(encoder.config, CONFIG_ATTRIBUTE, None)
    if not recorded:
        return model
    return apply(model, Placement.from_dict(recorded))


def load(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a vision encoder saved (with ``save_pretrained``) after :func:`apply`, compressors included.

    The pretrained weights load through ``AutoModel.from_pretrained`` (so its key conversions apply), the
    compression is rebuilt from ``config.laco`` and the compressor weights are read from the same
    safetensors file(s). Any other mismatch between checkpoint and model is an error.
    """
    from safetensors import safe_open
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    path = Path(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the compressor keys are "unexpected" until apply_from_config; checked below
    try:
        model, info = AutoModel.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    apply_from_config(model)
    expected = {name for name in model.state_dict() if f".{COMPRESSOR_ATTRIBUTE}." in name}
    saved: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path):
        with safe_open(file, framework="pt") as handle:
            saved.update({name: handle.get_tensor(name) for name in handle.keys() if name in expected})
    other_unexpected = sorted(set(info["unexpected_keys"]) - expected)
    missing = sorted((set(info["missing_keys"]) - expected) | (expected - set(saved)))
    if missing or other_unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing}, unexpected {other_unexpected}."
        )
    model.load_state_dict(saved, strict=False)
    return model.eval()


def share_key_mapping(model_type: str, like: str) -> None:
    """Load and save checkpoints of ``model_type`` with the key mapping ``transformers`` registers for ``like``.

    ``transformers`` renames checkpoint keys per model type on load (and back on save); a laco model type that
    subclasses a stock model needs the same mapping, or the stock checkpoint's keys do not meet the model's.
    """
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    mapping = get_checkpoint_conversion_mapping(like)
    if mapping is not None:
        register_checkpoint_conversion_mapping(model_type, mapping, overwrite=True)


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"no model.safetensors (or index) in {path}; laco only loads safetensors weights.")
    return [single]
