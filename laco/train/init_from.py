"""``laco train --init-from DST``: fine-tune a LaCo checkpoint instead of assembling a new model.

The checkpoint is what ``laco convert`` writes for a LLaVA (stock ``LlavaForConditionalGeneration`` or laco's own
model), or a ``laco train`` ``final/``: a ``LacoLlavaForConditionalGeneration`` with its merge, and its processor
(laco's, or the stock one ``laco convert`` updated). It loads through :func:`laco.load` (strict, safetensors only)
and :func:`laco.mllm.stock.load_processor`. laco's training data pipeline gives every image one square of pixels
and a fixed number of placeholders, which is what LLaVA takes; the other families laco converts need their own
processors' inputs, so they are refused here, naming what is missing.
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
    if model_class is not LacoLlavaForConditionalGeneration:
        adapter = find_model_adapter(model_class)
        missing = (adapter.init_from_refusal if adapter is not None else "") or "its own processor inputs"
        raise InitFromError(
            f"{where} is a {model_class.__name__}; laco train feeds LLaVA's inputs (one square image, a fixed "
            f"number of placeholders), and this model needs {missing}, which "
            "laco's training data pipeline does not produce. Fine-tune it with its own processor (laco.load(...) "
            "gives the model, AutoProcessor.from_pretrained(...) the processor); --init-from takes "
            "LacoLlavaForConditionalGeneration checkpoints."
        )


def load_init_from(path: str | Path, attn_implementation: str) -> tuple[Any, Any]:
    """The model (float32, for training) and :class:`~laco.mllm.LacoProcessor` of the checkpoint at ``path``."""
    from ..loading import load
    from ..mllm import resolve_attn_implementation
    from ..mllm.stock import load_processor

    check_init_from(path)
    model = load(path, dtype=torch.float32)
    model.set_attn_implementation(resolve_attn_implementation(attn_implementation))
    return model, load_processor(path, model)
