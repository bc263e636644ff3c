"""Turn a trained MLLM checkpoint into a LaCo checkpoint (``laco convert SRC DST --layer 1/4``).

The source model loads as the family's LaCo class (:mod:`laco.mllm.types`), :func:`laco.apply` puts the
merge in and updates the model's counts and its processor, and both are saved: the weights (safetensors only) keep
every pretrained tensor bit for bit under its name, the merge's tensors are the only new ones (checked after
writing), the config gains ``vision_config.laco`` and the LaCo ``model_type``, the processor its new placeholder
counts. ``AutoModelForImageTextToText.from_pretrained(DST)`` (after ``import laco``) and
``AutoProcessor.from_pretrained(DST)`` then give the compressed model and a processor that sizes its placeholders.
An untrained merge is average pooling, so the converted model works before any fine-tuning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .adapters import find_model_adapter
from .digests import write_digests
from .mllm.types import LACO_MODELS, laco_model_class
from .patch import CONFIG_ATTRIBUTE, apply, num_tokens, placement_of
from .placement import LayerSpec, Placement
from .weights import check_shards

PROCESSOR_ERRORS = (OSError, ValueError, ImportError, TypeError, KeyError)
logger = logging.getLogger(__name__)


def convert(
    src: str | Path,
    dst: str | Path,
    layer: Placement | LayerSpec,
    *,
    mode: str = "auto",
    method: str = "laco",
    factor: int = 2,
    processor: Any | None = None,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Write a LaCo version of the checkpoint ``src`` to ``dst``; returns a summary (placement, tokens per image or
    tile before and after, the new tensors).

    Args:
        src: a local checkpoint directory of a supported family (``laco.adapters.mllm``) or of laco's own model,
            with safetensors weights.
        dst: the directory to write (must be empty or absent unless ``overwrite``).
        layer, mode, method, factor, options: the placement, as for :func:`laco.apply`.
        processor: the model's processor, if it cannot be loaded from ``src`` with ``AutoProcessor``.
    """
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, overwrite)
    model = _load_source(src)
    processor = processor if processor is not None else load_saved_processor(src)
    size = find_model_adapter(model).summary_image_size
    before = num_tokens(model, size)
    placement = layer if isinstance(layer, Placement) else Placement(layer, method, factor, options, mode)
    apply(model, placement, processor=processor)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    find_model_adapter(model).saved_processor(model, placement_of(model), processor).save_pretrained(dst)
    new = _check_tensors_kept(src, dst)
    write_digests(dst)  # last: laco eval, the server and laco.load check the files against them
    recorded = getattr(model.config.vision_config, CONFIG_ATTRIBUTE)
    return {
        "placement": recorded,
        "image_size": size,
        "tokens_before": before,
        "tokens_after": num_tokens(model, size),
        "new_tensors": new,
    }


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src} has no config.json; pass a checkpoint directory saved with save_pretrained.")
    if not list(src.glob("*.safetensors")):
        pickled = sorted(p.name for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise ValueError(
            f"{src} has no safetensors weights{f' (only {pickled})' if pickled else ''}; laco converts safetensors "
            "checkpoints only, since pickle files can run code when loaded. Re-save the model with "
            "save_pretrained(..., safe_serialization=True) from a trusted environment first."
        )
    check_shards(src)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} is not empty; choose a new directory or pass overwrite=True (--overwrite).")
    if dst.resolve() == src.resolve():
        raise ValueError("dst must differ from src: the source checkpoint is kept as it is.")


def _load_source(src: Path) -> nn.Module:
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(src)
    model_class = laco_model_class(config.model_type)
    if model_class is None:
        supported = ", ".join(sorted(kind for kind, cls in LACO_MODELS.items() if not _convert_refusal(cls)))
        raise ValueError(f"laco cannot convert a {config.model_type!r} checkpoint; supported model types: {supported}.")
    refusal = _convert_refusal(model_class)
    if refusal:
        raise ValueError(f"laco cannot convert a {config.model_type!r} checkpoint: {refusal}.")
    if getattr(getattr(config, "vision_config", None), CONFIG_ATTRIBUTE, None):
        raise ValueError(
            f"{src} is already compressed by laco ({getattr(config.vision_config, CONFIG_ATTRIBUTE)}); convert the "
            "uncompressed checkpoint instead."
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "a model of type internvl to instantiate a model of type laco_internvl" is meant
    try:
        model = model_class.from_pretrained(src, dtype="auto", use_safetensors=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval()


def _convert_refusal(model_class: type[nn.Module]) -> str:
    """Why the family of ``model_class`` cannot be converted (its whole-model adapter says), or empty."""
    adapter = find_model_adapter(model_class)
    return adapter.convert_refusal if adapter is not None else ""


def load_saved_processor(src: Path) -> Any:
    from .mllm.processing import PROCESSOR_FILE, LacoProcessor

    if (src / PROCESSOR_FILE).exists():
        return LacoProcessor.from_pretrained(src)
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(src)
    except PROCESSOR_ERRORS as error:
        # LLaVA-OneVision, InternVL and SmolVLM processors carry a video processor, which needs torchvision even
        # where only images are converted: the conversion changes the image counts only, so it goes on without it
        without_video = _processor_without_video(src)
        if without_video is not None:
            return without_video
        raise ValueError(
            f"cannot load the processor of {src} with AutoProcessor ({type(error).__name__}: {error}); save the "
            "model's processor next to its weights (processor.save_pretrained), or in Python load it yourself and "
            "pass processor= to laco.convert."
        ) from error


def load_family_processor(path: str | Path) -> Any:
    """The processor saved with a converted (non-LLaVA) checkpoint, for training and answering through it: as
    :func:`load_saved_processor` loads it, and with a chat template, without which laco cannot write a conversation
    the way the model reads one."""
    processor = load_saved_processor(Path(path))
    if not getattr(processor, "chat_template", None):
        raise ValueError(
            f"the processor of {path} has no chat template, so laco cannot render records as the model reads them; "
            "save the original checkpoint's chat_template.jinja in the directory."
        )
    return processor


def _processor_without_video(src: Path) -> Any | None:
    """The processor ``src`` names, built from its image processor and tokenizer only (``None`` if it has no
    video processor to leave out, or still fails)."""
    import transformers

    try:
        name = json.loads((src / "processor_config.json").read_text()).get("processor_class", "")
    except (OSError, ValueError, AttributeError):
        return None
    stock = getattr(transformers, str(name), None)
    if stock is None or "video_processor" not in stock.get_attributes():
        return None
    attributes = [attribute for attribute in stock.get_attributes() if attribute != "video_processor"]
    images_only = type(stock.__name__, (stock,), {"get_attributes": classmethod(lambda cls: list(attributes))})
    try:
        processor = images_only.from_pretrained(src, video_processor=None)
    except PROCESSOR_ERRORS:
        return None
    logger.warning(
        "%s: loaded its %s without the video processor (torchvision is not installed); the converted checkpoint "
        "sizes image placeholders only, and its video preprocessor config is not copied.",
        src,
        stock.__name__,
    )
    return processor


def _tensors(directory: Path) -> dict[str, tuple[Path, str]]:
    found = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            found.update({name: (file, name) for name in handle.keys()})
    return found


def _read(where: tuple[Path, str]) -> torch.Tensor:
    with safe_open(where[0], framework="pt") as handle:
        return handle.get_tensor(where[1])


def _check_tensors_kept(src: Path, dst: Path) -> list[str]:
    """Every tensor of ``src`` is in ``dst`` under its name, bit for bit; returns the new tensors' names."""
    before, after = _tensors(src), _tensors(dst)
    missing = sorted(set(before) - set(after))
    changed = [
        name for name in sorted(set(before) & set(after)) if not torch.equal(_read(before[name]), _read(after[name]))
    ]
    if missing or changed:
        raise RuntimeError(
            f"the converted checkpoint in {dst} does not keep every tensor of {src}: missing {missing[:5]}, changed "
            f"{changed[:5]} ({len(missing)} and {len(changed)} in all). Was {src} saved by another transformers version "
            "(other key names)? Re-save it with this version first."
        )
    return sorted(set(after) - set(before))


def _size_label(size: tuple[int, int] | None) -> str:
    return "image (tile)" if size is None else f"{size[0]}x{size[1]} px image"


def describe(summary: dict[str, Any]) -> str:
    """One paragraph for the command line."""
    return (
        f"placement {json.dumps(summary['placement'])}\n"
        f"tokens per {_size_label(summary.get('image_size'))}: {summary['tokens_before']} -> {summary['tokens_after']}\n"
        f"new tensors: {len(summary['new_tensors'])} (laco's merge); every other tensor kept bit for bit"
    )


__all__ = ["convert", "describe"]
