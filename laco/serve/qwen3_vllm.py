"""LaCo Qwen3-VL checkpoints (``laco convert`` output) as a vLLM model: :mod:`laco.serve.qwen_vllm` plus DeepStack.

Imported by vLLM only (``laco.serve.register`` names this module lazily), never by ``import laco``.

Qwen3-VL's tower also returns one feature map per DeepStack tap (``deepstack_visual_indexes``), each through its
own 2x2 merger; the LLM adds tap ``i``'s features to its hidden states at the image tokens after decoder layer
``i``. LaCo's hooks already handle the taps inside the tower (a tap after the merge runs a 1x merger; in
``compress_more`` a tap before the merge is averaged 2x2). Here:

* the image features vLLM caches are ``[main | tap 0 | tap 1 | ...]`` along the channels (one tensor per image, so
  vLLM's encoder cache and chunked prefill slice them per token as they slice any image's);
* :meth:`embed_input_ids` scatters the main part into the prompt's embeddings and keeps the taps, zero outside
  the image tokens, for the next forward;
* vLLM's own ``Qwen3ForCausalLM`` runs the LLM; a forward hook on each of its first decoder layers adds the
  kept tap to that layer's output (vLLM's layers return ``(hidden, residual)``, whose sum is the stream). vLLM's
  ``qwen3_vl.py``, which passes the taps as a forward argument, cannot be imported without torchvision.

The taps are held on the model between ``embed_input_ids`` and ``forward``: tested with ``--enforce-eager``; a
compiled LLM (torch.compile, CUDA graphs) would not see them change.

``mm_processor_kwargs={"laco": false}`` (the stock tower, per request) works as in :mod:`laco.serve.qwen_vllm`: the
stock tower's taps run through the stock DeepStack mergers, so its features have the same ``[main | taps]`` layout.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.multimodal import MULTIMODAL_REGISTRY

from .qwen_processing import LacoQwenDummyInputsBuilder, LacoQwenMultiModalProcessor, LacoQwenProcessingInfo
from .qwen_vllm import LacoQwenVLForVllm


class AddDeepStack:
    """Forward hook of LLM decoder layer ``level``: add the model's kept DeepStack tap ``level`` to its output."""

    def __init__(self, model: LacoQwen3VLForVllm, level: int) -> None:
        self.model, self.level = model, level

    def __call__(self, module, args, output):
        taps = self.model.deepstack_taps
        if taps is None:
            return None
        hidden, residual = output
        rows = min(hidden.shape[0], taps.shape[1])
        added = taps[self.level, :rows].to(hidden.dtype)
        hidden = torch.cat([hidden[:rows] + added, hidden[rows:]]) if rows < hidden.shape[0] else hidden + added
        return hidden, residual


@MULTIMODAL_REGISTRY.register_processor(
    LacoQwenMultiModalProcessor, info=LacoQwenProcessingInfo, dummy_inputs=LacoQwenDummyInputsBuilder
)
class LacoQwen3VLForVllm(LacoQwenVLForVllm):
    """vLLM model class for ``LacoQwen3VLForConditionalGeneration`` checkpoints."""

    llm_architecture = "Qwen3ForCausalLM"
    llm_reads_text_config = True  # vLLM's Qwen3ForCausalLM reads vocab_size etc. from the config it is given

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        vision = self.config.vision_config
        self.levels = len(vision.deepstack_visual_indexes)
        self.visual_width = int(vision.out_hidden_size)
        self.deepstack_taps: torch.Tensor | None = None  # (levels, tokens, width) for the next forward
        layers = self.language_model.model.layers
        if self.levels > len(layers):
            raise ValueError(f"{self.levels} DeepStack taps but the LLM has {len(layers)} decoder layers.")
        for level in range(self.levels):
            layers[level].register_forward_hook(AddDeepStack(self, level))

    def image_features(
        self, tower: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        dtype = next(tower.parameters()).dtype
        output = tower(pixel_values.to(dtype), grid_thw=grid_thw, return_dict=True)
        features = torch.cat([output.pooler_output, *output.deepstack_features], dim=-1)
        merge = tower.spatial_merge_size
        return features.split((grid_thw.prod(-1) // merge // merge).tolist())

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)
        flat = (
            torch.cat(list(multimodal_embeddings))
            if isinstance(multimodal_embeddings, (list, tuple))
            else (multimodal_embeddings)
        )
        main, *taps = flat.split(self.visual_width, dim=-1)
        embeds = super().embed_input_ids(input_ids, [main], is_multimodal=is_multimodal)
        kept = embeds.new_zeros(self.levels, embeds.shape[0], self.visual_width)
        kept[:, is_multimodal.to(embeds.device)] = torch.stack(taps).to(embeds.dtype)
        self.deepstack_taps = kept
        return embeds

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        try:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        finally:
            self.deepstack_taps = None  # a tap is added once, at the forward that follows its embedding


__all__ = ["AddDeepStack", "LacoQwen3VLForVllm"]
