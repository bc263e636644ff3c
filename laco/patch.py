"""Put a token compressor after any layer of a Hugging Face vision encoder, in place and reversibly.

How it works, without copying any upstream ``forward``:

* the compressor becomes a child module of block ``k`` (attribute ``laco_compressor``), so it is saved,
  moved, sharded and checkpointed with that block, and the pretrained weights keep their names;
* a forward hook on block ``k`` (run before any other hook, so ``output_hidden_states`` records the
  compressed tokens) splits off the prefix tokens, compresses the grid tokens and concatenates them back;
* a forward pre-hook on the encoder reads the grid from ``pixel_values``, so non-square and
  non-default image sizes work. Each stage's grid is derived from that input grid, not carried from the
  previous stage, so recomputation under gradient checkpointing sees the same grids.

The model's own forward, attention implementation (eager / SDPA / FlashAttention), hidden-state capture and
gradient checkpointing keep working. :func:`remove` takes everything out again and restores bit-identical
outputs. The settings are recorded as ``model.config.laco`` so a saved model can be rebuilt (:func:`load`).

Only a plain attribute (``_laco``) is added to the patched *instance*; no library class is modified.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import functional as F
from .adapters import EncoderAdapter, GenericAdapter, resolve_encoder
from .compressors import TokenCompressor, build
from .functional import GridSize
from .placement import FORMAT as PLACEMENT_FORMAT
from .placement import LayerSpec, Placement

COMPRESSOR_ATTRIBUTE = "laco_compressor"
CONFIG_ATTRIBUTE = "laco"


@dataclass
class _Stage:
    layer: int
    block: nn.Module
    hook: torch.utils.hooks.RemovableHandle


@dataclass
class _PatchState:
    adapter: EncoderAdapter
    placement: Placement
    num_prefix_tokens: int
    stages: list[_Stage]
    grid_hook: torch.utils.hooks.RemovableHandle | None = None
    input_grid: GridSize | None = None

    def compressor(self, stage: int) -> TokenCompressor:
        return getattr(self.stages[stage].block, COMPRESSOR_ATTRIBUTE)

    def grid_after(self, grid: GridSize, stages: int) -> GridSize:
        for index in range(stages):
            grid = self.compressor(index).output_size(grid)
        return grid


# --------------------------------------------------------------------------------------------------------------
# apply / remove


def apply(
    model: nn.Module,
    layer: Placement | LayerSpec | Sequence[LayerSpec],
    method: str | None = None,
    factor: int | None = None,
    *,
    mode: str | None = None,
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
            holds one (``CLIPModel``, ``SiglipModel``, LLaVA-style), or any ViT described by ``blocks=``.
        layer: a :class:`~laco.placement.Placement`, or after which block(s): an int k (1..L), a fraction of
            depth (0.25, ``"1/4"``), ``"last"``, or a list.
        method: a compressor name from :func:`laco.compressors.available` (default ``"laco"``, LaCo's patch merge).
        factor: merge ``factor x factor`` blocks of tokens (default 2).
        mode: see :data:`laco.placement.MODES` (default ``"auto"``).
        blocks, num_prefix_tokens, patch_size, grid, hidden_size: describe a ViT laco has no adapter for
            (see :class:`laco.adapters.GenericAdapter`).
        **options: passed to the compressor (``shortcut``, ``init``, ``hidden_dim``, ``pad``, ...).
    """
    _refuse_compile_wrapper(model, "laco.apply")
    placement = _placement_argument(layer, method, factor, mode, options)
    encoder, adapter = _encoder_and_adapter(model, blocks, num_prefix_tokens, patch_size, grid, hidden_size)
    if is_patched(encoder):
        raise ValueError("this encoder is already compressed by laco; call laco.remove(model) before applying again.")
    _warn_if_compiled(model, "laco.apply")

    block_list = adapter.blocks(encoder)
    placement = _resolved_for(placement, adapter, len(block_list))
    dim = adapter.hidden_size(encoder)
    built = [build_compressor_for_block(placement, dim, adapter, block_list[k - 1]) for k in placement.layers]

    state = _PatchState(adapter, placement, adapter.num_prefix_tokens(encoder), stages=[])
    for index, (k, compressor) in enumerate(zip(placement.layers, built)):
        block = block_list[k - 1]
        block.add_module(COMPRESSOR_ATTRIBUTE, compressor)
        hook = block.register_forward_hook(_StageHook(state, index), prepend=True)
        state.stages.append(_Stage(k, block, hook))
    state.grid_hook = encoder.register_forward_pre_hook(_GridHook(state), with_kwargs=True)
    encoder._laco = state
    config = getattr(encoder, "config", None)
    if config is not None:
        setattr(config, CONFIG_ATTRIBUTE, {**placement.to_dict(), "format": PLACEMENT_FORMAT})
    return model


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


def _resolved_for(placement: Placement, adapter: EncoderAdapter, depth: int) -> Placement:
    """Resolve layers against the encoder's depth and ``mode="auto"`` against what the encoder supports."""
    placement = placement.resolve(depth)
    if placement.mode == "keep_llm_tokens":
        raise ValueError(
            f"mode='keep_llm_tokens' moves a model's own post-encoder compression inside the encoder, and a "
            f"{adapter.family} encoder has none; use mode='compress_more' (or 'auto')."
        )
    return replace(placement, mode="compress_more")


def build_compressor_for_block(
    placement: Placement, dim: int, adapter: EncoderAdapter, block: nn.Module
) -> TokenCompressor:
    """The compressor that follows ``block``: on its device and dtype, initialised from its MLP for init='layer'."""
    options = placement.option_dict
    parts = None
    if options.get("init") == "layer":
        parts = adapter.mlp_parts(block)
        if parts is None:
            raise ValueError(
                f"init='layer' needs a plain two-Linear MLP, which {adapter.family} blocks do not have; "
                "use init='zero' or init='default'."
            )
        options.setdefault("hidden_dim", parts.fc1.out_features)
    compressor = build(placement.method, dim, placement.factor, **options)
    reference = next(block.parameters(), None)
    if reference is not None:
        compressor.to(device=reference.device, dtype=reference.dtype)
    if parts is not None:
        if not hasattr(compressor, "init_from_mlp"):
            raise ValueError(f"init='layer' is only defined for the patch-merge methods, not {placement.method!r}.")
        compressor.init_from_mlp(parts.norm, parts.fc1, parts.fc2, parts.scale)
    return compressor


def remove(model: nn.Module) -> nn.Module:
    """Undo :func:`apply`: drop the compressors and hooks; outputs become bit-identical to the original."""
    _refuse_compile_wrapper(model, "laco.remove")
    encoder = _patched_encoder(model)
    if encoder is None:
        raise ValueError("this model is not compressed by laco; nothing to remove.")
    _warn_if_compiled(model, "laco.remove")
    state: _PatchState = encoder._laco
    for stage in state.stages:
        stage.hook.remove()
        delattr(stage.block, COMPRESSOR_ATTRIBUTE)
    if state.grid_hook is not None:
        state.grid_hook.remove()
    del encoder._laco
    config = getattr(encoder, "config", None)
    if config is not None and hasattr(config, CONFIG_ATTRIBUTE):
        delattr(config, CONFIG_ATTRIBUTE)
    return model


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
# Hooks


class _GridHook:
    """Encoder forward pre-hook: record the input patch grid, from which every stage derives its own.

    Hooks are objects holding the patch state rather than closures, so ``copy.deepcopy`` (EMA copies, some
    distributed wrappers) and pickling give the copy hooks that drive the copy's compressors, not the original's.
    """

    def __init__(self, state: _PatchState) -> None:
        self.state = state

    def __call__(self, module, args, kwargs):
        pixel_values = args[0] if args else kwargs.get("pixel_values")
        if kwargs.get("attention_mask") is not None:
            raise ValueError(
                "a laco-compressed encoder cannot take an attention_mask over its input tokens: the mask no "
                "longer matches after the merge. Call it without attention_mask."
            )
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
            self.state.input_grid = self.state.adapter.grid(module, pixel_values)
        else:
            self.state.input_grid = None
        return None


class _StageHook:
    """Forward hook of block k: compress its output's grid tokens, pass prefix tokens through."""

    def __init__(self, state: _PatchState, index: int) -> None:
        self.state, self.index = state, index

    def __call__(self, module, args, output):
        state, index = self.state, self.index
        hidden = output[0] if isinstance(output, tuple) else output
        grid = _grid_before_stage(state, index, hidden.shape[1])
        prefix, tokens = F.split_prefix(hidden, state.num_prefix_tokens)
        merged, _ = getattr(module, COMPRESSOR_ATTRIBUTE)(tokens, grid)
        hidden = torch.cat([prefix, merged], dim=1) if state.num_prefix_tokens else merged
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _grid_before_stage(state: _PatchState, index: int, num_tokens: int) -> GridSize:
    grid_tokens = num_tokens - state.num_prefix_tokens
    if state.input_grid is not None:
        grid = state.grid_after(state.input_grid, index)
        if grid[0] * grid[1] != grid_tokens:
            raise ValueError(
                f"layer {state.stages[index].layer} produced {grid_tokens} grid tokens (after "
                f"{state.num_prefix_tokens} prefix tokens) but the {state.input_grid[0]}x{state.input_grid[1]} input "
                f"grid gives {grid[0]}x{grid[1]} here; is num_prefix_tokens right for this encoder?"
            )
        return grid
    # No pixel_values seen (blocks called directly, or inputs_embeds): only a square grid can be inferred.
    side = math.isqrt(grid_tokens)
    if side * side != grid_tokens:
        raise ValueError(
            f"cannot infer the grid of {grid_tokens} tokens at layer {state.stages[index].layer}: call the encoder "
            "with pixel_values, or describe it with laco.apply(..., grid=(H, W))."
        )
    return side, side


# --------------------------------------------------------------------------------------------------------------
# Token counts and persistence


def output_grid(model: nn.Module, image_size: int | GridSize | None = None) -> GridSize:
    """The grid of patch tokens the (possibly compressed) encoder emits for an image of ``image_size``."""
    encoder = _patched_encoder(model)
    if encoder is None:
        encoder, adapter = resolve_encoder(model)
        state = None
    else:
        state, adapter = encoder._laco, encoder._laco.adapter
    size = adapter.default_image_size(encoder) if image_size is None else image_size
    grid = adapter.grid_for_image_size(encoder, size)
    return grid if state is None else state.grid_after(grid, len(state.stages))


def num_tokens(model: nn.Module, image_size: int | GridSize | None = None, *, include_prefix: bool = True) -> int:
    """How many tokens the encoder emits for one image (``image_size`` defaults to the config's).

    An MLLM sizes its image placeholders with this. ``include_prefix=False`` counts only grid tokens.
    """
    encoder = _patched_encoder(model)
    if encoder is None:
        encoder, adapter = resolve_encoder(model)
    else:
        adapter = encoder._laco.adapter
    height, width = output_grid(model, image_size)
    return height * width + (adapter.num_prefix_tokens(encoder) if include_prefix else 0)


def apply_from_config(model: nn.Module) -> nn.Module:
    """Re-apply the compression recorded in ``model.config.laco`` (for models built from a saved config)."""
    encoder, _ = resolve_encoder(model)
    recorded = getattr(encoder.config, CONFIG_ATTRIBUTE, None)
    if not recorded:
        return model
    return apply(model, Placement.from_dict(recorded))


def load(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a vision encoder saved (with ``save_pretrained``) after :func:`apply`, compressors included.

    The pretrained weights load through ``AutoModel.from_pretrained`` (so its key conversions apply), the
    compression is rebuilt from ``config.laco`` and the compressor weights are read from the same
    safetensors file(s). Any other mismatch between checkpoint and model is an error.
    """
    from safetensors import safe_open
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    path = Path(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the compressor keys are "unexpected" until apply_from_config; checked below
    try:
        model, info = AutoModel.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    apply_from_config(model)
    expected = {name for name in model.state_dict() if f".{COMPRESSOR_ATTRIBUTE}." in name}
    saved: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path):
        with safe_open(file, framework="pt") as handle:
            saved.update({name: handle.get_tensor(name) for name in handle.keys() if name in expected})
    other_unexpected = sorted(set(info["unexpected_keys"]) - expected)
    missing = sorted((set(info["missing_keys"]) - expected) | (expected - set(saved)))
    if missing or other_unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing}, unexpected {other_unexpected}."
        )
    model.load_state_dict(saved, strict=False)
    return model.eval()


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"no model.safetensors (or index) in {path}; laco only loads safetensors weights.")
    return [single]
