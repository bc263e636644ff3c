"""The one check every entry point that answers with a LaCo checkpoint runs before loading it.

``laco eval``, ``laco generate`` and the lmms-eval model ``laco`` serve one model class,
:class:`laco.mllm.LacoLlavaForConditionalGeneration` (``model_type`` ``laco_llava``: a ``laco train`` run's
``final/`` or a ``laco convert`` output of a LLaVA checkpoint; a stock ``llava`` checkpoint loads as it too,
uncompressed). Handing them anything else used to load it as that
class anyway: a Qwen2.5-VL directory crashed inside transformers, a made-up ``model_type`` was accepted and
answered, converted Gemma3 / SmolVLM / LLaVA-NeXT checkpoints got advice about LLaVA. :func:`check_servable`
reads ``config.json`` as plain JSON (no config class, no remote code) and refuses, in one message naming the
family and the command that can take it, anything that is not laco's LLaVA; then it checks what would otherwise
fail deep inside the load: the saved LaCo settings (built on the ``meta`` device, no memory), the safetensors
files (cut short or empty) and their recorded content digests (:mod:`laco.digests`). ``laco eval``, ``laco
generate`` and the lmms-eval model also answer with every other family's LaCo checkpoint (``laco_<type>``, through
its own processor and chat template, which must be saved with it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..digests import check_weight_files

LACO_LLAVA = "laco_llava"
SERVED = (LACO_LLAVA, "llava")
"""What these entry points answer with: laco's LLaVA, and a stock LLaVA (it loads as laco's, uncompressed, with its
own processor: the uncompressed baseline)."""


class FamilyRefusal(ValueError):
    """A checkpoint this entry point cannot serve (another family, unknown, or broken); the message says which
    command can."""


class NoCheckpoint(FileNotFoundError):
    """A ``--model`` path that is not a checkpoint directory at all."""


def check_servable(directory: str | Path, entry: str, families: bool = False) -> Path:
    """Refuse ``directory`` unless ``entry`` (``laco eval``, ``laco generate``, ``lmms-eval --model laco``) can
    answer with it; returns it as a :class:`~pathlib.Path`. ``families``: the entry also answers with every other
    family's LaCo checkpoint (``laco_<type>``, through the checkpoint's own processor and chat template), as
    ``laco eval`` and ``laco generate`` do."""
    directory = Path(directory)
    config = _read_config(directory, entry)
    model_type = config.get("model_type")
    other = families and model_type not in SERVED and str(model_type).startswith("laco_")
    family_class = _laco_class(model_type) if other else None
    if model_type not in SERVED and family_class is None:
        raise FamilyRefusal(_family_message(directory, entry, model_type, config, families))
    _check_settings(directory, config, family_class)
    if family_class is not None:
        _check_chat_template(directory, entry)
    _check_weights(directory)
    return directory


def _check_chat_template(directory: Path, entry: str) -> None:
    """Another family is asked through its chat template: a checkpoint saved without one is refused up front."""
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = directory / name
        try:
            if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("chat_template"):
                return
        except (OSError, ValueError, AttributeError):
            continue
    raise FamilyRefusal(
        f"{directory} has no chat template, and {entry} asks this family's models through it; copy the original "
        "checkpoint's chat_template.jinja into the directory (or set processor.chat_template and save the processor)."
    )


def _read_config(directory: Path, entry: str) -> dict[str, Any]:
    where = "a run's final/ directory (laco train) or a `laco convert` output"
    if not directory.is_dir():
        raise NoCheckpoint(f"{directory} is not a directory; point {entry} at {where}.")
    path = directory / "config.json"
    if not path.is_file():
        raise NoCheckpoint(f"{directory} has no config.json; point {entry} at {where}.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FamilyRefusal(f"{path} is not readable JSON ({error}); restore it from where it came from.") from None
    if not isinstance(config, dict):
        raise FamilyRefusal(f"{path} holds a JSON {type(config).__name__}, not a model config object.")
    return config


def _family_message(directory: Path, entry: str, model_type: Any, config: dict[str, Any], families: bool) -> str:
    architectures = config.get("architectures") or []
    named = f", {architectures[0]}" if architectures and isinstance(architectures, list) else ""
    family = f"{directory} holds a model of model_type {model_type!r}{named}"
    serves = (
        f"{entry} serves LLaVA-style models only (model_type {LACO_LLAVA!r}: a laco train run's final/ or a `laco "
        "convert` output of a LLaVA checkpoint; or a stock 'llava' one, uncompressed)"
    )
    if families:  # laco eval / generate: every family's LaCo checkpoint
        serves = (
            f"{entry} serves LaCo checkpoints (model_type 'laco_<type>': a `laco convert` output or a laco train "
            "run's final/) and stock 'llava' ones (uncompressed)"
        )
    laco_class = _laco_class(model_type)
    if laco_class is None:
        return (
            f"{family}, a model type laco does not know; {serves}. Train one with `laco train`, or convert a "
            "supported checkpoint with `laco convert SRC DST --layer 1/4`."
        )
    stock = laco_class.stock_class.__name__ if hasattr(laco_class, "stock_class") else laco_class.__name__
    if str(model_type).startswith("laco_"):
        how = f"load it in Python with `laco.load('{directory}')` (or AutoModelForImageTextToText after `import laco`)"
        return f"{family}, a LaCo {stock} checkpoint; {serves}, and no laco command answers with {stock}: {how}."
    if _convertible(laco_class):
        answered = f"which {entry} answers with" if families else "which loads in Python with laco.load(DST)"
        how = f"`laco convert {directory} DST --layer 1/4` makes a LaCo {stock} checkpoint, {answered}"
    else:
        how = "compress it in Python with `laco.apply(model, layer='1/4', processor=processor)` (laco.apply docs)"
    unserved = f"{entry} does not answer with a stock {stock}" if families else f"no laco command answers with {stock}"
    return f"{family}, a stock {stock} checkpoint; {serves}, and {unserved}: {how}."


def _convertible(laco_class: type) -> bool:
    from ..adapters import find_model_adapter

    adapter = find_model_adapter(laco_class)
    return adapter is not None and not adapter.convert_refusal


def _laco_class(model_type: Any) -> type | None:
    from ..mllm.types import laco_model_class

    return laco_model_class(model_type) if isinstance(model_type, str) else None


def _check_settings(directory: Path, config: dict[str, Any], model_class: type | None = None) -> None:
    """Build the model the config describes (laco's LLaVA, or another family's LaCo ``model_class``) on the
    ``meta`` device: a bad ``vision_config.laco`` (an unknown method, a layer past the encoder's depth, a factor of
    0, not a mapping) fails here in one message naming the recorded value."""
    import torch

    from ..mllm import LacoLlavaForConditionalGeneration

    model_class = model_class or LacoLlavaForConditionalGeneration
    vision = config.get("vision_config")
    recorded = vision.get("laco") if isinstance(vision, dict) else None
    try:
        loaded = model_class.config_class.from_pretrained(directory)
        with torch.device("meta"):
            model_class(loaded)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
        raise FamilyRefusal(
            f"{directory}/config.json does not describe a {model_class.__name__} laco can build (vision_config.laco"
            f" = {json.dumps(recorded)}): {str(error).rstrip('.')}. Fix vision_config.laco (layers, method, factor "
            "as laco saved them) or point at the directory laco saved (laco convert, laco train's final/)."
        ) from None


def _check_weights(directory: Path) -> None:
    from ..weights import refuse_pickle

    refuse_pickle(directory)  # weights only as pickle files: refused with the reason, before any file is opened
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FamilyRefusal(
            f"{directory} has no safetensors weights (model.safetensors); laco loads safetensors only. Point at the "
            "directory laco saved."
        )
    check_weight_files(directory)


__all__ = ["FamilyRefusal", "LACO_LLAVA", "NoCheckpoint", "check_servable"]
