"""``laco train --init-from DST``: fine-tune a LaCo checkpoint instead of assembling a new model.

The checkpoint is what ``laco convert`` writes, or a ``laco train`` ``final/``: a LaCo model with its merge, and
its processor. It loads through :func:`laco.load` (strict, safetensors only).

* A LLaVA (``LacoLlavaForConditionalGeneration``, from a stock LLaVA or laco's own model) trains through laco's
  LLaVA pipeline, with :func:`laco.mllm.stock.load_processor`'s :class:`~laco.mllm.LacoProcessor`.
* Every other family trains through its own processor (``AutoProcessor``, or the LaCo Qwen-VL processor ``laco
  convert`` saved) and chat template: :mod:`laco.data.processor_data`. A family whose adapter still names an
  ``init_from_refusal`` is refused, naming what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..adapters import find_model_adapter
from ..weights import refuse_pickle


class InitFromError(ValueError):
    """A checkpoint ``laco train --init-from`` cannot fine-tune; the message names the class and what is missing."""


def check_init_from(path: str | Path) -> None:
    """Refuse, before any work, a directory that is not a LaCo LLaVA checkpoint laco can fine-tune."""
    from ..mllm import LacoLlavaForConditionalGeneration
    from ..mllm.types import laco_model_class

    path = Path(path)
    where = f"model.init_from={str(path)!r}"
    if not (path / "config.json").is_file():
        raise InitFromError(
            f"{where} has no config.json; point it at a `laco convert` output or a run's final/ directory."
        )
    refuse_pickle(path)
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    model_class = laco_model_class(str(model_type))
    if model_class is None:
        raise InitFromError(
            f"{where} is a {model_type!r} checkpoint, which laco cannot load as an MLLM. --init-from takes a LaCo "
            "LLaVA checkpoint: `laco convert SRC DST --layer 1/4` of a LlavaForConditionalGeneration or laco model."
        )
    adapter = find_model_adapter(model_class)
    if model_class is not LacoLlavaForConditionalGeneration and (adapter is None or adapter.init_from_refusal):
        missing = (adapter.init_from_refusal if adapter is not None else "") or "its own processor inputs"
        raise InitFromError(
            f"{where} is a {model_class.__name__}; this model needs {missing}, which laco train's data paths do not "
            "produce. Fine-tune it with its own processor (laco.load(...) gives the model, "
            "AutoProcessor.from_pretrained(...) the processor)."
        )


def load_init_from(path: str | Path, attn_implementation: str) -> tuple[Any, Any]:
    """The model (float32, for training) and :class:`~laco.mllm.LacoProcessor` of the checkpoint at ``path``."""
    from ..loading import load
    from ..mllm import LacoLlavaForConditionalGeneration, resolve_attn_implementation
    from ..mllm.stock import load_processor

    check_init_from(path)
    model = load(path, dtype=torch.float32)
    model.set_attn_implementation(resolve_attn_implementation(attn_implementation))
    if isinstance(model, LacoLlavaForConditionalGeneration):
        return model, load_processor(path, model)
    return model, own_processor(path)


def checkpoint_model_class(path: str | Path) -> type:
    """The LaCo model class of a saved checkpoint (a finished stage's ``final/``), from its ``config.json``."""
    from ..mllm.types import laco_model_class

    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    model_class = laco_model_class(str(model_type))
    if model_class is None:
        raise InitFromError(f"{path} holds a {model_type!r} model, not a LaCo MLLM; was it written by laco train?")
    return model_class


def checkpoint_processor(path: str | Path, model: Any) -> Any:
    """The processor a run trains ``model`` (loaded from ``path``) with: laco's for LLaVA, the family's own else."""
    from ..mllm import LacoLlavaForConditionalGeneration
    from ..mllm.stock import load_processor

    if isinstance(model, LacoLlavaForConditionalGeneration):
        return load_processor(path, model)
    return own_processor(path)


def own_processor(path: str | Path) -> Any:
    """The processor saved with a non-LLaVA checkpoint, as ``laco convert`` loads one: ``AutoProcessor``, or where
    torchvision is missing the same class without its video processor (laco trains on images only)."""
    from ..convert import load_family_processor

    try:
        return load_family_processor(path)
    except ValueError as error:
        raise InitFromError(str(error)) from None
