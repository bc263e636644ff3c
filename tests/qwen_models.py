"""Tiny random-weight Qwen2-VL, Qwen2.5-VL and Qwen3-VL models, built from transformers' config classes.

Depth 4, width 32, 4-pixel patches. Qwen2.5-VL's windows are 32 px (4x4 merge units) with full attention in blocks
1 and 3 (0-based), so images larger than 32 px hold several windows and window attention differs from full
attention; Qwen3-VL taps DeepStack features after blocks 0 and 2.
"""

from __future__ import annotations

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

PATCH, TEMPORAL, WIDTH, DEPTH = 4, 2, 32, 4
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VOCAB = 343, 344, 345, 360  # the ids tiny_processor's tokenizer gives
FAMILIES = ["qwen2", "qwen2.5", "qwen3"]

_TEXT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
_ROPE = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}


def tiny_config(family: str):
    common = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START)
    vision = dict(depth=DEPTH, num_heads=4, patch_size=PATCH, temporal_patch_size=TEMPORAL)
    if family == "qwen2":
        vision.update(embed_dim=WIDTH, hidden_size=32, mlp_ratio=2)
        return Qwen2VLConfig(vision_config=vision, text_config=dict(_TEXT, rope_parameters=_ROPE), **common)
    vision.update(hidden_size=WIDTH, intermediate_size=48, out_hidden_size=32)
    if family == "qwen2.5":
        vision.update(window_size=32, fullatt_block_indexes=[1, 3])
        return Qwen2_5_VLConfig(vision_config=vision, text_config=dict(_TEXT, rope_parameters=_ROPE), **common)
    if family == "qwen3":
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[0, 2])
        text = dict(_TEXT, head_dim=8, rope_parameters=dict(_ROPE, mrope_interleaved=True))
        return Qwen3VLConfig(vision_config=vision, text_config=text, **common)
    raise ValueError(family)


_CLASSES = {
    "qwen2": Qwen2VLForConditionalGeneration,
    "qwen2.5": Qwen2_5_VLForConditionalGeneration,
    "qwen3": Qwen3VLForConditionalGeneration,
}


def tiny_model(family: str, attn_implementation: str = "eager"):
    """A whole tiny model in eval mode, seeded so every call builds the same weights."""
    torch.manual_seed(0)
    model = _CLASSES[family](tiny_config(family))
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def tiny_tower(family: str, attn_implementation: str = "eager"):
    return tiny_model(family, attn_implementation).model.visual


def packed_pixels(grid_thw: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Flattened patches as the image processor packs them: one row per patch of every image and frame."""
    rows = int(grid_thw.prod(-1).sum())
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3 * TEMPORAL * PATCH * PATCH, generator=generator)


def grid(*rows) -> torch.Tensor:
    return torch.tensor([list(row) for row in rows])


def tiny_processor(family: str):
    """The family's processor on tiny_models' trained tokenizer and a PIL image processor with 4 px patches.

    Images only: Qwen-VL processors also require a video processor, and transformers' video processors import
    torchvision, which this environment does not have; the class below drops that attribute.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tiny_models import tiny_tokenizer

    base = {"qwen2": Qwen2VLProcessor, "qwen2.5": Qwen2_5_VLProcessor, "qwen3": Qwen3VLProcessor}[family]

    class ImageOnlyProcessor(base):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]}
    )
    tokenizer.pad_token, tokenizer.padding_side = "<unk>", "left"
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == IMAGE_TOKEN
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, temporal_patch_size=TEMPORAL, merge_size=2, min_pixels=16, max_pixels=64 * 64
    )
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer)


def images(*sizes):
    """Plain-colour PIL images of the given (width, height) sizes."""
    from PIL import Image

    colours = [(200, 30, 30), (30, 40, 220), (30, 200, 40), (230, 220, 30)]
    return [Image.new("RGB", size, colours[i % len(colours)]) for i, size in enumerate(sizes)]
