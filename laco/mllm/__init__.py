"""The LaCo multimodal LLM: LLaVA-style vision tower (optionally compressed) -> projector -> causal LM."""

from .builder import build_mllm, resolve_attn_implementation
from .loss import answer_loss
from .modeling import LacoLlavaConfig, LacoLlavaForConditionalGeneration
from .processing import IGNORE_INDEX, IMAGE_TAG, LacoProcessor, RecordError
from .transform import ImageTransform, encoder_transform

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TAG",
    "ImageTransform",
    "LacoLlavaConfig",
    "LacoLlavaForConditionalGeneration",
    "LacoProcessor",
    "RecordError",
    "answer_loss",
    "build_mllm",
    "encoder_transform",
    "resolve_attn_implementation",
]
