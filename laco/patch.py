"""Put a token compressor after any layer of a Hugging Face vision encoder, in place and reversibly.

How it works, without copying any upstream ``forward``:

* the compressor becomes a child module of block ``k`` (attribute ``laco_compressor``), so it is saved,
  moved, sharded and checkpointed with that block, and the pretrained weights keep their names;
* a forward pre-hook on the encoder asks the encoder's adapter for the *layout* of this call's tokens
  (:mod:`laco.adapters.layout`: prefix tokens and a row-major grid read from ``pixel_values`` for batched ViTs;
  packed per-image grids for native-resolution towers), so non-square and non-default image sizes work; the
  layout may hand the encoder index tensors it computed anyway (:meth:`TokenLayout.encoder_inputs`);
* a forward hook on block ``k`` (run before any other hook, so ``output_hidden_states`` records the merged
  tokens) lets that layout merge the image tokens and pass the others through;
* where the adapter says so, a forward pre-hook on every later block replaces the arguments the encoder
  computed for the full grid (attention segments, rotary embeddings) with those of the merged tokens;
* the adapter changes what else the placement's mode needs around the encoder (e.g. a post-encoder merger),
  and undoes it on :func:`remove`.

Each stage's layout is derived from the input layout, not carried from the previous stage, so recomputation
under gradient checkpointing sees the same layouts.

The model's own forward, attention implementation (eager / SDPA / FlashAttention), hidden-state capture and
gradient checkpointing keep working. :func:`remove` takes everything out again and restores bit-identical
outputs. The settings are recorded as ``model.config.laco`` so a saved model can be rebuilt (:func:`load`).

Only a plain attribute (``_laco``) is added to the patched *instance*; no library class is modified.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from .adapters import (
    EncoderAdapter,
    GenericAdapter,
    ModelAdapter,
    find_model_adapter,
    resolve_encoder,
    supported_names,
)
from .adapters.base import Undo
from .adapters.changes import Changes
from .adapters.layout import GridLayout, TokenLayout
from .compressors import TokenCompressor, build
from .compressors.from_block import block_options, init_from_block
from .functional import GridSize
from .hooks import COMPRESSOR_ATTRIBUTE, BlockInputsHook, InputHook, PatchState, Stage, StageHook
from .placement import FORMAT as PLACEMENT_FORMAT
from .placement import LayerSpec, Placement

CONFIG_ATTRIBUTE = "laco"
LACO_TYPE_PREFIX = "laco_"
"""A stock MLLM ``model_type`` X has the LaCo model type ``laco_X`` (:mod:`laco.mllm.types`)."""


# --------------------------------------------------------------------------------------------------------------
# apply / remove


def apply(
    model: nn.Module,
    layer: Placement | LayerSpec | Sequence[LayerSpec],
    method: str | None = None,
    factor: int | None = None,
    *,
    mode: str | None = None,
    processor: Any | None = None,
    blocks: nn.Module | str | None = None,
    num_prefix_tokens: int | None = None,
    patch_size: int | GridSize | None = None,
    grid: GridSize | None = None,
    hidden_size: int | None = None,
    **options: Any,
) -> nn.Module:
    """Compress visual tokens after ``layer`` of ``model``'s vision encoder, in place. Returns ``model``.

    Args:
        model: a supported Hugging Face vision encoder (SigLIP, CLIP, DINOv2, AIMv2, InternViT), a model that
            holds one (``CLIPModel``, ``SiglipModel``), a whole MLLM of a family laco knows (LLaVA, LLaVA-NeXT,
            LLaVA-OneVision, InternVL, Idefics3, SmolVLM, Gemma3: :mod:`laco.adapters.mllm`), or any ViT described
            by ``blocks=``.
        layer: a :class:`~laco.placement.Placement`, or after which block(s): an int k (1..L), a fraction of
            depth (0.25, ``"1/4"``), ``"last"``, or a list.
        method: a compressor name from :func:`laco.compressors.available` (default ``"laco"``, LaCo's patch merge).
        factor: merge ``factor x factor`` blocks of tokens (default 2).
        mode: see :data:`laco.placement.MODES` (default ``"auto"``).
        processor: the model's processor, updated in place (placeholder counts) where a whole-model adapter
            knows the model (:mod:`laco.adapters.model`).
        blocks, num_prefix_tokens, patch_size, grid, hidden_size: describe a ViT laco has no adapter for
            (see :class:`laco.adapters.GenericAdapter`).
        **options: passed to the compressor (``shortcut``, ``init``, ``hidden_dim``, ``pad``, ...).
    """
    _refuse_compile_wrapper(model, "laco.apply")
    placement = _placement_argument(layer, method, factor, mode, options)
    model_adapter = find_model_adapter(model) if blocks is None else None
    if model_adapter is not None:
        encoder, adapter = model_adapter.encoder(model)
    else:
        encoder, adapter = _encoder_and_adapter(model, blocks, num_prefix_tokens, patch_size, grid, hidden_size)
        if processor is not None:
            raise ValueError(
                f"processor= is for whole MLLMs laco knows ({supported_names('model')}); {type(model).__name__} is not "
                "one, so leave processor out and size its placeholders with laco.num_tokens."
            )
    if is_patched(encoder):
        raise ValueError("this encoder is already compressed by laco; call laco.remove(model) before applying again.")
    _warn_if_compiled(model, "laco.apply")

    block_list = adapter.blocks(encoder)
    placement = placement.resolve(len(block_list))
    if model_adapter is not None:
        placement = replace(placement, mode=model_adapter.resolve_mode(model, placement))
        model_adapter.check(model, placement)
    else:
        placement = replace(placement, mode=adapter.resolve_mode(encoder, placement))
    dim = adapter.hidden_size(encoder)
    built = [build_compressor_for_block(placement, dim, adapter, block_list[k - 1]) for k in placement.layers]

    state = _attach(encoder, adapter, placement, block_list, built)
    encoder._laco = state
    if model_adapter is not None:
        try:
            state.undo += model_adapter.install(model, placement, processor)
            state.undo += _save_as_laco_type(model, model_adapter)
        except Exception:
            remove(encoder)
            raise
    config = getattr(encoder, "config", None)
    if config is not None:
        setattr(config, CONFIG_ATTRIBUTE, {**placement.to_dict(), "format": PLACEMENT_FORMAT})
    return model


def _attach(
    encoder: nn.Module,
    adapter: EncoderAdapter,
    placement: Placement,
    block_list: Sequence[nn.Module],
    built: list[TokenCompressor],
) -> PatchState:
    """Make each compressor a child of its block and register the hooks that drive them."""
    state = PatchState(adapter, encoder, placement, stages=[])
    for index, (k, compressor) in enumerate(zip(placement.layers, built)):
        block = block_list[k - 1]
        block.add_module(COMPRESSOR_ATTRIBUTE, compressor)
        hook = block.register_forward_hook(StageHook(state, index), prepend=True)
        state.stages.append(Stage(k, block, hook))
    state.handles.append(encoder.register_forward_pre_hook(InputHook(state), with_kwargs=True))
    if adapter.rewrites_block_inputs:
        for block_index in range(placement.layers[0], len(block_list)):
            hook = BlockInputsHook(state, block_index)
            state.handles.append(block_list[block_index].register_forward_pre_hook(hook, with_kwargs=True))
    state.undo = adapter.install(encoder, placement, state)
    return state


def _save_as_laco_type(model: nn.Module, model_adapter: ModelAdapter) -> list[Undo]:
    """Give the config of a stock MLLM its LaCo model type, so ``save_pretrained`` writes a checkpoint that the Auto
    classes rebuild compressed (the LaCo config class differs from the stock one in ``model_type`` only); undone by
    :func:`remove`. A model that is already of a LaCo type, or of a class laco has no type for, is left alone."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = getattr(model, "config", None)
    if config is None or not isinstance(model, model_adapter.checkpoint_classes):
        return []
    name = f"{LACO_TYPE_PREFIX}{config.model_type}"
    laco_config = CONFIG_MAPPING[name] if name in CONFIG_MAPPING else None
    if laco_config is None or not issubclass(laco_config, type(config)):
        return []
    changes = Changes()
    changes.set(config, "__class__", laco_config)
    return changes.undo


def apply_from_config(model: nn.Module, *, processor: Any | None = None) -> nn.Module:
    """Re-apply the compression recorded in ``model.config.laco`` (for models built from a saved config).

    ``model`` may be an encoder or a whole MLLM laco knows (its tower's config holds the settings); ``processor`` is
    updated as :func:`apply` would update it.
    """
    encoder, _ = resolve_encoder(model)
    recorded = getattr(encoder.config, CONFIG_ATTRIBUTE, None)
    if not recorded:
        return model
    extra = {} if processor is None else {"processor": processor}
    return apply(model, Placement.from_dict(recorded), **extra)


def _placement_argument(
    layer: Placement | LayerSpec | Sequence[LayerSpec],
    method: str | None,
    factor: int | None,
    mode: str | None,
    options: dict[str, Any],
) -> Placement:
    if isinstance(layer, Placement):
        given = [name for name, value in (("method", method), ("factor", factor), ("mode", mode)) if value is not None]
        if given or options:
            raise ValueError(
                f"laco.apply got a Placement and also {given + sorted(options)}; put them in the Placement "
                "(e.g. placement.with_options(...)) or pass a layer spec instead."
            )
        placement = layer
    else:
        placement = Placement(layer, method or "laco", 2 if factor is None else factor, options, mode or "auto")
    if not placement.compressed:
        raise ValueError("laco.apply needs at least one layer to compress after (got none); leave the model as it is.")
    return placement


def _encoder_and_adapter(
    model: nn.Module,
    blocks: nn.Module | str | None,
    num_prefix_tokens: int | None,
    patch_size: int | GridSize | None,
    grid: GridSize | None,
    hidden_size: int | None,
) -> tuple[nn.Module, EncoderAdapter]:
    if blocks is not None:
        return model, GenericAdapter(
            blocks, num_prefix_tokens=num_prefix_tokens or 0, patch_size=patch_size, grid=grid, hidden_size=hidden_size
        )
    if any(value is not None for value in (num_prefix_tokens, patch_size, grid, hidden_size)):
        raise ValueError(
            "num_prefix_tokens=, patch_size=, grid= and hidden_size= describe a generic ViT; pass blocks= too."
        )
    return resolve_encoder(model)


def build_compressor_for_block(
    placement: Placement, dim: int, adapter: EncoderAdapter, block: nn.Module
) -> TokenCompressor:
    """The compressor that follows ``block``: on its device and dtype, initialised from the block where its ``init``
    says so (:mod:`laco.compressors.from_block`)."""
    options = block_options(placement.method, placement.option_dict, placement.factor, adapter, block)
    compressor = build(placement.method, dim, placement.factor, **options)
    reference = next(block.parameters(), None)
    if reference is not None:
        compressor.to(device=reference.device, dtype=reference.dtype)
    init_from_block(compressor, adapter, block)
    return compressor


def remove(model: nn.Module) -> nn.Module:
    """Undo :func:`apply`: drop the compressors and hooks; outputs become bit-identical to the original."""
    _refuse_compile_wrapper(model, "laco.remove")
    encoder = _patched_encoder(model)
    if encoder is None:
        raise ValueError("this model is not compressed by laco; nothing to remove.")
    _warn_if_compiled(model, "laco.remove")
    state: PatchState = encoder._laco
    for undo in reversed(state.undo):
        undo()
    for stage in state.stages:
        stage.hook.remove()
        delattr(stage.block, COMPRESSOR_ATTRIBUTE)
    for handle in state.handles:
        handle.remove()
    del encoder._laco
    config = getattr(encoder, "config", None)
    if config is not None and hasattr(config, CONFIG_ATTRIBUTE):
        delattr(config, CONFIG_ATTRIBUTE)
    return model


def stock_twin(model: nn.Module) -> nn.Module:
    """An uncompressed copy of a patched ``model`` that shares every parameter and buffer with it.

    For running the stock encoder and the compressed one side by side on one set of weights (laco's vLLM plugin
    answers a request for Qwen-VL's stock tower with it): a ``copy.deepcopy`` with the tensors mapped to themselves,
    then :func:`remove`d, so it computes exactly what ``model`` computed before :func:`apply`. ``model`` stays
    compressed and is never switched back and forth, so a forward of either that raises leaves nothing to restore.
    The twin holds the same tensor objects, ``requires_grad`` included (``model``'s flags are kept), so it is meant
    for inference; a tensor ``model`` gets later (a ``.to()`` that replaces a buffer) is not the twin's, so make the
    twin once the model is where it will run. Its modules and config are its own (a few KB, no weights)."""
    if _patched_encoder(model) is None:
        raise ValueError("this model is not compressed by laco; it already is the stock model.")
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    shared = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}
    twin = copy.deepcopy(model, shared)
    remove(twin)
    for parameter, flag in flags:  # remove() restored the flags apply() changed, on the tensors both share
        parameter.requires_grad_(flag)
    return twin


def _refuse_compile_wrapper(model: nn.Module, action: str) -> None:
    if hasattr(model, "_orig_mod"):
        raise ValueError(
            f"{action} got a torch.compile wrapper ({type(model).__name__}), whose traced graphs would not see the "
            f"change. Call {action} on the original model (wrapper._orig_mod), before compiling it or followed by "
            "torch.compiler.reset()."
        )


def _warn_if_compiled(model: nn.Module, action: str) -> None:
    """Warn when ``model`` is, or holds, a ``torch.compile``d module: Dynamo does not guard on module hooks by
    default (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a graph traced before this call keeps
    running as if it had not happened, with no error. Compiling after laco.apply is safe."""
    compiled = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if getattr(module, "_compiled_call_impl", None) is not None or hasattr(module, "_orig_mod")
    ]
    if compiled:
        warnings.warn(
            f"{action} on a compiled module ({compiled[0]}): graphs torch.compile traced before this call do not see "
            "it and keep running as they were. Call laco.apply before compiling, or torch.compiler.reset() after "
            "this call so the next call traces again.",
            UserWarning,
            stacklevel=3,
        )


def is_patched(model: nn.Module) -> bool:
    return _patched_encoder(model) is not None


def placement_of(model: nn.Module) -> Placement | None:
    """The (resolved) placement of a patched model, or ``None``."""
    encoder = _patched_encoder(model)
    return None if encoder is None else encoder._laco.placement


def compressors(model: nn.Module) -> list[TokenCompressor]:
    """The compressor modules of a patched model, in layer order."""
    encoder = _patched_encoder(model)
    if encoder is None:
        return []
    return [encoder._laco.compressor(index) for index in range(len(encoder._laco.stages))]


def _patched_encoder(model: nn.Module) -> nn.Module | None:
    if hasattr(model, "_laco"):
        return model
    try:
        encoder, _ = resolve_encoder(model)
    except ValueError:
        return None
    return encoder if hasattr(encoder, "_laco") else None


# --------------------------------------------------------------------------------------------------------------
# Token counts


def output_layout(model: nn.Module, image_size: int | GridSize | None = None) -> TokenLayout:
    """The layout of the tokens the (possibly compressed) encoder emits for one image of ``image_size``."""
    encoder = _patched_encoder(model)
    if encoder is None:
        encoder, adapter = resolve_encoder(model)
        return adapter.layout_for_image_size(encoder, Placement(), image_size)
    state: PatchState = encoder._laco
    layout = state.adapter.layout_for_image_size(encoder, state.placement, image_size)
    return state.layout_after(layout, len(state.stages))


def output_grid(model: nn.Module, image_size: int | GridSize | None = None) -> GridSize:
    """The grid of patch tokens the (possibly compressed) encoder emits for an image of ``image_size``."""
    layout = output_layout(model, image_size)
    if not isinstance(layout, GridLayout):
        raise ValueError(f"{type(model).__name__} packs its tokens ({type(layout).__name__}); use laco.num_tokens.")
    return layout.grid


def num_tokens(
    model: nn.Module, image_size: int | GridSize | None = None, *, include_prefix: bool = True, **inputs: Any
) -> int:
    """How many tokens one image becomes (``image_size`` defaults to the config's).

    For a whole MLLM laco knows (:mod:`laco.adapters.model`), what its LLM receives per image, as described by
    ``image_size`` or ``inputs`` (e.g. ``grid_thw=`` for packed towers); an MLLM sizes its image placeholders
    with this. For an encoder, the tokens it emits; ``include_prefix=False`` counts only grid tokens.
    """
    model_adapter = find_model_adapter(model)
    if model_adapter is not None:
        return model_adapter.num_tokens(model, placement_of(model) or Placement(), image_size, **inputs)
    if inputs:
        raise ValueError(f"{type(model).__name__} takes no {sorted(inputs)}; pass image_size.")
    return output_layout(model, image_size).num_tokens(include_prefix)
