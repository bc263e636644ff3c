"""easy-VQA, converted to LLaVA conversation JSON: a small real VQA task that trains on a CPU.

**What it is.** easy-VQA (Victor Zhou, 2019; MIT licence; PyPI ``easy-vqa`` 1.0) is a synthetic visual question
answering set: 64x64 RGB PNG images, each showing one shape (circle, rectangle or triangle) in one of eight
colours (black, blue, brown, gray, green, red, teal, yellow) on a plain pale background. Shapes vary in position
and size, and some are only a few pixels across, small enough to suffer from aggressive token compression.
Questions are templated ("what color is the shape?", "is there a red shape?", "does the image not contain a
circle?"); every answer is one of 13 words: the 3 shapes, the 8 colours, ``yes`` and ``no``. The wheel ships the data itself
(``easy_vqa/data/{train,test}/questions.json`` and ``images/*.png``, ~2 MB of PNGs), so it works offline; we
read the files directly rather than import the package.

**Statistics** (computed from the 1.0 wheel):

======  =========  ======  =============================================  =====================
split   questions  images  questions by answer type                       majority answer
======  =========  ======  =============================================  =====================
train   38,575     4,000   28,407 yes/no, 5,002 shape, 5,166 colour       ``yes``: 14,229 (36.9%)
test     9,673     1,000    7,136 yes/no, 1,257 shape, 1,280 colour       ``yes``:  3,611 (37.3%)
======  =========  ======  =============================================  =====================

Answer counts, train / test: yes 14,229 / 3,611; no 14,178 / 3,525; rectangle 1,701 / 450; circle 1,689 / 416;
triangle 1,612 / 391; teal 692 / 149; black 661 / 156; green 661 / 165; blue 660 / 153; gray 644 / 178;
yellow 639 / 169; red 605 / 156; brown 604 / 154.

Baselines on test: always answering the majority answer ``yes`` scores **37.3%** (3,611 / 9,673; ``yes`` is
also the train majority, so the baseline does not peek at test labels). Beware that the questions alone say a lot:
both splits use the same 107 question strings, and answering each with its most common *train* answer, never
looking at the image, scores 67.0% on test. That blind prior gets 82.6% of the yes/no questions right (an image
has one shape in one of eight colours, so "is there a red shape?" is mostly "no" and its negation mostly "yes")
but only 34.8% of shape and 12.0% of colour questions. A model must beat 67% overall, and clearly beat those
per-type numbers, to show that it uses the image.

**Conversion.** :func:`convert_easy_vqa` writes one LLaVA record per question::

    {"id": "train-000123", "image": "train/images/17.png",
     "conversations": [{"from": "human", "value": "<image>\\nwhat color is the shape?"},
                       {"from": "gpt", "value": "blue"}]}

to ``out_dir/{split}.json`` and copies the images to ``out_dir/{split}/images/``, so ``out_dir`` is the image
folder of :class:`~laco.data.LlavaDataset`. The ``id`` numbers the question within its split (file order).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..packages import PackageFile, PackageFileNotFoundError

__all__ = [
    "ANSWER_TYPES",
    "EASY_VQA_SPLITS",
    "convert_easy_vqa",
    "easy_vqa_answers",
    "easy_vqa_data_dir",
]

EASY_VQA_SPLITS = ("train", "test")
# The three kinds of easy-VQA answer, for per-type scores (the question-only prior is strong on yes/no only).
ANSWER_TYPES: dict[str, tuple[str, ...]] = {
    "yes/no": ("yes", "no"),
    "shape": ("circle", "rectangle", "triangle"),
    "colour": ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow"),
}

_ANSWERS = PackageFile("easy-vqa", "1.0", "easy_vqa/data/answers.txt", "easy-VQA data")
# Written into each converted split folder; it says which conversion the folder holds, so a later call with
# other arguments (or a newer format) converts again instead of trusting stale files.
_STAMP_FILE = "conversion.json"
_FORMAT_VERSION = 1


def easy_vqa_data_dir() -> Path:
    """The installed ``easy_vqa/data`` folder (``answers.txt``, ``train/``, ``test/``)."""
    return _ANSWERS.locate().parent


def easy_vqa_answers() -> list[str]:
    """The 13 possible answers, in the package's order."""
    text = (easy_vqa_data_dir() / "answers.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _questions(data_dir: Path, split: str) -> list[tuple[str, str, int]]:
    path = data_dir / split / "questions.json"
    if not path.is_file():
        raise PackageFileNotFoundError(f"{path} is missing; reinstall the data: {_ANSWERS.install} --force-reinstall")
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [(str(question), str(answer), int(image_id)) for question, answer, image_id in rows]


def _stamp(split: str, limit_per_split: int | None, records: int | None = None) -> dict[str, object]:
    stamp: dict[str, object] = {
        "source": f"{_ANSWERS.distribution} {_ANSWERS.version}",
        "format": _FORMAT_VERSION,
        "split": split,
        "limit_per_split": limit_per_split,
    }
    if records is not None:
        stamp["records"] = records
    return stamp


def _is_complete(out_dir: Path, split: str, limit_per_split: int | None) -> bool:
    """Whether ``out_dir`` holds this exact conversion of ``split`` (the JSON file is written last)."""
    json_path, stamp_path = out_dir / f"{split}.json", out_dir / split / _STAMP_FILE
    if not (json_path.is_file() and stamp_path.is_file()):
        return False
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return {key: stamp.get(key) for key in _stamp(split, limit_per_split)} == _stamp(split, limit_per_split)


def _convert_split(data_dir: Path, out_dir: Path, split: str, limit_per_split: int | None) -> None:
    questions = _questions(data_dir, split)
    if limit_per_split is not None:
        questions = questions[:limit_per_split]
    # Build everything in a sibling temporary folder and rename it into place, so an interrupted run never
    # leaves a half-written split that a later call would mistake for a finished one.
    staging = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=out_dir))
    try:
        images = staging / split / "images"
        images.mkdir(parents=True)
        for image_id in sorted({image_id for _, _, image_id in questions}):
            source = data_dir / split / "images" / f"{image_id}.png"
            if not source.is_file():
                raise PackageFileNotFoundError(
                    f"image {source} is missing; reinstall the data: {_ANSWERS.install} --force-reinstall"
                )
            shutil.copyfile(source, images / source.name)
        records = [
            {
                "id": f"{split}-{index:06d}",
                "image": f"{split}/images/{image_id}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {"from": "gpt", "value": answer},
                ],
            }
            for index, (question, answer, image_id) in enumerate(questions)
        ]
        stamp = _stamp(split, limit_per_split, len(records))
        (staging / split / _STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        # One record per line: a quarter of the size of indented JSON, and still easy to grep and diff.
        lines = ",\n".join(json.dumps(record, ensure_ascii=False) for record in records)
        (staging / f"{split}.json").write_text(f"[\n{lines}\n]\n", encoding="utf-8")

        target_json, target_dir = out_dir / f"{split}.json", out_dir / split
        # The JSON file marks completion: remove it first and put it back last.
        target_json.unlink(missing_ok=True)
        if target_dir.exists():
            shutil.rmtree(target_dir)
        os.replace(staging / split, target_dir)
        os.replace(staging / f"{split}.json", target_json)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert_easy_vqa(
    out_dir: str | Path,
    splits: Sequence[str] = EASY_VQA_SPLITS,
    *,
    limit_per_split: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write easy-VQA as LLaVA JSON (``out_dir/{split}.json``) with its images (``out_dir/{split}/images/``).

    Args:
        out_dir: where to write; it is also the ``image_folder`` to give :class:`~laco.data.LlavaDataset`.
        splits: any of ``"train"`` and ``"test"``.
        limit_per_split: convert only the first this many questions of each split (quick tests).
        overwrite: convert again even if ``out_dir`` already holds this conversion.

    Returns:
        The JSON file of each split. A split already converted with the same ``limit_per_split`` is left as is,
        so calling this before every run is cheap (a few file checks).
    """
    if isinstance(splits, str):
        splits = (splits,)
    unknown = [split for split in splits if split not in EASY_VQA_SPLITS]
    if unknown:
        raise ValueError(f"unknown easy-VQA split(s) {unknown}; choose from {list(EASY_VQA_SPLITS)}.")
    if limit_per_split is not None and limit_per_split < 1:
        raise ValueError(f"limit_per_split={limit_per_split} must be a positive number of questions (or None for all).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split in splits:
        if overwrite or not _is_complete(out_dir, split, limit_per_split):
            _convert_split(easy_vqa_data_dir(), out_dir, split, limit_per_split)
        paths[split] = out_dir / f"{split}.json"
    return paths
