"""Where a run's data comes from: easy-VQA (converted once into the cache) or LLaVA files the user names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..pretrained import default_cache_dir
from .easyvqa import convert_easy_vqa
from .llava import LlavaDataset, LlavaExample
from .processor_data import ProcessorDataset
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
            raise DataError(f"easy-vqa has splits {sorted(paths)}, not {split!r}; pass one of them (--split).")
        return paths[split], easy_vqa_dir()
    json_path = data.train_json if split == "train" else data.eval_json
    if not json_path:
        raise DataError(f"no LLaVA JSON for split {split!r}: set data.train_json / data.eval_json.")
    return Path(json_path), Path(data.image_folder)


def question_answer_pairs(json_path: str | Path) -> list[tuple[str, str]]:
    """(last question without its ``<image>`` tags, the answer to it) of every record, without loading images: what
    the evaluation scores (:meth:`LlavaDataset.example`).

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
        last = max((i for i, t in enumerate(turns) if t.get("from") in ("gpt", "assistant")), default=None)
        asked = [t["value"] for t in turns[: last or 0] if t.get("from") in ("human", "user")]
        if last is not None and asked:
            pairs.append((asked[-1].replace("<image>", "").strip(), turns[last]["value"]))
    return pairs


def llava_dataset(data: "DataConfig", split: str, processor: "LacoProcessor", **kwargs) -> LlavaDataset:
    """The checked dataset of ``split`` with the record rules of ``data``: what training and evaluation both read."""
    return _dataset(LlavaDataset, data, split, processor, **kwargs)


def processor_dataset(data: "DataConfig", split: str, processor: Any, **kwargs) -> ProcessorDataset:
    """:func:`llava_dataset` for a checkpoint's own (stock) processor: the same files and record rules, each record
    rendered by its chat template and encoded by it (:mod:`laco.data.processor_data`)."""
    return _dataset(ProcessorDataset, data, split, processor, **kwargs)


def _dataset(dataset_class: type, data: "DataConfig", split: str, processor: Any, **kwargs) -> Any:
    json_path, image_folder = split_files(data, split)
    return dataset_class(
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
    ``data.strict``). Each record is one example: its last answer, asked after the turns before it (earlier
    questions with their reference answers, as the record gives them), with every image of the record.
    """
    read = llava_dataset if hasattr(processor, "encode_conversation") else processor_dataset  # laco's, or a family's
    dataset = read(data, split, processor, limit=limit, progress=False)
    examples = [dataset.example(index) for index in range(len(dataset))]
    train_json, _ = split_files(data, "train") if (data.dataset == "easy-vqa" or data.train_json) else (None, None)
    train_pairs = question_answer_pairs(train_json) if train_json is not None else []
    return examples, train_pairs
