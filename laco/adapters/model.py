"""Whole-model adapters: what changes around the vision encoder when LaCo goes into a multimodal LLM.

An :class:`EncoderAdapter` knows one vision tower's token layout. A :class:`ModelAdapter` knows the MLLM that
holds it: where its tower is, how many tokens the LLM receives per image (CLS dropped, tiles, newlines, post-encoder
pooling), which feature layers it reads, and what must follow a merge (placeholder counts in its config and in the
user's processor, a post-encoder merger made 1x for ``keep_llm_tokens``). ``laco.apply(mllm, layer,
processor=...)`` goes through it; ``laco.remove(mllm)`` runs its undo callables, then removes the encoder's merge.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..placement import Placement
from .base import EncoderAdapter, GridSize, Undo


class ModelAdapter:
    """Describes one MLLM family. Subclasses set :attr:`model_classes` and implement :meth:`encoder`."""

    family: str = "mllm"
    model_classes: tuple[type[nn.Module], ...] = ()
    convert_refusal: str = ""
    """Why ``laco convert`` cannot write a checkpoint of this family (empty: it can), for its error message."""

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, self.model_classes)

    def encoder(self, model: nn.Module) -> tuple[nn.Module, EncoderAdapter]:
        """The vision tower inside ``model`` and its encoder adapter."""
        raise NotImplementedError

    def check(self, model: nn.Module, placement: Placement) -> None:
        """Refuse a (resolved) placement the model would skip or break, e.g. a merge after the feature layer the
        LLM reads; the message names the layer and the fix."""

    def resolve_mode(self, model: nn.Module, placement: Placement) -> str:
        """The concrete mode for this model; by default the encoder's adapter decides."""
        encoder, adapter = self.encoder(model)
        return adapter.resolve_mode(encoder, placement)

    def install(self, model: nn.Module, placement: Placement, processor: Any | None) -> list[Undo]:
        """Bring the model (and ``processor``, updated in place when given) in line with the merged encoder;
        returns the callables that undo it."""
        return []

    def install_processor(self, model: nn.Module, placement: Placement, processor: Any) -> list[Undo]:
        """Update ``processor`` in place for a model already compressed under ``placement`` (one rebuilt from a
        saved config, whose processor was not at hand); returns the callables that undo it. By default the
        processor needs no change."""
        return []

    def num_tokens(self, model: nn.Module, image_size: int | GridSize | None = None, **inputs: Any) -> int:
        """Tokens the LLM receives for one image of ``image_size`` (or what ``inputs`` describe)."""
        raise NotImplementedError


MODEL_ADAPTERS: list[ModelAdapter] = []


def register_model_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Add a whole-model adapter (checked before encoder adapters, most recently registered first)."""
    MODEL_ADAPTERS.insert(0, adapter)
    return adapter


def find_model_adapter(model: nn.Module) -> ModelAdapter | None:
    return next((adapter for adapter in MODEL_ADAPTERS if adapter.matches(model)), None)


__all__ = ["MODEL_ADAPTERS", "ModelAdapter", "find_model_adapter", "register_model_adapter"]
