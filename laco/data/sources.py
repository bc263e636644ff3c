"""Where a run's data comes from: easy-VQA (converted once into the cache) or LLaVA files the user names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..pretrained import default_cache_dir
from .easyvqa import convert_easy_vqa
from .llava import LlavaDataset, LlavaExample

if TYPE_CHECKING:
    from ..config import DataConfig
    from ..mllm import LacoProcessor


def easy_vqa_dir() -> Path:
    return default_cache_dir() / "datasets" / "easy-vqa"


def split_files(data: "DataConfig", split: str) -> tuple[Path, Path]:
    """``(json, image folder)`` of ``split`` ("train", "test", ...)."""
    if data.dataset == "easy-vqa":
        paths = convert_easy_vqa(easy_vqa_dir())
        if split not in paths:
            raise ValueError(f"easy-vqa has splits {sorted(paths)}, not {split!r}.")
        return paths[split], easy_vqa_dir()
    json_path = data.train_json if split == "train" else data.eval_json
    if not json_path:
        raise ValueError(f"no LLaVA JSON for split {split!r}: set data.train_json / data.eval_json.")
    return Path(json_path), Path(data.image_folder)


def question_answer_pairs(json_path: str | Path) -> list[tuple[str, str]]:
    """(first question without its ``<image>`` tag, first answer) of every record, without loading images."""
    pairs = []
    for record in json.loads(Path(json_path).read_text(encoding="utf-8")):
        turns = record.get("conversations") or []
        question = next((t["value"] for t in turns if t.get("from") in ("human", "user")), None)
        answer = next((t["value"] for t in turns if t.get("from") in ("gpt", "assistant")), None)
        if question is not None and answer is not None:
            pairs.append((question.replace("<image>", "").strip(), answer))
    return pairs


def eval_examples(
    data: "DataConfig", split: str, processor: "LacoProcessor", limit: int | None = None
) -> tuple[list[LlavaExample], list[tuple[str, str]]]:
    """The evaluation examples of ``split`` and the training (question, answer) pairs for the baselines."""
    json_path, image_folder = split_files(data, split)
    dataset = LlavaDataset(json_path, image_folder, processor, max_length=data.max_length, limit=limit, progress=False)
    examples = [dataset.example(index) for index in range(len(dataset))]
    train_json, _ = split_files(data, "train") if (data.dataset == "easy-vqa" or data.train_json) else (None, None)
    train_pairs = question_answer_pairs(train_json) if train_json is not None else []
    return examples, train_pairs
