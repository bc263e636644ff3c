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


# ----------------------------------------------------------------------------------------------------------------
# A tiny MLLM's parts: a real (trained-here) tokenizer and a tiny Llama, savable as "local paths"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "what color is the shape? red blue green yellow",
    "is there a circle in the image? yes no",
    "USER: describe the picture ASSISTANT: a small triangle",
]
COLORS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40), "yellow": (230, 220, 30)}


def tiny_tokenizer_json() -> str:
    """A byte-level BPE tokenizer (handles any text, decodes back exactly) trained in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    return tokenizer.to_str()


def tiny_tokenizer(chat_template: bool = True):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json()),
        eos_token="<|im_end|>" if chat_template else "</s>",
        unk_token="<unk>",
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llm(vocab_size: int = 400, width: int = 32, heads: int = 4, max_positions: int = 512):
    """A tiny random Llama (seeded); ``width // heads`` is the head size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_parts(directory, family: str = "dinov2"):
    """Save a tiny vision encoder and a tiny LLM (+ tokenizer) as local model directories; returns their paths."""
    from pathlib import Path

    directory = Path(directory)
    vision_dir, llm_dir = directory / f"tiny-{family}", directory / "tiny-llm"
    tiny_encoder(family).save_pretrained(vision_dir)
    tokenizer = tiny_tokenizer()
    tiny_llm(len(tokenizer)).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    return vision_dir, llm_dir


def write_color_dataset(directory, count: int = 32, size: int = IMAGE):
    """A learnable LLaVA-format dataset: one colour per image, "what color is the shape?" -> colour name."""
    import json
    from pathlib import Path

    from PIL import Image

    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    records = []
    for index in range(count):
        name = names[index % len(names)]
        Image.new("RGB", (size, size), COLORS[name]).save(directory / "images" / f"{index}.png")
        records.append(
            {
                "id": f"color-{index}",
                "image": f"images/{index}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nwhat color is the shape?"},
                    {"from": "gpt", "value": name},
                ],
            }
        )
    path = directory / "colors.json"
    path.write_text(json.dumps(records))
    return path, directory


def run_config(parts, output, *, name="tiny", steps=(3, 3), save_steps=2, eval_batch_size=8, **sections) -> dict:
    """A two-stage run config over the tiny parts of ``save_tiny_parts`` + ``write_color_dataset``, as plain data;
    ``sections`` update a top-level section's keys (``data={...}``) or replace a value (``seed=3``)."""
    vision, llm, data_json, images = parts
    config = {
        "name": name,
        "output_dir": str(output),
        "seed": 0,
        "model": {
            "vision": str(vision),
            "llm": str(llm),
            "image_size": 32,
            "system_prompt": None,
            "compression": {"layers": 2},
        },
        "data": {
            "dataset": "llava",
            "train_json": str(data_json),
            "eval_json": str(data_json),
            "image_folder": str(images),
            "max_length": 64,
        },
        "stages": [
            {
                "name": "stage1",
                "trainable": ["compressor", "projector"],
                "max_steps": steps[0],
                "batch_size": 4,
                "learning_rate": 1e-2,
            },
            {
                "name": "stage2",
                "trainable": ["compressor", "projector", "llm"],
                "max_steps": steps[1],
                "batch_size": 4,
                "learning_rate": 1e-3,
            },
        ],
        "training": {"precision": "fp32", "logging_steps": 1, "save_steps": save_steps, "threads": 1},
        "eval": {"limit": 8, "batch_size": eval_batch_size, "max_new_tokens": 3},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    return config


def write_run_config(path, parts, output, steps=(3, 3), save_steps=2, **data):
    """:func:`run_config` as YAML at ``path``; ``data`` updates its data section."""
    import yaml

    path.write_text(yaml.safe_dump(run_config(parts, output, steps=steps, save_steps=save_steps, data=data)))
    return path
