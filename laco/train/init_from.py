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

from ..checkpoints import refuse_pickle

# What each family's processor gives its model that laco's pipeline (one square image -> a fixed number of
# placeholders, LLaVA's input) does not produce.
MISSING = {
    "llava_next": "AnyRes tiles with image_sizes (a per-image count after unpadding) from LlavaNextProcessor",
    "llava_onevision": "AnyRes tiles with image_sizes, and video frames, from LlavaOnevisionProcessor",
    "internvl": "a variable number of tiles per image between <img>...</img> tokens from InternVLProcessor",
    "idefics3": "split, padded tiles (pixel_attention_mask) with row/column tokens from Idefics3Processor",
    "smolvlm": "split, padded tiles (pixel_attention_mask) with row/column tokens from SmolVLMProcessor",
    "gemma3": "<start_of_image> blocks with token_type_ids (bidirectional image attention) from Gemma3Processor",
}


class InitFromError(ValueError):
    """A checkpoint ``laco train --init-from`` cannot fine-tune; the message names the class and what is missing."""


def check_init_from(path: str | Path) -> None:
    """Refuse, before any work, a directory that is not a LaCo LLaVA checkpoint laco can fine-tune."""
    from ..adapters.mllm.models import laco_model_class
    from ..mllm import LacoLlavaForConditionalGeneration

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
        stock = model_class.config_class.model_type.removeprefix("laco_")
        raise InitFromError(
            f"{where} is a {model_class.__name__}; laco train feeds LLaVA's inputs (one square image, a fixed "
            f"number of placeholders), and this model needs {MISSING.get(stock, 'its own processor inputs')}, which "
            "laco's training data pipeline does not produce. Fine-tune it with its own processor (laco.load(...) "
            "gives the model, AutoProcessor.from_pretrained(...) the processor); --init-from takes "
            "LacoLlavaForConditionalGeneration checkpoints."
        )


def load_init_from(path: str | Path, attn_implementation: str) -> tuple[Any, Any]:
    """The model (float32, for training) and :class:`~laco.mllm.LacoProcessor` of the checkpoint at ``path``."""
    from ..checkpoints import load
    from ..mllm import resolve_attn_implementation
    from ..mllm.stock import load_processor

    check_init_from(path)
    model = load(path, dtype=torch.float32)
    model.set_attn_implementation(resolve_attn_implementation(attn_implementation))
    return model, load_processor(path, model)
