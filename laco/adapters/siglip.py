"""SigLIP vision encoders (``SiglipVisionModel``): no CLS token, GELU MLP."""

from transformers import SiglipVisionModel

from .base import AttentionParts, EncoderAdapter, MlpParts
from .registry import register_adapter


@register_adapter
class SiglipAdapter(EncoderAdapter):
    family = "siglip"
    model_classes = (SiglipVisionModel,)
    blocks_path = "encoder.layers"

    def mlp_parts(self, block) -> MlpParts:
        return MlpParts(block.layer_norm2, block.mlp.fc1, block.mlp.fc2)

    def attention_parts(self, block) -> AttentionParts:
        attn = block.self_attn
        return AttentionParts(
            block.layer_norm1, attn.out_proj, attn.num_heads, attn.q_proj, attn.k_proj, attn.v_proj, scaling=attn.scale
        )
