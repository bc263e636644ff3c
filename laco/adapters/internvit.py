"""InternViT as ``transformers`` ships it (``InternVLVisionModel``): CLS token, layer scale."""

from transformers import InternVLVisionModel

from .base import AttentionParts, EncoderAdapter, MlpParts
from .registry import register_adapter


@register_adapter
class InternVitAdapter(EncoderAdapter):
    family = "internvit"
    model_classes = (InternVLVisionModel,)
    blocks_path = "encoder.layer"

    def num_prefix_tokens(self, model) -> int:
        return 1

    def mlp_parts(self, block) -> MlpParts:
        return MlpParts(block.layernorm_after, block.mlp.fc1, block.mlp.fc2, block.lambda_2)

    def attention_parts(self, block) -> AttentionParts | None:
        attn = block.attention
        if getattr(attn.config, "use_qk_norm", False):  # qk-norm (InternViT-6B): not a plain attention
            return None
        return AttentionParts(
            block.layernorm_before,
            attn.projection_layer,
            attn.num_heads,
            attn.q_proj,
            attn.k_proj,
            attn.v_proj,
            scale=block.lambda_1,
            scaling=attn.scale,
        )
