"""Fixtures for the data tests: a real (tiny, trained-here) tokenizer, processors around it, LLaVA file writers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from laco.mllm.processing import ImageTransform, LacoProcessor

from data.llava_files import IMAGE_SIZE, NUM_IMAGE_TOKENS, write_png
from tiny_models import CHAT_TEMPLATE, tiny_tokenizer_json


@pytest.fixture(scope="session")
def tokenizer_json() -> str:
    return tiny_tokenizer_json()


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
