"""vLLM's multimodal processing for LaCo Qwen2-VL / Qwen2.5-VL checkpoints, without torchvision.

Imported by vLLM only, through :mod:`laco.serve.qwen_vllm` (never by ``import laco``).

vLLM's own ``qwen2_vl.py`` cannot be imported where torchvision is missing (it imports transformers'
``image_processing_qwen2_vl``, which imports torchvision), so this module is laco's own processing info:

* the HF processor is the one ``laco convert`` saved (``LacoQwen2_5_VLProcessor`` ..., loaded by
  ``AutoProcessor`` with transformers' PIL image processor): it resizes, patches, and expands each
  ``<|image_pad|>`` into the image's placeholders, counted after laco's merge (its ``laco_factor``);
* each image's count is fixed by its ``image_grid_thw`` alone: ``t * h * w / (merge * factor)**2``, with ``factor``
  1 in ``keep_llm_tokens`` (the stock count) and the merge factor in ``compress_more`` (4x fewer tokens);
* the largest count (for vLLM's encoder cache and profiling) follows from the image processor's ``max_pixels``;
* ``mm_processor_kwargs`` ``{"laco": false}`` sends a request's images through the stock tower
  (:func:`laco.serve.guards.compressed_tower_requested` reads and checks it): each image carries the choice as a
  field (:data:`TOWER_FIELD`), as MiniCPM-V 4.6 carries its ``downsample_mode``, and the key never reaches the HF
  processor. The placeholder counts do not depend on it (``keep_llm_tokens`` gives the LLM the stock count), and
  vLLM's processor and encoder caches key each image by its ``mm_processor_kwargs`` too, so an image sent both
  ways is encoded both ways.

Images only: videos need transformers' video processor, which needs torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property

import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from ..placement import MORE
from .checkpoint import CheckpointError, _settings
from .guards import TOWER_KWARG, compressed_tower_requested

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
"""What one image is in a Qwen-VL prompt; the processor expands the ``<|image_pad|>`` in it."""
TOWER_FIELD = "laco_compressed"
"""The multimodal field that tells the model, per image, whether LaCo's tower (true) or the stock one encodes it."""


def llm_merge(config) -> int:
    """Patches per LLM token along each side: the tower's merge size, times LaCo's factor in ``compress_more``."""
    merge = int(config.vision_config.spatial_merge_size)
    placement = _settings(getattr(config, "name_or_path", "") or "the checkpoint", config)
    if placement is not None and placement.compressed and placement.mode == MORE:
        return merge * int(placement.factor)
    return merge


def llm_tokens(grid_thw: torch.Tensor, merge: int) -> int:
    """LLM tokens of one image or video of grid ``(t, h, w)`` (patches) when ``merge x merge`` patches make one."""
    t, h, w = (int(value) for value in grid_thw.tolist())
    return t * (h // merge) * (w // merge)


class LacoQwenProcessingInfo(BaseProcessingInfo):
    @cached_property
    def merge(self) -> int:
        return llm_merge(self.get_hf_config())

    @cached_property
    def factor(self) -> int:
        return self.merge // int(self.get_hf_config().vision_config.spatial_merge_size)

    def get_hf_processor(self, **kwargs: object):
        kwargs.pop(TOWER_KWARG, None)  # the model's choice, not the HF processor's (it would warn and ignore it)
        processor = self.ctx.get_hf_processor(**kwargs)
        saved = getattr(processor, "laco_factor", None)
        if saved is None or int(saved) != self.factor:
            raise CheckpointError(
                f"{self.ctx.model_config.model}: the processor ({type(processor).__name__}) counts placeholders with "
                f"laco_factor {saved}, but the model's LaCo settings need laco_factor {self.factor} (1 in "
                "keep_llm_tokens, the merge factor in compress_more); save the processor with `laco convert`, which "
                "writes laco_factor in processor_config.json."
            )
        return processor

    def get_image_processor(self, **kwargs: object):
        return self.get_hf_processor(**kwargs).image_processor

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def _unit(self) -> int:
        """Pixels per LLM token along each side."""
        return int(self.get_hf_config().vision_config.patch_size) * self.merge

    def _max_pixels(self) -> int:
        size = self.get_image_processor().size
        return int(size.get("longest_edge") or size.get("max_pixels"))

    def get_image_size_with_most_features(self) -> ImageSize:
        # the widest grid of LLM tokens the processor's max_pixels allows, as close to square as its factors go
        unit = self._unit()
        tokens = self._max_pixels() // (unit * unit)
        for count in range(tokens, 0, -1):
            rows = next(d for d in range(math.isqrt(count), 0, -1) if count % d == 0)
            if count // rows <= 200 * rows:  # the processor refuses aspect ratios above 200
                return ImageSize(width=unit * (count // rows), height=unit * rows)
        return ImageSize(width=unit, height=unit)

    def get_max_image_tokens(self) -> int:
        unit = self._unit()
        return max(1, self._max_pixels() // (unit * unit))

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_max_image_tokens()}


class LacoQwenDummyInputsBuilder(BaseDummyInputsBuilder[LacoQwenProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        size = self.info.get_image_size_with_most_features()
        overrides = (mm_options or {}).get("image")
        images = self._get_dummy_images(
            width=size.width, height=size.height, num_images=mm_counts.get("image", 0), overrides=overrides
        )
        return {"image": images}


class LacoQwenMultiModalProcessor(BaseMultiModalProcessor[LacoQwenProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        if hf_data.get("videos"):
            raise ValueError("laco serves Qwen-VL checkpoints with images only; videos are not supported.")
        self._compressed_tower(hf_kwargs)  # a refusal comes before the images are processed
        hf_kwargs = {key: value for key, value in hf_kwargs.items() if key != TOWER_KWARG}
        try:
            return super()._call_hf_processor(hf_data, hf_kwargs)
        except ValueError as error:  # vLLM's message names the processor only; the client needs laco's reason
            cause = error.__cause__
            if isinstance(cause, ValueError):
                raise ValueError(f"{cause} ({error})") from cause
            raise

    def _postprocess_hf_mm_data(
        self, mm_inputs: Mapping[str, object], hf_processor_mm_kwargs: Mapping[str, object], processed: BatchFeature
    ) -> BatchFeature:
        # every image carries its tower, so a batch that mixes requests can be split by it (and the cache keeps it)
        grid_thw = processed.get("image_grid_thw")
        if grid_thw is not None:
            compressed = self._compressed_tower(hf_processor_mm_kwargs)
            processed[TOWER_FIELD] = torch.full((len(grid_thw),), compressed, dtype=torch.bool)
        return processed

    def _compressed_tower(self, hf_kwargs: Mapping[str, object]) -> bool:
        # the request's kwargs over the server's --mm-processor-kwargs, as vLLM merges them for the HF processor
        merged = self.info.ctx.get_merged_mm_kwargs(hf_kwargs)
        return compressed_tower_requested(merged, stock_tower_fits=self.info.factor == 1)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        grid_thw = hf_inputs.get("image_grid_thw", torch.empty((0, 3), dtype=torch.long))
        fields = {
            "pixel_values": MultiModalFieldConfig.flat_from_sizes("image", grid_thw.prod(-1)),
            "image_grid_thw": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        }
        if TOWER_FIELD in hf_inputs:
            fields[TOWER_FIELD] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        token = self.info.get_tokenizer().get_vocab()[processor.image_token]
        merge = self.info.merge

        def replacement(index: int) -> list[int]:
            grid_thw = out_mm_kwargs["image"][index]["image_grid_thw"].data
            return [token] * llm_tokens(grid_thw, merge)

        return [PromptReplacement(modality="image", target=[token], replacement=replacement)]


__all__ = [
    "IMAGE_PLACEHOLDER",
    "TOWER_FIELD",
    "LacoQwenDummyInputsBuilder",
    "LacoQwenMultiModalProcessor",
    "LacoQwenProcessingInfo",
    "llm_merge",
    "llm_tokens",
]
