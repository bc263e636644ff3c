"""A LLaVA-style multimodal LLM whose vision encoder may be compressed by laco at any depth.

It *is* ``transformers``' own ``LlavaForConditionalGeneration`` (vision tower -> 2-layer MLP projector -> causal
LM, ``<image>`` placeholders, ``pixel_values`` / ``input_ids`` / ``labels``, ``generate`` with the KV cache),
with one addition made through the constructor: if ``config.vision_config.laco`` holds LaCo settings, the
compression is applied to the model when it is built (through LLaVA's whole-model adapter, which refuses merges
after the feature layer the LLM reads). So ``save_pretrained`` writes the compressors' weights (safetensors) and
settings (config.json), and ``from_pretrained`` rebuilds both. Its checkpoints use LLaVA's key names, so
``from_pretrained`` also loads a stock LLaVA checkpoint (uncompressed until :func:`laco.apply`).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForImageTextToText, LlavaConfig, LlavaForConditionalGeneration

from .. import patch as laco_patch
from ..checkpoints import apply_from_config, share_key_mapping


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
        if getattr(config.vision_config, laco_patch.CONFIG_ATTRIBUTE, None):
            apply_from_config(self)

    @property
    def vision_tower(self):
        return self.model.vision_tower

    def num_image_tokens(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Placeholder tokens one image needs: the compressed grid (plus prefix tokens with the ``full`` strategy)."""
        return laco_patch.num_tokens(self, image_size)


AutoConfig.register(LacoLlavaConfig.model_type, LacoLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(LacoLlavaConfig, LacoLlavaForConditionalGeneration, exist_ok=True)
# Stock LLaVA saves and loads its checkpoints with a key mapping registered for model_type "llava"; without the same
# mapping a LLaVA checkpoint loads with its LM head silently re-initialised (language_model.lm_head -> lm_head).
share_key_mapping(LacoLlavaForConditionalGeneration, "llava")
