"""CLIP vision encoders (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``): one CLS token."""

from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

from .base import AttentionParts, EncoderAdapter, MlpParts
from .registry import register_adapter


@register_adapter
class ClipAdapter(EncoderAdapter):
    family = "clip"
    model_classes = (CLIPVisionModel,)
    blocks_path = "encoder.layers"

    def matches(self, model) -> bool:
        return isinstance(model, (CLIPVisionModel, CLIPVisionModelWithProjection))

    def blocks(self, model):
        # CLIPVisionModelWithProjection keeps the encoder one level down, in .vision_model.
        root = model.vision_model if isinstance(model, CLIPVisionModelWithProjection) else model
        return root.get_submodule(self.blocks_path)

    def num_prefix_tokens(self, model) -> int:
        return 1

    def mlp_parts(self, block) -> MlpParts:
        return MlpParts(block.layer_norm2, block.mlp.fc1, block.mlp.fc2)

    def attention_parts(self, block) -> AttentionParts:
        attn = block.self_attn
        return AttentionParts(
            block.layer_norm1, attn.out_proj, attn.num_heads, attn.q_proj, attn.k_proj, attn.v_proj, scaling=attn.scale
        )
