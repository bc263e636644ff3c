"""LaCo Qwen2-VL and Qwen2.5-VL checkpoints (``laco convert`` output) as vLLM models.

Imported by vLLM only (``laco.serve.register`` names this module lazily), never by ``import laco``.

* Vision tower: ``transformers``' own packed tower (``Qwen2VisionTransformerPretrainedModel`` /
  ``Qwen2_5_VisionTransformerPretrainedModel``, built from ``config.vision_config`` as the stock model builds it),
  compressed by :func:`laco.apply_from_config` exactly as ``laco.load`` compresses it: the merge after block k with
  its ``cu_seqlens``, window seqlens and RoPE of the merged grid, the 1x merger in ``keep_llm_tokens``, the
  reordered 2x2 merger output in ``compress_more``. No forward code is copied from transformers or vLLM.
* LLM: vLLM's own ``Qwen2ForCausalLM`` with M-RoPE (:class:`SupportsMRoPE`): 3-D positions from each image's
  ``image_grid_thw`` on the LLM's token grid (the tower's merge size, times LaCo's factor in ``compress_more``).
* Processing: :mod:`laco.serve.qwen_processing` (the checkpoint's own LaCo processor, no torchvision).
* Per request, compressed or stock tower: ``mm_processor_kwargs={"laco": false}`` sends a request's images through
  the stock tower (a ``keep_llm_tokens`` checkpoint keeps the stock merger's tensors, and the LLM gets the same
  tokens per image either way). The stock tower is :func:`laco.patch.stock_twin` of the compressed one: the same
  parameter and buffer tensors, laco removed, built once; :meth:`embed_multimodal` splits a batch by each image's
  choice (:data:`~laco.serve.qwen_processing.TOWER_FIELD`) and returns the features in the batch's order. Nothing
  is switched in place, so a forward that raises leaves no tower half-switched. ``compress_more`` checkpoints and
  values other than true/false are refused per request (:func:`laco.serve.guards.compressed_tower_requested`).

vLLM's ``qwen2_vl.py`` is not imported: it imports torchvision through transformers' fast image processor.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMRoPE, SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from .. import patch as laco_patch
from ..mllm.builder import resolve_attn_implementation
from ..patch import apply_from_config
from ..placement import KEEP
from .checkpoint import CheckpointError, _settings, check_files
from .qwen_processing import (
    IMAGE_PLACEHOLDER,
    TOWER_FIELD,
    LacoQwenDummyInputsBuilder,
    LacoQwenMultiModalProcessor,
    LacoQwenProcessingInfo,
    llm_merge,
)
from .vllm_common import VllmLanguageModel, split_tower_weights

# the stock model's tower class for each vision config class (Qwen2_5_VLModel builds its tower the same way)
_TOWERS: dict[type, type[nn.Module]] = {
    Qwen2VLVisionConfig: Qwen2VisionTransformerPretrainedModel,
    Qwen2_5_VLVisionConfig: Qwen2_5_VisionTransformerPretrainedModel,
    Qwen3VLVisionConfig: Qwen3VLVisionModel,
}
_TOWER_PREFIX = "visual."


def build_tower(vision_config) -> nn.Module:
    """The family's transformers tower, compressed as ``vision_config.laco`` says (weights loaded later).

    Attention as ``laco.load`` resolves it for the device (eager on CPU, SDPA on GPU)."""
    tower_class = next((tower for cls, tower in _TOWERS.items() if isinstance(vision_config, cls)), None)
    if tower_class is None:
        raise CheckpointError(
            f"laco's vLLM plugin serves Qwen2-VL, Qwen2.5-VL and Qwen3-VL towers, not {type(vision_config).__name__}."
        )
    tower = tower_class._from_config(
        vision_config, attn_implementation=resolve_attn_implementation("auto"), dtype=torch.get_default_dtype()
    )
    if getattr(vision_config, laco_patch.CONFIG_ATTRIBUTE, None):
        apply_from_config(tower)
    return tower.eval()


def mrope_positions(num_tokens: int, images: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, int]:
    """M-RoPE positions ``(3, num_tokens)`` of a prompt and its decode offset (max position + 1 - length).

    ``images`` holds ``(offset, t, h, w)`` per image: its first placeholder and its grid of *LLM tokens*. Text
    tokens advance all three channels together; an image's tokens sit at ``start + (t, i, j)``, and the text after
    it continues from the largest position so far plus one (Qwen2-VL's rule, which ``get_rope_index`` implements).
    """
    parts, consumed, start = [], 0, 0
    for offset, t, h, w in sorted(images):
        if offset < consumed:
            raise ValueError(f"image placeholders overlap at token {offset}; the prompt's image ranges are wrong.")
        text = offset - consumed
        parts.append(torch.arange(text).expand(3, text) + start)
        start += text
        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
        parts.append(grid.reshape(3, -1) + start)
        start += max(t, h, w)
        consumed = offset + t * h * w
    tail = num_tokens - consumed
    parts.append(torch.arange(tail).expand(3, tail) + start)
    positions = torch.cat(parts, dim=1).long()
    delta = (int(positions.max()) + 1 if positions.numel() else 0) - num_tokens
    return positions, delta


@MULTIMODAL_REGISTRY.register_processor(
    LacoQwenMultiModalProcessor, info=LacoQwenProcessingInfo, dummy_inputs=LacoQwenDummyInputsBuilder
)
class LacoQwenVLForVllm(VllmLanguageModel, nn.Module, SupportsMultiModal, SupportsMRoPE):
    """vLLM model class for ``LacoQwen2VLForConditionalGeneration`` and ``LacoQwen2_5_VLForConditionalGeneration``."""

    llm_architecture = "Qwen2ForCausalLM"  # vLLM's class for the LLM
    llm_reads_text_config = False  # whether that class must be given text_config (it reads the whole config's)

    # transformers >= 4.52 saves model.language_model.* / model.visual.*; older checkpoints model.* / visual.*
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "model.visual.": "visual.",
            "lm_head.": "language_model.lm_head.",
            "model.": "language_model.model.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        raise ValueError(f"laco serves Qwen-VL checkpoints with images only, not {modality!r}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        directory = Path(vllm_config.model_config.model)
        if (directory / "config.json").exists():
            check_files(directory)  # refuse damaged or changed weight files before allocating anything
        self.placement = _settings(directory, config)
        self.config = config
        self.llm_merge = llm_merge(config)
        self.configure_mm_token_handling(config.text_config.vocab_size, [config.image_token_id])
        with self._mark_tower_model(vllm_config, "image"):
            self.visual = build_tower(config.vision_config)
        # the stock tower on the same tensors, built once the weights are in (a dict: not a second registered child)
        self._stock: dict[str, nn.Module] = {}
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                prefix=maybe_prefix(prefix, "language_model"),
                hf_config=config.text_config if self.llm_reads_text_config else None,
                architectures=[self.llm_architecture],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # -- M-RoPE ------------------------------------------------------------------------------------------------

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list) -> tuple[torch.Tensor, int]:
        images = []
        for feature in mm_features:
            if feature.modality != "image":
                raise ValueError(f"laco serves Qwen-VL checkpoints with images only, not {feature.modality!r}.")
            t, h, w = (int(value) for value in feature.data["image_grid_thw"].data.tolist())
            images.append((feature.mm_position.offset, t, h // self.llm_merge, w // self.llm_merge))
        return mrope_positions(len(input_tokens), images)

    # -- images ------------------------------------------------------------------------------------------------

    def image_features(
        self, tower: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """``tower``'s LLM tokens, one tensor per image (``pooler_output``, as the stock model takes it)."""
        dtype = next(tower.parameters()).dtype
        output = tower(pixel_values.to(dtype), grid_thw=grid_thw, return_dict=True)
        features = output.pooler_output
        # the tower's spatial_merge_size is its merge times LaCo's factor in compress_more (the adapter sets it)
        merge = tower.spatial_merge_size
        return features.split((grid_thw.prod(-1) // merge // merge).tolist())

    def tower(self, compressed: bool) -> nn.Module:
        """The checkpoint's tower (``compressed``), or the stock one: its :func:`laco.patch.stock_twin`."""
        if compressed or not laco_patch.is_patched(self.visual):
            return self.visual  # an uncompressed checkpoint's only tower is the stock one
        if self.placement.mode != KEEP:  # the processing refuses such requests; this guards the model itself
            raise ValueError(f"a {self.placement.mode} checkpoint's LLM cannot take the stock tower's features.")
        if "tower" not in self._stock:
            self._stock["tower"] = laco_patch.stock_twin(self.visual)
        return self._stock["tower"]

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        pixel_values, grid_thw = kwargs.pop("pixel_values", None), kwargs.pop("image_grid_thw", None)
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.cat(list(pixel_values))
        if isinstance(grid_thw, (list, tuple)):
            grid_thw = torch.stack([torch.as_tensor(row).reshape(3) for row in grid_thw])
        grid_thw = grid_thw.reshape(-1, 3).long().to(pixel_values.device)
        choices = tower_choices(kwargs.pop(TOWER_FIELD, None), len(grid_thw))
        if len(set(choices)) == 1:
            return self.image_features(self.tower(choices[0]), pixel_values, grid_thw)
        # a batch mixing requests for both towers: each group through its own, the features back in batch order
        per_image = pixel_values.split(grid_thw.prod(-1).tolist())
        features: list[torch.Tensor | None] = [None] * len(choices)
        for compressed in (True, False):
            group = [index for index, choice in enumerate(choices) if choice == compressed]
            pixels = torch.cat([per_image[index] for index in group])
            for index, image in zip(group, self.image_features(self.tower(compressed), pixels, grid_thw[group])):
                features[index] = image
        return features

    # -- LLM ---------------------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The LLM's weights through vLLM's loader; the tower's (compressor and 1x mergers included) by name."""
        tower: dict[str, torch.Tensor] = {}
        others = split_tower_weights(self.hf_to_vllm_mapper.apply(weights), _TOWER_PREFIX, tower)
        loaded = AutoWeightsLoader(self).load_weights(others)
        load_tower_weights(self.visual, tower)
        if self.placement is not None and self.placement.compressed and self.placement.mode == KEEP:
            self.tower(compressed=False)  # now, not at the first request: the twin must share the loaded tensors
        return loaded | {f"{_TOWER_PREFIX}{name}" for name, _ in self.visual.named_parameters()}


def tower_choices(field: object, images: int) -> list[bool]:
    """Per image, whether LaCo's tower encodes it, from the :data:`TOWER_FIELD` vLLM batched (a tensor, or a list
    of them where it could not stack them); every image compressed where the field is missing."""
    if field is None:
        return [True] * images
    parts = field if isinstance(field, (list, tuple)) else [field]
    choices = [bool(value) for part in parts for value in torch.as_tensor(part).reshape(-1).tolist()]
    if len(choices) != images:
        raise ValueError(f"{len(choices)} tower choices for {images} images; the batch's {TOWER_FIELD} is malformed.")
    return choices


def load_tower_weights(tower: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Every tensor of the compressed tower from the checkpoint, by name; anything missing or left over is an error.

    A Qwen-VL tower has no legacy names to rename, and laco's compressor and 1x mergers are children under the names
    ``laco convert`` saved them with, so a strict ``load_state_dict`` is the whole mapping.
    """
    expected = tower.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"the vision tower's weights do not fit: missing {missing}, unexpected {unexpected}.")
    reference = next(tower.parameters())
    tower.load_state_dict({name: tensor.to(reference.dtype) for name, tensor in saved.items()}, strict=True)


__all__ = ["LacoQwenVLForVllm", "build_tower", "load_tower_weights", "mrope_positions", "tower_choices"]
