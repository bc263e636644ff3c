"""What a server needs to know about a laco checkpoint, read and checked before any weight is loaded.

A serving engine fixes each image's placeholder count before the encoder runs, so the count must follow from the
saved settings alone. :func:`read_checkpoint` rebuilds the model on the ``meta`` device (shapes only, no memory,
no weights) with the saved LaCo settings and asks it, exactly as ``laco train`` sized the placeholders, then
checks that the config and the processor file agree. Everything here runs without vLLM, so the checks are
tested in laco's own environment too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import patch as laco_patch
from ..placement import Placement

ARCHITECTURE = "LacoLlavaForConditionalGeneration"
MODEL_TYPE = "laco_llava"


class CheckpointError(ValueError):
    """A checkpoint a server must refuse; the message names what is missing or wrong and how to fix it."""


@dataclass(frozen=True)
class ServeSpec:
    """The serving-relevant facts of one checkpoint directory."""

    directory: Path
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_token: str
    image_token_id: int
    num_image_tokens: int
    system_prompt: str | None
    settings: Placement | None  # None: saved uncompressed on purpose (``vision_config.laco: null``)
    image_resize: str = "squash"  # the rest of the saved image transform (laco.mllm.transform.ImageTransform)
    image_crop_fraction: float = 1.0
    image_resample: str = "bicubic"


def read_checkpoint(directory: str | Path, config: Any | None = None, *, verify_files: bool = False) -> ServeSpec:
    """Check ``directory`` (a ``laco train`` ``final/``) and return its :class:`ServeSpec`.

    ``config`` is the already-loaded ``LacoLlavaConfig`` (vLLM loads it itself); without it, ``config.json`` is
    read. Raises :class:`CheckpointError` for a checkpoint without LaCo settings, with settings from a newer
    laco, without ``laco_processor.json``, or whose placeholder counts disagree; with ``verify_files`` (the
    server does it once, before loading weights), also for a damaged safetensors file or a file that no longer
    matches the sha256 laco recorded (:mod:`laco.digests`; a directory without digests is checked by structure).
    """
    from ..mllm.processing import PROCESSOR_FILE

    directory = Path(directory)
    if config is None:
        config = _load_config(directory)
    _check_architecture(directory, config)
    if verify_files:
        check_files(directory)
    settings = _settings(directory, config)
    processor_path = directory / PROCESSOR_FILE
    if not processor_path.exists():
        raise CheckpointError(
            f"{directory} has no {PROCESSOR_FILE} (image size, normalisation, placeholder count): it was not saved by "
            "laco's LacoProcessor.save_pretrained. Save the processor next to the model."
        )
    processor = json.loads(processor_path.read_text())
    transform = processor["image_transform"]
    image_size = int(transform["size"])
    count = placeholder_count(config, image_size)
    recorded = {"config.json image_seq_length": getattr(config, "image_seq_length", None)}
    recorded[f"{PROCESSOR_FILE} num_image_tokens"] = processor.get("num_image_tokens")
    wrong = {name: value for name, value in recorded.items() if value is not None and int(value) != count}
    if wrong:
        raise CheckpointError(
            f"{directory}: the saved LaCo settings give {count} image tokens per {image_size} px image, but "
            f"{', '.join(f'{k} = {v}' for k, v in wrong.items())}; the checkpoint's files disagree. Re-save it "
            "with laco (build_mllm sets both from the model)."
        )
    return ServeSpec(
        directory=directory,
        image_size=image_size,
        image_mean=tuple(transform["mean"]),
        image_std=tuple(transform["std"]),
        image_token=processor.get("image_token", "<image>"),
        image_token_id=int(config.image_token_index),
        num_image_tokens=count,
        system_prompt=processor.get("system_prompt"),
        settings=settings,
        image_resize=transform.get("resize", "squash"),
        image_crop_fraction=float(transform.get("crop_fraction", 1.0)),
        image_resample=transform.get("resample", "bicubic"),
    )


def check_files(directory: Path) -> None:
    """Refuse weights cut short and files whose content changed since laco wrote them, naming the file."""
    from ..digests import DigestMismatch, check_weight_files

    try:
        check_weight_files(directory)
    except DigestMismatch as mismatch:
        raise CheckpointError(str(mismatch)) from None


def _load_config(directory: Path):
    from ..mllm import LacoLlavaConfig

    if not (directory / "config.json").exists():
        raise CheckpointError(f"{directory} has no config.json; point the server at a run's final/ directory.")
    return LacoLlavaConfig.from_pretrained(directory)


def _check_architecture(directory: Path, config: Any) -> None:
    if getattr(config, "model_type", None) != MODEL_TYPE:
        raise CheckpointError(
            f"{directory} is a {getattr(config, 'model_type', None)!r} checkpoint, not a laco one "
            f"(model_type {MODEL_TYPE!r}); laco's vLLM plugin serves checkpoints saved by laco train / build_mllm."
        )


def _settings(directory: Path, config: Any) -> Placement | None:
    vision = config.vision_config
    recorded = vision.to_dict() if hasattr(vision, "to_dict") else dict(vision)
    if laco_patch.CONFIG_ATTRIBUTE not in recorded:
        raise CheckpointError(
            f"{directory}/config.json has no LaCo settings: vision_config.{laco_patch.CONFIG_ATTRIBUTE} is missing "
            "(it holds the merge layers, method and factor, or null for an uncompressed model). Without it the "
            "server cannot know where the encoder merges tokens nor how many placeholders an image needs. Re-save "
            "the model with this laco (laco train or laco.mllm.build_mllm write it)."
        )
    data = recorded[laco_patch.CONFIG_ATTRIBUTE]
    if data is None:
        return None
    try:
        return Placement.from_dict(data)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{directory}: cannot read vision_config.laco: {error}") from error


def placeholder_count(config: Any, image_size: int) -> int:
    """Image tokens the LLM receives per ``image_size`` px image, from the model the saved config builds.

    The model is built on the ``meta`` device, so this costs no memory and no weight initialisation.
    """
    import copy

    import torch

    from ..mllm import LacoLlavaForConditionalGeneration

    # a copy: building the model brings its config in line with the merge, and the caller compares the saved one
    with torch.device("meta"):
        model = LacoLlavaForConditionalGeneration(copy.deepcopy(config))
    return model.num_image_tokens(image_size)
