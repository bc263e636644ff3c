"""The LaCo multimodal LLM: LLaVA-style vision tower (optionally compressed) -> projector -> causal LM."""

from .builder import build_mllm, resolve_attn_implementation
from .loss import answer_loss
from .modeling import LacoLlavaConfig, LacoLlavaForConditionalGeneration
from .processing import IGNORE_INDEX, IMAGE_TAG, ImageTransform, LacoProcessor, RecordError

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
    "resolve_attn_implementation",
]
