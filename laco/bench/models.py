"""Random-weight models at real geometries (no downloads), and switching one model between placements.

Why one shared model for all placements: interleaved timing needs every variant alive at once, and a
MLLM with AdamW state takes 16 bytes per parameter in fp32; a copy per placement does not fit. The placements
differ only in the compressors laco attaches, so one model is built from a ``LacoLlavaConfig`` and
:class:`CompressionSwitch` moves between placements with :func:`laco.apply` / :func:`laco.remove`: exactly the
modules ``LacoLlavaForConditionalGeneration`` attaches itself when ``vision_config.laco`` is set (a test checks
this), with each placement keeping its own compressor weights and optimizer state across switches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .. import patch as laco_patch
from ..adapters import resolve_encoder
from ..cost import EncoderGeometry, LLMGeometry
from ..placement import Placement

FAMILIES = ("siglip", "clip", "dinov2", "internvit", "aimv2")


def _transformer(width: int, layers: int, heads: int) -> dict[str, int]:
    """The fields every ``transformers`` config names alike."""
    return {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads}


def vision_config(geometry: EncoderGeometry, attn_implementation: str = "sdpa"):
    """The ``transformers`` config of an encoder geometry, without pooling heads (an MLLM reads tokens)."""
    import transformers as tf

    g = geometry
    common: dict[str, Any] = {
        **_transformer(g.width, g.layers, g.heads),
        "image_size": g.image_size,
        "patch_size": g.patch,
        "num_channels": g.channels,
    }
    if g.family == "siglip":
        config = tf.SiglipVisionConfig(intermediate_size=g.mlp, vision_use_head=False, **common)
    elif g.family == "clip":
        config = tf.CLIPVisionConfig(intermediate_size=g.mlp, projection_dim=g.width, **common)
    elif g.family == "dinov2":
        if g.mlp % g.width:
            raise ValueError(f"DINOv2 sets its MLP as mlp_ratio * width; {g.mlp} is not a multiple of {g.width}.")
        config = tf.Dinov2Config(mlp_ratio=g.mlp // g.width, **common)
    elif g.family == "internvit":
        config = tf.InternVLVisionConfig(
            intermediate_size=g.mlp, **{**common, "image_size": [g.image_size] * 2, "patch_size": [g.patch] * 2}
        )
    elif g.family == "aimv2":
        config = tf.Aimv2VisionConfig(intermediate_size=g.mlp, use_head=False, **common)
    else:
        raise ValueError(f"encoder {g.name!r}: unknown family {g.family!r}; laco.bench builds {FAMILIES}.")
    expected_mlp = "swiglu" if g.family == "aimv2" else "gelu"
    if g.mlp_kind != expected_mlp:
        raise ValueError(f"encoder {g.name!r}: a {g.family} encoder has a {expected_mlp} MLP, not {g.mlp_kind}.")
    config._attn_implementation = attn_implementation
    return config


def text_config(geometry: LLMGeometry, layers: int | None = None, attn_implementation: str = "sdpa"):
    """The ``transformers`` config of an LLM geometry, optionally with fewer decoder layers."""
    import transformers as tf

    g = geometry
    if g.mlp_kind != "swiglu":
        raise ValueError(f"LLM {g.name!r}: laco.bench builds gated (SwiGLU) LLMs only, not {g.mlp_kind}.")
    cls = {"qwen2": tf.Qwen2Config, "llama": tf.LlamaConfig}.get(g.family)
    if cls is None:
        raise ValueError(f"LLM {g.name!r}: unknown family {g.family!r}; laco.bench builds 'qwen2' and 'llama'.")
    config = cls(
        **_transformer(g.width, g.layers if layers is None else layers, g.heads),
        num_key_value_heads=g.kv_heads,
        intermediate_size=g.mlp,
        vocab_size=g.vocab,
        tie_word_embeddings=g.tied,
        head_dim=g.dim_per_head,
    )
    config._attn_implementation = attn_implementation
    return config


def random_encoder(geometry: EncoderGeometry, *, dtype: torch.dtype, device: torch.device, seed: int = 0) -> nn.Module:
    """A randomly initialised vision encoder of ``geometry`` in eval mode."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(vision_config(geometry))
    return model.to(device=device, dtype=dtype).eval()


def random_mllm(
    encoder: EncoderGeometry,
    llm: LLMGeometry,
    *,
    llm_layers: int | None = None,
    dtype: torch.dtype,
    device: torch.device,
    placement: Placement | None = None,
    seed: int = 0,
):
    """A randomly initialised ``LacoLlavaForConditionalGeneration`` (assembled as :func:`laco.mllm.build_mllm`
    does: ``vision_feature_layer=-1``, LLaVA's ``default`` strategy drops a single CLS token, else ``full``).

    ``placement`` goes into ``vision_config.laco`` so the model compresses itself at construction.
    The image token is the last id of the vocabulary.
    """
    from ..mllm import LacoLlavaConfig, LacoLlavaForConditionalGeneration

    vision = vision_config(encoder)
    if placement is not None and placement.compressed:
        setattr(vision, laco_patch.CONFIG_ATTRIBUTE, placement.resolve(encoder.layers).to_dict())
    config = LacoLlavaConfig(
        vision_config=vision,
        text_config=text_config(llm, llm_layers),
        image_token_index=llm.vocab - 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default" if encoder.prefix == 1 else "full",
        projector_hidden_act="gelu",
        tie_word_embeddings=llm.tied,
    )
    torch.manual_seed(seed)
    model = LacoLlavaForConditionalGeneration(config)
    return model.to(device=device, dtype=dtype).eval()


def compile_blocks(blocks: Iterable[nn.Module]) -> None:
    """Compile each block's ``forward`` with ``torch.compile`` (regional compilation), in place.

    Why blocks and not the whole model: hooks run in ``Module.__call__``, outside the compiled ``forward``, so
    laco's merge hooks, which :class:`CompressionSwitch` installs and removes between rounds, and the bench's
    timing hooks take effect on every call; a whole-model graph would keep the placement it was traced with
    (Dynamo does not guard on module hooks). Identical blocks share one graph per token count, so a 27-layer
    encoder compiles a few graphs, not 27. Static shapes: each token count gets its own specialised graph.
    """
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=False)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The LLM's decoder layers inside a LLaVA-style model."""
    return model.model.language_model.layers


class CompressionSwitch:
    """Move one encoder (or a model holding one) between placements, in place.

    Each placement's compressors are created once, on first activation, and reattached on every later one, so
    their weights, their optimizer state and the model's parameter set stay stable across interleaved rounds.
    """

    def __init__(self, model: nn.Module) -> None:
        self.encoder, self.adapter = resolve_encoder(model)
        self.active: Placement | None = None
        self._compressors: dict[Placement, list[nn.Module]] = {}

    def activate(self, placement: Placement) -> list[nn.Module]:
        """Compress as ``placement`` says (``layers=()``: uncompressed); returns its compressor modules."""
        if self.active == placement:
            return self._compressors.get(placement, [])
        if laco_patch.is_patched(self.encoder):
            laco_patch.remove(self.encoder)
        self.active = placement
        if not placement.compressed:
            return []
        stored = self._compressors.get(placement)
        laco_patch.apply(self.encoder, placement)
        if stored is None:
            self._compressors[placement] = laco_patch.compressors(self.encoder)
        else:
            blocks = self.adapter.blocks(self.encoder)
            for layer, module in zip(placement.layers, stored):
                # The stage hook reads the compressor from this attribute on every call.
                blocks[layer - 1].add_module(laco_patch.COMPRESSOR_ATTRIBUTE, module)
        return self._compressors[placement]
