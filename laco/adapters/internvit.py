"""InternViT as ``transformers`` ships it (``InternVLVisionModel``): CLS token, layer scale."""

from transformers import InternVLVisionModel

from .base import EncoderAdapter, MlpParts
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
