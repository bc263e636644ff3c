"""Whole-model adapters: what changes around the vision encoder when LaCo goes into a multimodal LLM.

An :class:`EncoderAdapter` knows one vision tower's token layout. A :class:`ModelAdapter` knows the MLLM that
holds it: where its tower is, how many tokens the LLM receives per image (CLS dropped, tiles, newlines, post-encoder
pooling), which feature layers it reads, and what must follow a merge (placeholder counts in its config and in the
user's processor, a post-encoder merger made 1x for ``keep_llm_tokens``). ``laco.apply(mllm, layer,
processor=...)`` goes through it; ``laco.remove(mllm)`` runs its undo callables, then removes the encoder's merge.
Each family registers its adapter once (:mod:`laco.adapters.registry`); what laco does with the family's saved
checkpoints (the LaCo model types, ``laco convert``, ``laco train --init-from``) is data on the adapter.
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
    checkpoint_classes: tuple[type[nn.Module], ...] = ()
    """The stock classes whose checkpoints get a LaCo model type (:mod:`laco.mllm.types`), so a converted or
    saved compressed model reloads compressed through the Auto classes."""
    convert_refusal: str = ""
    """Why ``laco convert`` cannot write a checkpoint of this family (empty: it can), for its error message."""
    summary_image_size: tuple[int, int] | None = None
    """The image size (pixels) ``laco convert`` reports token counts for; ``None``: the model's own."""
    init_from_refusal: str = ""
    """What this family's processor gives its model that ``laco train``'s data pipeline does not produce (empty:
    ``laco train --init-from`` fine-tunes it), for the refusal's message."""
    connector_paths: tuple[str, ...] = ("model.multi_modal_projector",)
    """Submodules or parameters (paths from the whole model) of the connector between tower and LLM: the
    ``projector`` (or ``merger``) part training stages name; paths the model lacks are skipped."""
    llm_paths: tuple[str, ...] = ("model.language_model", "lm_head")
    """Submodules (paths from the whole model) of the LLM, the ``llm`` training part."""

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

    def saved_processor(self, model: nn.Module, placement: Placement, processor: Any) -> Any:
        """The processor ``laco convert`` saves beside a checkpoint compressed under ``placement``: by default
        ``processor`` itself, as :meth:`install` updated it. A family whose updated counts live on the instance
        (not in what ``save_pretrained`` writes) returns one whose class counts them."""
        return processor

    def laco_processor_class(self, model_class: type[nn.Module]) -> type | None:
        """The processor class the LaCo type of ``model_class`` is saved with, registered with ``AutoProcessor``
        (:mod:`laco.mllm.types`); ``None``: the stock one."""
        return None

    def num_tokens(
        self, model: nn.Module, placement: Placement, image_size: int | GridSize | None = None, **inputs: Any
    ) -> int:
        """Tokens the LLM receives for one image of ``image_size`` (or what ``inputs`` describe) when the model is
        compressed under ``placement`` (``Placement()``: not compressed)."""
        raise NotImplementedError


__all__ = ["ModelAdapter"]
