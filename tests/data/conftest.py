"""Fixtures for the data tests: a real (tiny, trained-here) tokenizer, processors around it, LLaVA file writers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from data.llava_files import IMAGE_SIZE, NUM_IMAGE_TOKENS, write_png
from laco.mllm.processing import ImageTransform, LacoProcessor

# ChatML, as SmolLM2 uses; renders incrementally, which LacoProcessor.encode_conversation requires.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "what color is the shape? red blue green yellow",
    "is there a circle in the image? yes no",
    "USER: describe the picture ASSISTANT: a small triangle",
]


@pytest.fixture(scope="session")
def tokenizer_json() -> str:
    """A byte-level BPE tokenizer (handles any text, decodes back exactly) trained in milliseconds."""
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


@pytest.fixture
def make_processor(tokenizer_json: str) -> Callable[..., LacoProcessor]:
    """``make_processor(chat_template=True)``: a fresh processor (LacoProcessor mutates its tokenizer)."""

    def make(chat_template: bool = True) -> LacoProcessor:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(tokenizer_json),
            # The fallback format ends answers with a literal "</s>", so that must be its EOS.
            eos_token="<|im_end|>" if chat_template else "</s>",
            unk_token="<unk>",
        )
        if chat_template:
            tokenizer.chat_template = CHAT_TEMPLATE
        return LacoProcessor(tokenizer, ImageTransform(size=IMAGE_SIZE), num_image_tokens=NUM_IMAGE_TOKENS)

    return make


@pytest.fixture
def processor(make_processor: Callable[..., LacoProcessor]) -> LacoProcessor:
    return make_processor(chat_template=True)


@pytest.fixture
def write_llava(tmp_path: Path) -> Callable[[list[Any]], tuple[Path, Path]]:
    """``write_llava(records) -> (json_path, image_folder)``; ``img.png`` and ``blue.png`` exist in the folder."""
    folder = tmp_path / "images"
    write_png(folder / "img.png")
    write_png(folder / "blue.png", color=(20, 40, 220))

    def write(records: list[Any]) -> tuple[Path, Path]:
        path = tmp_path / "data.json"
        path.write_text(json.dumps(records))
        return path, folder

    return write
