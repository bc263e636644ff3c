"""Saved LaCo models: rebuild the compression recorded in a config, and load an encoder saved after apply.

A patched model records its placement as ``config.laco`` (see :func:`laco.apply`), so ``save_pretrained`` writes
the settings next to the compressors' weights (safetensors, under the blocks they follow) and these functions
rebuild both.

Every load is strict (:func:`from_pretrained_strict`): a checkpoint whose tensors do not fit the model its config
describes (missing, unexpected or mis-shaped, e.g. a compressor saved after another layer) is refused, naming the
keys, rather than loaded with random tensors in the gaps. Weights are read from safetensors only: a pickle file
(``.bin``, ``.pt``) can run arbitrary code when loaded, so laco never unpickles one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import resolve_encoder
from .patch import COMPRESSOR_ATTRIBUTE, CONFIG_ATTRIBUTE, apply
from .placement import Placement

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_SHOWN_KEYS = 8


class CheckpointMismatch(ValueError):
    """A checkpoint whose tensors do not fit the model its config describes."""


class UnsafeWeights(ValueError):
    """Weights offered only as pickle files, which laco refuses to load."""


def refuse_pickle(path: str | Path) -> None:
    """Refuse a local model directory whose weights exist only as pickle files (hub ids are left to the loader)."""
    path = Path(path)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeWeights(
            f"{path} holds its weights only as pickle file(s) {pickles}; laco loads safetensors only, because "
            "unpickling a file can run arbitrary code. If you trust the file, convert it once: "
            f"`AutoModel.from_pretrained('{path}').save_pretrained('{path}-safetensors')` (transformers writes "
            "safetensors), and load that directory."
        )


def check_loading_info(info: dict[str, Any], path: str | Path, *, ignore: Callable[[str], bool] | None = None) -> None:
    """Raise :class:`CheckpointMismatch` if transformers' ``output_loading_info`` reports any mismatch."""
    keep = (lambda key: not ignore(key)) if ignore is not None else (lambda key: True)
    problems = []
    for kind, label in (
        ("missing_keys", "missing"),
        ("unexpected_keys", "unexpected"),
        ("mismatched_keys", "mis-shaped"),
    ):
        keys = sorted(str(key if isinstance(key, str) else key[0]) for key in info.get(kind) or ())
        keys = [key for key in keys if keep(key)]
        if keys:
            shown = ", ".join(keys[:_SHOWN_KEYS]) + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else "")
            problems.append(f"{label}: {shown}")
    problems += [str(message) for message in info.get("error_msgs") or ()]
    if problems:
        raise CheckpointMismatch(
            f"the weights in {path} do not fit the model its config.json describes ("
            + "; ".join(problems)
            + "); loading them would leave tensors at random. Point at the directory laco saved for this config "
            "(a run's final/), or fix config.json (e.g. vision_config.laco.layers) to match the weights."
        )


def from_pretrained_strict(cls: Any, path: str | Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path)`` from safetensors only, refusing any missing, unexpected or mis-shaped tensor."""
    from transformers.utils import logging as hf_logging

    refuse_pickle(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers prints its load report and carries on; we raise instead
    try:
        model, info = cls.from_pretrained(path, use_safetensors=True, output_loading_info=True, **kwargs)
    except RuntimeError as error:
        if "mismatched_sizes" not in str(error) and "size mismatch" not in str(error):
            raise
        raise CheckpointMismatch(
            f"the weights in {path} do not fit the model its config.json describes: a tensor has another shape "
            f"({error}). Point at the directory laco saved for this config."
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loading_info(info, path)
    return model


def apply_from_config(model: nn.Module) -> nn.Module:
    """Re-apply the compression recorded in ``model.config.laco`` (for models built from a saved config)."""
    encoder, _ = resolve_encoder(model)
    recorded = getattr(encoder.config, CONFIG_ATTRIBUTE, None)
    if not recorded:
        return model
    return apply(model, Placement.from_dict(recorded))


def load(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a model saved (with ``save_pretrained``) after :func:`apply`, compressors included.

    A multimodal LLM of a family laco knows (a ``laco convert`` output, or a stock model saved after
    ``laco.apply``) loads as that family's LaCo class, which re-applies the compression from
    ``vision_config.laco`` before its weights load. A vision encoder loads through ``AutoModel.from_pretrained``
    (so its key conversions apply), the compression is rebuilt from ``config.laco`` and the compressor weights
    are read from the same safetensors file(s). Any other mismatch between checkpoint and model is an error.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    from .adapters.mllm.models import laco_model_class

    path = Path(path)
    refuse_pickle(path)
    model_class = laco_model_class(AutoConfig.from_pretrained(path).model_type)
    if model_class is not None:
        return _load_mllm(path, model_class, **kwargs)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the compressor keys are "unexpected" until apply_from_config; checked below
    try:
        model, info = AutoModel.from_pretrained(path, output_loading_info=True, use_safetensors=True, **kwargs)
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
        raise CheckpointMismatch(
            f"checkpoint {path} does not match the model: missing {missing}, unexpected {other_unexpected}."
        )
    model.load_state_dict(saved, strict=False)
    return model.eval()


def _load_mllm(path: Path, model_class: type[nn.Module], **kwargs: Any) -> nn.Module:
    # a stock model_type loaded as its LaCo class is meant, not a mistake; any tensor that does not fit is one
    return from_pretrained_strict(model_class, path, **kwargs).eval()


def share_key_mapping(model_class: type[nn.Module], like: str) -> None:
    """Load and save checkpoints of a laco subclass of a stock model with the key mapping ``transformers`` registers
    for the stock ``model_type`` ``like``.

    ``transformers`` renames checkpoint keys on load (and back on save) by the model's class name or ``model_type``,
    and skips the stock mappings for classes defined outside it; without one, a stock checkpoint's keys do not meet
    the subclass's. The mapping is registered under the class name, which takes precedence, and the laco
    ``model_type``.
    """
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping

    mapping = _stock_mapping(like)
    if mapping is not None:
        for name in (model_class.__name__, model_class.config_class.model_type):
            register_checkpoint_conversion_mapping(name, mapping, overwrite=True)


def stock_key_mapping(like: str) -> dict[str, str]:
    """The renames of a stock ``model_type``'s mapping as ``from_pretrained(key_mapping=...)`` takes them."""
    return {
        transform.source_patterns[0]: transform.target_patterns[0]
        for transform in _stock_mapping(like) or ()
        if len(transform.source_patterns) == len(transform.target_patterns) == 1
    }


def _stock_mapping(like: str) -> list | None:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return get_checkpoint_conversion_mapping(like)


def saved_keys(path: str | Path) -> set[str]:
    """The tensor names of a local safetensors checkpoint (empty if ``path`` is not one: a hub id, pickle weights)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        return set()
    try:
        files = _safetensors_files(path)
    except FileNotFoundError:
        return set()
    names: set[str] = set()
    for file in files:
        with safe_open(file, framework="pt") as handle:
            names.update(handle.keys())
    return names


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"no model.safetensors (or index) in {path}; laco only loads safetensors weights.")
    return [single]
