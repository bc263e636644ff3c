"""laco's LLaVA-style MLLM as a vLLM model: the tower laco trained, vLLM's own LLM, paged KV cache and scheduler.

Imported by vLLM only (``laco.serve.register`` names this module lazily), never by ``import laco``.

* Vision tower: ``transformers``' own encoder built from ``config.vision_config``, with the saved LaCo merge
  applied by :func:`laco.apply_from_config`, exactly as ``LacoLlavaForConditionalGeneration`` builds it. Any
  encoder family and placement laco supports is served, and the image features equal ``laco generate``'s (see
  docs/serving.md for why this beats hooking vLLM's own CLIP/SigLIP towers, which have no DINOv2 at all).
* Projector: ``transformers``' ``LlavaMultiModalProjector`` (same weight names, same activation).
* LLM: vLLM's registered implementation of ``config.text_config`` (Llama, Qwen2, ...), so attention, the KV cache
  and batching are vLLM's.
* Processing: placeholders per image come from :func:`laco.serve.checkpoint.read_checkpoint` (the saved LaCo
  settings, before anything is encoded); pixels from laco's own image transform. vLLM's ``llava.py`` (which
  imports torchvision through Pixtral) is not imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoModel, BatchFeature
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
from vllm.config import VllmConfig

# vLLM's interface and helpers are stable public names; only their module paths are vLLM-internal.
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from .. import patch as laco_patch
from ..mllm.builder import resolve_attn_implementation
from ..mllm.processing import IMAGE_TAG, ImageTransform
from ..patch import apply_from_config
from .checkpoint import CheckpointError, ServeSpec, read_checkpoint
from .vllm_common import VllmLanguageModel, split_tower_weights

# vLLM's names for the causal LMs laco builds when a saved text config does not name its architecture
# (random-weight benchmark models are built from bare config classes).
_TEXT_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_TOWER_PREFIX = "model.vision_tower."


class LacoProcessingInfo(BaseProcessingInfo):
    @cached_property
    def spec(self) -> ServeSpec:
        return read_checkpoint(self.ctx.model_config.model, self.get_hf_config())

    @cached_property
    def transform(self) -> ImageTransform:
        spec = self.spec
        return ImageTransform(
            spec.image_size,
            spec.image_mean,
            spec.image_std,
            spec.image_resize,
            spec.image_crop_fraction,
            spec.image_resample,
        )

    def get_hf_processor(self, **kwargs: object):
        # laco's processing is the image transform below; there is no transformers ProcessorMixin to load.
        return self.transform

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"images_kwargs": set()}

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_num_image_tokens(self) -> int:
        # Every image is resized to the same square, so the count does not depend on the input size.
        return self.spec.num_image_tokens

    def get_image_size_with_most_features(self) -> ImageSize:
        return ImageSize(width=self.spec.image_size, height=self.spec.image_size)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_num_image_tokens()}


class LacoDummyInputsBuilder(BaseDummyInputsBuilder[LacoProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.spec.image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        size = self.info.spec.image_size
        overrides = (mm_options or {}).get("image")
        images = self._get_dummy_images(
            width=size, height=size, num_images=mm_counts.get("image", 0), overrides=overrides
        )
        return {"image": images}


def _as_pil(image: object) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.dtype == np.uint8:
        return Image.fromarray(image)
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.dtype == torch.uint8:
        return Image.fromarray(image.permute(1, 2, 0).numpy() if image.shape[0] in (1, 3) else image.numpy())
    raise ValueError(
        f"laco's processor takes PIL images or uint8 HxWxC arrays, got {type(image).__name__}; send the image as a "
        "file, URL or base64 data URL."
    )


class LacoMultiModalProcessor(BaseMultiModalProcessor[LacoProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        images = [_as_pil(image) for image in hf_data.get("images", [])]
        return BatchFeature({"pixel_values": self.info.transform(images)})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        # Called with only the items missing from vLLM's processor cache, possibly none: read nothing from them.
        token = self.info.spec.image_token_id
        return [
            PromptReplacement(modality="image", target=[token], replacement=[token] * self.info.get_num_image_tokens())
        ]


@MULTIMODAL_REGISTRY.register_processor(
    LacoMultiModalProcessor, info=LacoProcessingInfo, dummy_inputs=LacoDummyInputsBuilder
)
class LacoLlavaForVllm(VllmLanguageModel, nn.Module, SupportsMultiModal):
    """vLLM model class for ``LacoLlavaForConditionalGeneration`` checkpoints (registered under that name)."""

    # transformers 5 saves the LLaVA LLM as ``model.language_model.model.*`` (older: ``model.language_model.*``);
    # the longer prefix is listed first so it wins.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.model.": "language_model.model.",
            "model.language_model.": "language_model.model.",
            "model.vision_tower.": "vision_tower.",
            "model.multi_modal_projector.": "multi_modal_projector.",
            "lm_head.": "language_model.lm_head.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_TAG
        raise ValueError(f"laco models take images only, not {modality!r}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        # refuse before allocating anything, damaged or changed files included (sha256 digests)
        spec = read_checkpoint(vllm_config.model_config.model, config, verify_files=True)
        if spec.image_token != IMAGE_TAG:
            raise CheckpointError(
                f"{spec.directory}: image token {spec.image_token!r}; laco's vLLM plugin serves {IMAGE_TAG!r}, which "
                "every checkpoint laco writes uses."
            )
        self.config = config
        self.configure_mm_token_handling(config.text_config.vocab_size, [config.image_token_index])
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = build_vision_tower(config.vision_config)
            self.multi_modal_projector = LlavaMultiModalProjector(config)
        text_config = config.text_config
        architectures = text_config.architectures or [_text_architecture(text_config.model_type)]
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=architectures,
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """transformers' LLaVA feature selection: hidden state(s) of ``vision_feature_layer``, CLS dropped for the
        ``default`` strategy, then the projector."""
        tower_dtype = next(self.vision_tower.parameters()).dtype
        outputs = self.vision_tower(pixel_values.to(tower_dtype), output_hidden_states=True, return_dict=True)
        layers = self.config.vision_feature_layer
        chosen = [outputs.hidden_states[layer] for layer in ([layers] if isinstance(layers, int) else layers)]
        if self.config.vision_feature_select_strategy == "default":
            chosen = [hidden[:, 1:] for hidden in chosen]
        return self.multi_modal_projector(torch.cat(chosen, dim=-1))

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        pixel_values = kwargs.pop("pixel_values", None)
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        return tuple(self.image_features(pixel_values))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tower_weights: dict[str, torch.Tensor] = {}
        others = split_tower_weights(weights, _TOWER_PREFIX, tower_weights)
        loaded = AutoWeightsLoader(self).load_weights(others, mapper=self.hf_to_vllm_mapper)
        self.vision_tower = load_tower(self.vision_tower, tower_weights)
        return loaded | {f"vision_tower.{name}" for name, _ in self.vision_tower.named_parameters()}


def build_vision_tower(vision_config) -> nn.Module:
    """The encoder ``LlavaModel`` builds (``AutoModel.from_config``), compressed as ``vision_config.laco`` says.

    Attention as ``laco generate`` resolves it (eager on CPU, SDPA on GPU), so the features match it.
    """
    tower = AutoModel.from_config(
        vision_config, attn_implementation=resolve_attn_implementation("auto"), dtype=torch.get_default_dtype()
    )
    if getattr(vision_config, laco_patch.CONFIG_ATTRIBUTE, None):
        apply_from_config(tower)
    return tower.eval()


def load_tower(tower: nn.Module, saved: dict[str, torch.Tensor]) -> nn.Module:
    """The tower rebuilt from its saved weights (checkpoint names), replacing the placeholder ``tower``.

    ``save_pretrained`` writes some encoders under their legacy names (DINOv2's ``attention.attention.query``,
    which transformers 5 loads as ``attention.q_proj``), so the tower loads through transformers' own
    ``from_pretrained``, which knows every family's renames, and the compressors (unknown to transformers) are then
    taken by name, as :func:`laco.load` does. Any weight missing or left over is an error. Replacing the tower
    rather than copying into it keeps one tower in memory, not two.
    """
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = tower.config
    reference = next(tower.parameters())
    loaded, info = MODEL_MAPPING[type(config)].from_pretrained(
        None,
        config=config,
        state_dict=saved,
        dtype=reference.dtype,
        attn_implementation=config._attn_implementation,
        output_loading_info=True,
    )
    if getattr(config, laco_patch.CONFIG_ATTRIBUTE, None):
        apply_from_config(loaded)
    expected = {name for name in loaded.state_dict() if f".{laco_patch.COMPRESSOR_ATTRIBUTE}." in name}
    compressors = {name: tensor for name, tensor in saved.items() if name in expected}
    missing = sorted((set(info["missing_keys"]) - expected) | (expected - set(compressors)))
    unexpected = sorted(set(info["unexpected_keys"]) - expected)
    if missing or unexpected:
        raise CheckpointError(f"the vision tower's weights do not fit: missing {missing}, unexpected {unexpected}.")
    loaded.load_state_dict(compressors, strict=False)
    return loaded.to(reference.device).eval()


def _text_architecture(model_type: str) -> str:
    try:
        return _TEXT_ARCHITECTURES[model_type]
    except KeyError:
        raise CheckpointError(
            f"text_config names no architecture and laco does not know vLLM's class for model_type {model_type!r}; "
            "set text_config.architectures (e.g. ['LlamaForCausalLM']) in config.json."
        ) from None
