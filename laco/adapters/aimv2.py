"""AIMv2 vision encoders (``Aimv2VisionModel``): no CLS, RMSNorm, SwiGLU MLP (no ``init="layer"``)."""

from transformers import Aimv2VisionModel

from .base import AttentionParts, EncoderAdapter
from .registry import register_adapter


@register_adapter
class Aimv2Adapter(EncoderAdapter):
    family = "aimv2"
    model_classes = (Aimv2VisionModel,)
    blocks_path = "encoder.layers"

    def attention_parts(self, block) -> AttentionParts:
        attn = block.attention
        return AttentionParts(
            block.rms_norm1, attn.out_proj, attn.num_heads, attn.q_proj, attn.k_proj, attn.v_proj, scaling=attn.scale
        )
