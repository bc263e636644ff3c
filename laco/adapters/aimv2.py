"""AIMv2 vision encoders (``Aimv2VisionModel``): no CLS, RMSNorm, SwiGLU MLP (no ``init="layer"``)."""

from transformers import Aimv2VisionModel

from .base import EncoderAdapter
from .registry import register_adapter


@register_adapter
class Aimv2Adapter(EncoderAdapter):
    family = "aimv2"
    model_classes = (Aimv2VisionModel,)
    blocks_path = "encoder.layers"
