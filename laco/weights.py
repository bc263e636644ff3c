"""Weight I/O for every layer of laco: safetensors only, strict, and the key renaming ``transformers`` applies.

Every load is strict (:func:`from_pretrained_strict`): a checkpoint whose tensors do not fit the model its config
describes (missing, unexpected or mis-shaped, e.g. a compressor saved after another layer) is refused, naming the
keys, rather than loaded with random tensors in the gaps. Weights are read from safetensors only: a pickle file
(``.bin``, ``.pt``) can run arbitrary code when loaded, so laco never unpickles one.

This module is on the ground floor: it imports no other laco module, so anything may use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
    check_shards(path)
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


def checkpoint_names(model: nn.Module, keys: set[str]) -> dict[str, str]:
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


def saved_class(path: Path) -> type[nn.Module]:
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


def share_key_mapping(model_class: type[nn.Module], stock_class: type[nn.Module]) -> None:
    """Load and save checkpoints of ``model_class``, a laco subclass of ``stock_class``, with the key mapping
    ``transformers`` registers for the stock class: under its class name (Qwen2-VL, Qwen2.5-VL) or else its
    ``model_type`` (LLaVA and the others).

    ``transformers`` renames checkpoint keys on load (and back on save) by the model's class name or ``model_type``,
    and skips the stock mappings for classes defined outside it; without one, a stock checkpoint's keys do not meet
    the subclass's. The mapping is registered under the laco class name, which takes precedence, and the laco
    ``model_type``.
    """
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping

    mapping = _stock_mapping(stock_class.__name__) or _stock_mapping(stock_class.config_class.model_type)
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
        files = safetensors_files(path)
    except FileNotFoundError:
        return set()
    names: set[str] = set()
    for file in files:
        with safe_open(file, framework="pt") as handle:
            names.update(handle.keys())
    return names


def check_shards(path: str | Path) -> None:
    """Refuse a local sharded checkpoint whose index names shards that are not there, naming them."""
    index = Path(path) / "model.safetensors.index.json"
    if not index.is_file():
        return
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    missing = [shard for shard in shards if not (Path(path) / shard).is_file()]
    if missing:
        raise CheckpointMismatch(
            f"{path} is a sharded checkpoint whose index lists {len(shards)} shard(s), and {missing} are missing; "
            "copy the whole checkpoint directory (every model-*.safetensors file its index names)."
        )


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"no model.safetensors (or index) in {path}; laco only loads safetensors weights.")
    return [single]


__all__ = [
    "PICKLE_SUFFIXES",
    "CheckpointMismatch",
    "UnsafeWeights",
    "check_loading_info",
    "check_shards",
    "checkpoint_names",
    "from_pretrained_strict",
    "refuse_pickle",
    "safetensors_files",
    "saved_class",
    "saved_keys",
    "share_key_mapping",
    "stock_key_mapping",
]
