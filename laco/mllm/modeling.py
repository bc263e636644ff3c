"""A LLaVA-style multimodal LLM whose vision encoder may be compressed by laco at any depth.

It *is* ``transformers``' own ``LlavaForConditionalGeneration`` (vision tower -> 2-layer MLP projector -> causal
LM, ``<image>`` placeholders, ``pixel_values`` / ``input_ids`` / ``labels``, ``generate`` with the KV cache),
with one addition made through the constructor: if ``config.vision_config.laco`` holds LaCo settings, the
compression is applied to the model when it is built (through LLaVA's whole-model adapter, which refuses merges
after the feature layer the LLM reads). So ``save_pretrained`` writes the compressors' weights (safetensors) and
settings (config.json), and ``from_pretrained`` rebuilds both. ``from_pretrained`` also loads a stock LLaVA
checkpoint (uncompressed until :func:`laco.apply`), renaming its keys as stock LLaVA does.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, LlavaConfig, LlavaForConditionalGeneration

from .. import patch as laco_patch
from ..patch import apply_from_config
from ..weights import saved_keys, stock_key_mapping

STOCK_PREFIXES = ("language_model.", "vision_tower.", "multi_modal_projector.")
"""How a stock LLaVA checkpoint's keys begin (``LlavaForConditionalGeneration`` saves them so)."""


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
            # The whole-model adapter counts tokens at the tower's own image size; laco's model is used at its
            # processor's size (112 px for the default DINOv2-S, whose tower says 518), and build_mllm recorded the
            # count at that size. Keep it: serving and the processor check against it.
            recorded = getattr(config, "image_seq_length", None)
            apply_from_config(self)
            if recorded is not None:
                config.image_seq_length = recorded
        # No padding row in the LLM's embedding, whatever the config says. The Trainer copies the tokenizer's pad id
        # (the EOS token for most chat LLMs) into the saved config, and nn.Embedding(padding_idx=EOS) would freeze
        # the EOS row of a model loaded from that config but not of the one build_mllm assembled: a run resumed
        # from a saved stage would train differently. Padded positions are masked (attention mask, labels), so no
        # model needs the row; padding_idx only changes gradients, never a forward pass.
        embeddings = self.get_input_embeddings()
        if isinstance(embeddings, nn.Embedding):
            embeddings.padding_idx = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``from_pretrained``, also for a stock LLaVA checkpoint: its keys (``language_model.lm_head``, ...) are
        renamed as ``LlavaForConditionalGeneration`` renames them, where they would otherwise miss the model and leave
        the LM head silently re-initialised. laco's own checkpoints keep the names they are saved with (which the
        Trainer's checkpoint resume loads directly), so the renaming applies only where the saved keys need it."""
        if "key_mapping" not in kwargs and any(
            name.startswith(STOCK_PREFIXES) for name in saved_keys(pretrained_model_name_or_path)
        ):
            kwargs["key_mapping"] = stock_key_mapping("llava")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @property
    def vision_tower(self):
        return self.model.vision_tower

    def num_image_tokens(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Placeholder tokens one image needs: the compressed grid (plus prefix tokens with the ``full`` strategy)."""
        return laco_patch.num_tokens(self, image_size)


AutoConfig.register(LacoLlavaConfig.model_type, LacoLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(LacoLlavaConfig, LacoLlavaForConditionalGeneration, exist_ok=True)
