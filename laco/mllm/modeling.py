"""A LLaVA-style multimodal LLM whose vision encoder may be compressed by laco at any depth.

It *is* ``transformers``' own ``LlavaForConditionalGeneration`` (vision tower -> 2-layer MLP projector -> causal
LM, ``<image>`` placeholders, ``pixel_values`` / ``input_ids`` / ``labels``, ``generate`` with the KV cache),
with one addition made through the constructor: if ``config.vision_config.laco`` holds LaCo settings, the
compression is applied to the vision tower when the model is built. So ``save_pretrained`` writes the
compressors' weights (safetensors) and settings (config.json), and ``from_pretrained`` rebuilds both.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, LlavaConfig, LlavaForConditionalGeneration

from .. import patch as laco_patch
from ..adapters import resolve_encoder
from ..checkpoints import apply_from_config


@strict
class LacoLlavaConfig(LlavaConfig):
    """``LlavaConfig`` with its own ``model_type``, so Auto classes rebuild the LaCo model.

    The compression lives in ``vision_config.laco`` (see :class:`laco.Placement`); ``image_seq_length`` is the
    number of placeholder tokens per image *after* compression.
    """

    model_type = "laco_llava"


class LacoLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = LacoLlavaConfig

    def __init__(self, config: LacoLlavaConfig) -> None:
        super().__init__(config)
        tower = self.model.vision_tower
        if getattr(config.vision_config, laco_patch.CONFIG_ATTRIBUTE, None):
            apply_from_config(tower)
        self._check_feature_layer()
        # No padding row in the LLM's embedding, whatever the config says. The Trainer copies the tokenizer's pad id
        # (the EOS token for most chat LLMs) into the saved config, and nn.Embedding(padding_idx=EOS) would freeze
        # the EOS row of a model loaded from that config but not of the one build_mllm assembled: a run resumed
        # from a saved stage would train differently. Padded positions are masked (attention mask, labels), so no
        # model needs the row; padding_idx only changes gradients, never a forward pass.
        embeddings = self.get_input_embeddings()
        if isinstance(embeddings, nn.Embedding):
            embeddings.padding_idx = None

    @property
    def vision_tower(self):
        return self.model.vision_tower

    def _check_feature_layer(self) -> None:
        """The LLM reads ``hidden_states[vision_feature_layer]``: a compression after that layer would be skipped."""
        placement = laco_patch.placement_of(self.vision_tower)
        feature_layer = self.config.vision_feature_layer
        if placement is None or not isinstance(feature_layer, int):
            return
        _, adapter = resolve_encoder(self.vision_tower)
        depth = len(adapter.blocks(self.vision_tower))
        read_after = feature_layer % (depth + 1)
        if max(placement.layers) > read_after:
            raise ValueError(
                f"the LLM reads the vision tower's hidden state after layer {read_after} (vision_feature_layer="
                f"{feature_layer}) but laco compresses after layer {max(placement.layers)}, which would be ignored; "
                "use vision_feature_layer=-1 or compress at an earlier layer."
            )

    def num_image_tokens(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Placeholder tokens one image needs: the compressed grid (plus prefix tokens with the ``full`` strategy)."""
        tokens = laco_patch.num_tokens(self.vision_tower, image_size, include_prefix=True)
        if self.config.vision_feature_select_strategy == "default":
            tokens -= 1  # LLaVA's "default" strategy drops the CLS token
        return tokens


AutoConfig.register(LacoLlavaConfig.model_type, LacoLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(LacoLlavaConfig, LacoLlavaForConditionalGeneration, exist_ok=True)
