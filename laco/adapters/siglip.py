"""SigLIP vision encoders (``SiglipVisionModel``): no CLS token, GELU MLP."""

from transformers import SiglipVisionModel

from .base import EncoderAdapter, MlpParts
from .registry import register_adapter


@register_adapter
class SiglipAdapter(EncoderAdapter):
    family = "siglip"
    model_classes = (SiglipVisionModel,)
    blocks_path = "encoder.layers"

    def mlp_parts(self, block) -> MlpParts:
        return MlpParts(block.layer_norm2, block.mlp.fc1, block.mlp.fc2)
