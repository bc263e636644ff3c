"""Where a run's data comes from: easy-VQA (converted once into the cache) or LLaVA files the user names."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..pretrained import default_cache_dir
from .easyvqa import convert_easy_vqa
from .llava import LlavaDataset, LlavaExample
from .report import DataError

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
    """(first question without its ``<image>`` tag, first answer) of every record, without loading images.

    Only for the blind baselines: records that are not well-formed conversations are left out, as training
    leaves them out.
    """
    pairs = []
    records = json.loads(Path(json_path).read_text(encoding="utf-8"))
    for record in records if isinstance(records, list) else []:
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns
        ):
            continue
        question = next((t["value"] for t in turns if t.get("from") in ("human", "user")), None)
        answer = next((t["value"] for t in turns if t.get("from") in ("gpt", "assistant")), None)
        if question is not None and answer is not None:
            pairs.append((question.replace("<image>", "").strip(), answer))
    return pairs


def llava_dataset(data: "DataConfig", split: str, processor: "LacoProcessor", **kwargs) -> LlavaDataset:
    """The checked dataset of ``split`` with the record rules of ``data``: what training and evaluation both read."""
    json_path, image_folder = split_files(data, split)
    return LlavaDataset(
        json_path,
        image_folder,
        processor,
        max_length=data.max_length,
        strict=data.strict,
        max_image_pixels=data.max_image_pixels,
        allow_outside_image_folder=data.allow_outside_image_folder,
        **kwargs,
    )


def eval_examples(
    data: "DataConfig", split: str, processor: "LacoProcessor", limit: int | None = None
) -> tuple[list[LlavaExample], list[tuple[str, str]]]:
    """The evaluation examples of ``split`` and the training (question, answer) pairs for the baselines.

    Records are checked exactly as for training (the same skips, or the same :class:`DataError` when
    ``data.strict``); usable multi-turn records are then left out with a warning, since the evaluation scores one
    question per image.
    """
    dataset = llava_dataset(data, split, processor, limit=limit, progress=False)
    single = [i for i, record in enumerate(dataset.records) if len(record.questions) == len(record.answers) == 1]
    if len(single) < len(dataset):
        multi = [record.id for record in dataset.records if len(record.questions) != 1 or len(record.answers) != 1]
        message = (
            f"{dataset.json_path.name}: {len(multi)} multi-turn record(s) not scored (the evaluation asks one "
            f"question per image), e.g. {', '.join(multi[:5])}"
        )
        if data.strict:
            raise DataError(message + "; pass single-turn records, or drop --strict to skip them.")
        warnings.warn(message, stacklevel=2)
    if not single:
        raise DataError(f"{dataset.json_path} has no single-turn record to evaluate.")
    examples = [dataset.example(index) for index in single]
    train_json, _ = split_files(data, "train") if (data.dataset == "easy-vqa" or data.train_json) else (None, None)
    train_pairs = question_answer_pairs(train_json) if train_json is not None else []
    return examples, train_pairs
