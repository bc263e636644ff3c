"""What laco's vLLM model classes share: the LLM half, run by vLLM's own model, and the split of a checkpoint's
weights between the tower (loaded by laco, by name) and everything vLLM's loader maps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from vllm.sequence import IntermediateTensors


class VllmLanguageModel:
    """``forward`` and ``compute_logits`` of a multimodal model whose ``self.language_model`` is a vLLM causal LM:
    the image features arrive as ``inputs_embeds``, merged by vLLM before the call."""

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)


def split_tower_weights(
    weights: Iterable[tuple[str, torch.Tensor]], prefix: str, tower: dict[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights not under ``prefix``, for vLLM's loader; those under it go into ``tower``, the prefix cut off."""
    for name, tensor in weights:
        if name.startswith(prefix):
            tower[name[len(prefix) :]] = tensor
        else:
            yield name, tensor


__all__ = ["VllmLanguageModel", "split_tower_weights"]
