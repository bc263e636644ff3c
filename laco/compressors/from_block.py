"""Initialising a compressor from the encoder block it follows (``init="layer"`` and ``init="ffn_reuse"``).

The adapters say where a block's MLP and attention are (``mlp_parts`` / ``attention_parts``); this module turns
them into the sizes the compressor is built with (:func:`block_options`) and copies their weights into it once it
is on the block's device and dtype (:func:`init_from_block`). Families without the parts (SwiGLU MLPs, qk-norm
attention) are refused with the init that works instead.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import TokenCompressor, compressor_class
from .patch_merge import PatchMerge
from .window_merge import WindowAttentionMerge

BLOCK_INITS = ("layer", "ffn_reuse")


def block_options(method: str, options: dict[str, Any], factor: int, adapter, block: nn.Module) -> dict[str, Any]:
    """``options`` with the sizes an init from ``block`` needs (MLP width, head count) filled in where unset."""
    options = dict(options)
    init, cls = options.get("init"), compressor_class(method)
    if init in BLOCK_INITS and not issubclass(cls, PatchMerge):
        raise ValueError(f"init={init!r} is only defined for the patch-merge methods, not {method!r}.")
    if init in BLOCK_INITS:
        mlp = _mlp_parts(adapter, block, init)
        options.setdefault("hidden_dim", mlp.fc1.out_features * (factor * factor if init == "ffn_reuse" else 1))
    if issubclass(cls, WindowAttentionMerge):
        attention = adapter.attention_parts(block)
        if attention is None and init == "ffn_reuse":
            raise ValueError(
                f"init='ffn_reuse' with method {method!r} copies the block's attention, which {adapter.family} blocks "
                "do not have as a plain multi-head attention (qk-norm); use init='zero' or init='default'."
            )
        if attention is not None:
            options.setdefault("num_heads", attention.num_heads)
    return options


def init_from_block(compressor: TokenCompressor, adapter, block: nn.Module) -> None:
    """Copy ``block``'s MLP (and attention, for the window merge) into ``compressor`` as its ``init`` says."""
    init = getattr(compressor, "init", None)
    if init not in BLOCK_INITS:
        return
    mlp = _mlp_parts(adapter, block, init)
    if init == "layer":
        compressor.init_from_mlp(mlp.norm, mlp.fc1, mlp.fc2, mlp.scale)
        return
    compressor.init_from_ffn(mlp.norm, mlp.fc1, mlp.fc2, mlp.scale, act=mlp_activation(block, mlp.fc1))
    if isinstance(compressor, WindowAttentionMerge):
        compressor.init_from_attention(adapter.attention_parts(block))


def _mlp_parts(adapter, block: nn.Module, init: str):
    parts = adapter.mlp_parts(block)
    if parts is None:
        raise ValueError(
            f"init={init!r} needs a plain two-Linear MLP, which {adapter.family} blocks do not have; "
            "use init='zero' or init='default'."
        )
    return parts


def mlp_activation(block: nn.Module, fc1: nn.Linear) -> nn.Module:
    """The activation module that sits beside ``fc1`` in the block's MLP (every family names it differently)."""
    for module in block.modules():
        children = list(module.children())
        if any(child is fc1 for child in children):
            found = [
                child
                for child in children
                if not isinstance(child, (nn.Linear, nn.Dropout, nn.Identity))
                and next(child.parameters(), None) is None
                and not list(child.children())
            ]
            if len(found) == 1:
                return found[0]
    raise ValueError(
        f"cannot find the activation of {type(block).__name__}'s MLP (one parameter-free module beside fc1); "
        "use init='layer', 'zero' or 'default'."
    )
