"""DINOv2 (``Dinov2Model``, ``Dinov2WithRegistersModel``): CLS (+ register) tokens, layer scale."""

from transformers import Dinov2Model, Dinov2WithRegistersModel

from .base import AttentionParts, EncoderAdapter, MlpParts
from .registry import register_adapter


@register_adapter
class Dinov2Adapter(EncoderAdapter):
    family = "dinov2"
    model_classes = (Dinov2Model, Dinov2WithRegistersModel)
    blocks_path = "encoder.layer"

    def num_prefix_tokens(self, model) -> int:
        return 1 + int(getattr(model.config, "num_register_tokens", 0))

    def mlp_parts(self, block) -> MlpParts | None:
        if not hasattr(block.mlp, "fc1"):  # SwiGLU variant (DINOv2-g)
            return None
        return MlpParts(block.norm2, block.mlp.fc1, block.mlp.fc2, block.layer_scale2.lambda1)

    def attention_parts(self, block) -> AttentionParts:
        attn = block.attention
        return AttentionParts(
            block.norm1,
            attn.o_proj,
            attn.num_attention_heads,
            attn.q_proj,
            attn.k_proj,
            attn.v_proj,
            scale=block.layer_scale1.lambda1,
            scaling=attn.scaling,
        )
