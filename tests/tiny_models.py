"""Tiny random-weight encoders of every supported family, built from transformers config classes (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    Aimv2VisionConfig,
    Aimv2VisionModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    InternVLVisionConfig,
    InternVLVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

WIDTH, HEADS, LAYERS, PATCH, IMAGE = 32, 4, 4, 4, 32  # an 8x8 grid


def _common(**overrides):
    defaults = dict(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        image_size=IMAGE,
        patch_size=PATCH,
    )
    return {**defaults, **overrides}


def tiny_encoder(family: str, attn_implementation: str = "eager", **overrides) -> torch.nn.Module:
    """A tiny encoder of ``family`` in eval mode, seeded so every call builds the same weights."""
    torch.manual_seed(0)
    if family == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**_common(**overrides)))
    elif family == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**_common(projection_dim=WIDTH, **overrides)))
    elif family == "dinov2":
        # layerscale_value=1 so layer scale does not make every block a near-identity
        model = Dinov2Model(Dinov2Config(**_common(**{"mlp_ratio": 2, "layerscale_value": 1.0, **overrides})))
    elif family == "aimv2":
        model = Aimv2VisionModel(Aimv2VisionConfig(**_common(**overrides)))
    elif family == "internvit":
        config = InternVLVisionConfig(**_common(**{"layer_scale_init_value": 1.0, **overrides}))
        model = InternVLVisionModel(config)
    else:
        raise ValueError(family)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


FAMILIES = ["siglip", "clip", "dinov2", "aimv2", "internvit"]
PREFIX = {"siglip": 0, "clip": 1, "dinov2": 1, "aimv2": 0, "internvit": 1}


def pixels(batch: int = 2, height: int = IMAGE, width: int = IMAGE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, height, width, generator=generator)
