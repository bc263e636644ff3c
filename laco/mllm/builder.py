"""Assemble a LaCo MLLM from a pretrained vision encoder and a pretrained causal LM."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import patch as laco_patch
from ..adapters import resolve_encoder
from ..config import IMAGE_POSITIONS
from ..placement import Placement
from ..pretrained import load_llm, load_vision
from .modeling import LacoLlavaConfig, LacoLlavaForConditionalGeneration
from .processing import IMAGE_TAG, LacoProcessor
from .transform import encoder_transform


def build_mllm(
    vision: str | PreTrainedModel = "dinov2-small",
    llm: str | tuple[PreTrainedModel, PreTrainedTokenizerBase] = "smollm2-135m",
    compression: Placement | None = None,
    *,
    image_size: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    resize: str | None = None,
    system_prompt: str | None = None,
    image_position: str = IMAGE_POSITIONS[0],
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> tuple[LacoLlavaForConditionalGeneration, LacoProcessor]:
    """Vision encoder (compressed as ``compression`` says; ``None``: uncompressed) -> new 2-layer MLP projector -> LLM.

    ``vision`` and ``llm`` are names understood by :mod:`laco.pretrained` (the offline defaults
    ``"dinov2-small"`` and ``"smollm2-135m"``, or any hub id / local path) or already-loaded models.
    The projector is freshly initialised; everything else keeps its pretrained weights. ``attn_implementation``
    (``"eager"``, ``"sdpa"``, ``"auto"`` = :func:`resolve_attn_implementation`) applies to the whole model.

    Images are prepared as the encoder's own image processor says (size, resize policy, mean/std; see
    :func:`laco.mllm.transform.encoder_transform`); ``image_size``, ``image_mean``, ``image_std`` and ``resize``
    (``"squash"``, ``"shortest_edge"`` or ``"pad"``) replace single values.
    """
    vision_model = load_vision(vision) if isinstance(vision, (str, Path)) else vision
    language_model, tokenizer = load_llm(llm) if isinstance(llm, (str, Path)) else llm
    if laco_patch.is_patched(vision_model):
        raise ValueError("pass the vision encoder uncompressed; build_mllm applies the compression itself.")
    vision_model, adapter = resolve_encoder(vision_model)
    compression = (compression or Placement()).resolve(len(adapter.blocks(vision_model)))

    prefix = adapter.num_prefix_tokens(vision_model)
    if prefix > 1:
        raise ValueError(f"{prefix} prefix tokens (registers) are not supported by the LLaVA feature selection yet.")
    source = vision if isinstance(vision, (str, Path)) else getattr(vision_model, "name_or_path", None)
    transform = encoder_transform(
        source,
        getattr(vision_model.config, "image_size", None),
        size=image_size,
        mean=image_mean,
        std=image_std,
        resize=resize,
    )
    _check_image_size(vision_model, transform.size)
    processor = LacoProcessor(
        tokenizer, transform, image_token=IMAGE_TAG, system_prompt=system_prompt, image_position=image_position
    )
    vision_config = vision_model.config.__class__.from_dict(vision_model.config.to_dict())
    for flag in ("vision_use_head", "use_head"):  # SigLIP / AIMv2 pooling heads: LLaVA reads tokens, not the pool
        if getattr(vision_config, flag, False):
            setattr(vision_config, flag, False)
    # The model applies it when built (LacoLlavaForConditionalGeneration.__init__). An uncompressed model records an
    # explicit null, so a laco checkpoint never lacks its settings: laco.serve refuses one that does, as it cannot
    # tell an uncompressed model from a checkpoint that lost them.
    setattr(vision_config, laco_patch.CONFIG_ATTRIBUTE, compression.to_dict() if compression.compressed else None)
    config = LacoLlavaConfig(
        vision_config=vision_config,
        text_config=language_model.config,
        image_token_index=processor.image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default" if prefix == 1 else "full",
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(language_model.config, "tie_word_embeddings", False)),
    )
    model = LacoLlavaForConditionalGeneration(config)
    _load_pretrained_parts(model, vision_model, language_model)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.image_seq_length = processor.num_image_tokens = model.num_image_tokens(processor.image_transform.size)
    _match_projector_scale(model, processor)
    if attn_implementation is not None:
        model.set_attn_implementation(resolve_attn_implementation(attn_implementation))
    return model.to(dtype).eval(), processor


def resolve_attn_implementation(name: str) -> str:
    """``"auto"`` is eager on CPU (measured faster for short MLLM sequences there) and SDPA on GPU."""
    if name == "auto":
        return "sdpa" if torch.cuda.is_available() else "eager"
    return name


@torch.no_grad()
def _match_projector_scale(model: LacoLlavaForConditionalGeneration, processor: LacoProcessor) -> None:
    """Rescale the new projector so image tokens enter the LLM at the RMS of its word embeddings.

    A default-initialised projector passes the encoder's scale through (DINOv2-S: ~25x the RMS of SmolLM2's
    embeddings), and the frozen LLM then spends the whole of stage 1 learning to ignore the magnitude.
    """
    size = processor.image_transform.size
    pixels = processor.image_transform([Image.new("RGB", (size, size), (128, 128, 128))])
    features = model.get_image_features(pixel_values=pixels.to(model.dtype)).pooler_output[0]
    target = model.get_input_embeddings().weight.float().pow(2).mean().sqrt()
    scale = target / features.float().pow(2).mean().sqrt().clamp_min(1e-6)
    projector = model.model.multi_modal_projector.linear_2
    projector.weight.mul_(scale)
    if projector.bias is not None:
        projector.bias.mul_(scale)


@torch.no_grad()
def _check_image_size(vision_model: PreTrainedModel, size: int) -> None:
    """Refuse a size the encoder cannot take, before the model is assembled around it.

    CLIP, SigLIP and AIMv2 have position embeddings for their own size only (LLaVA's forward does not interpolate
    them), where DINOv2 and InternViT interpolate; trying one image is the test that holds for every encoder.
    """
    own = getattr(vision_model.config, "image_size", None)
    if own in (size, (size, size), [size, size]):
        return
    parameter = next(vision_model.parameters())
    try:
        vision_model(torch.zeros(1, 3, size, size, dtype=parameter.dtype, device=parameter.device))
    except (RuntimeError, ValueError) as error:
        raise ValueError(
            f"the vision encoder ({type(vision_model).__name__}) does not take {size} px images ({error}); its own "
            f"size is {own}. Leave model.image_size unset (--image-size) to use it, or choose an encoder that "
            "interpolates its position embeddings (DINOv2, InternViT)."
        ) from None


def _load_pretrained_parts(
    model: LacoLlavaForConditionalGeneration, vision_model: PreTrainedModel, language_model: PreTrainedModel
) -> None:
    """Copy the pretrained encoder and LLM into the assembled model; only the compressors and projector stay new."""
    tower = model.model.vision_tower
    has_head = hasattr(tower, "head")
    weights = {k: v for k, v in vision_model.state_dict().items() if has_head or not k.startswith("head.")}
    missing, unexpected = tower.load_state_dict(weights, strict=False)
    missing = [key for key in missing if f".{laco_patch.COMPRESSOR_ATTRIBUTE}." not in key]
    if missing or unexpected:
        raise ValueError(f"vision weights do not fit the tower: missing {missing}, unexpected {unexpected}.")
    decoder = language_model.get_decoder()
    model.model.language_model.load_state_dict(decoder.state_dict())
    head = language_model.get_output_embeddings()
    if not model.config.tie_word_embeddings and head is not None:
        model.lm_head.load_state_dict(head.state_dict())
    model.tie_weights()
