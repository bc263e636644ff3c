"""LLaVA conversation JSON as a PyTorch dataset, validated once up front, plus the batch collator.

LLaVA instruction data is a JSON list of records such as::

    {"id": "000123", "image": "coco/000123.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"}, {"from": "gpt", "value": "A cat."}]}

with ``image`` relative to an image folder, or a list of such paths with one ``<image>`` tag per image (in order)
in the human turns. Conversations may run over several turns; every answer is learned. Real dumps contain records a training run cannot use: text-only
records, missing or corrupt images, a wrong number of ``<image>`` tags, conversations too long for the context.
Finding those in the middle of an epoch (or, worse, training on them silently) wastes runs, so
:class:`LlavaDataset` checks every record once at construction, tokenizes the usable ones right away (the ids
are kept, so text is tokenized exactly once) and reports what it dropped and why: one warning by default, or a
:class:`DataError` at the first bad record with ``strict=True``.

The check does what training does, so a record that passes cannot fail at a batch: its token ids are the ones the
collator will batch (each image's placeholders counted after the chat template), and its images are decoded in
full by the same reader ``__getitem__`` uses (:func:`laco.data.images.load_rgb`, with its pixel budget). Image paths must
stay inside the image folder unless ``allow_outside_image_folder``.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..mllm.processing import ROLES, LacoProcessor, RecordError
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageProblem, inside_folder, load_rgb
from .report import FIXES, DataError, DatasetReport, MissingData, RecordSkipped, SkipReason

logger = logging.getLogger(__name__)

# How many example ids per skip reason the report (and the warning) keeps.


@dataclass(frozen=True)
class LlavaRecord:
    """A usable record: its id, image paths and its turns as ``(from, value)`` (the token ids live in the dataset)."""

    id: str
    images: tuple[Path, ...]
    turns: tuple[tuple[str, str], ...]
    truncated: bool = False

    @property
    def image(self) -> Path:
        """The first (for most records the only) image."""
        return self.images[0]

    @property
    def questions(self) -> tuple[str, ...]:
        return tuple(value for speaker, value in self.turns if ROLES[speaker] == "user")

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(value for speaker, value in self.turns if ROLES[speaker] == "assistant")


class LlavaExample(NamedTuple):
    """One record as an evaluator needs it: its last question (without ``<image>`` tags) and the answer to it.

    ``images`` holds every image of the record and ``turns`` the conversation up to that answer (LLaVA
    ``from``/``value`` dicts, tags and earlier reference answers included); both are empty for a single-turn
    record with one image, which is asked as ``question`` about ``image``.
    """

    id: str
    image: Path
    question: str
    answer: str
    images: tuple[Path, ...] = ()
    turns: tuple[dict[str, str], ...] = ()


class LlavaDataset(torch.utils.data.Dataset):
    """Usable records of a LLaVA conversation JSON file, tokenized by ``processor``.

    Args:
        json_path: the LLaVA JSON file (a list of records).
        image_folder: the folder record ``image`` paths are relative to.
        processor: renders and tokenizes conversations and transforms images.
        max_length: longest token sequence; longer conversations are truncated from the end (never into the
            image placeholders) and dropped only if no answer token is left. ``None`` disables truncation.
        strict: raise :class:`DataError` at the first bad record instead of skipping it.
        limit: keep only the first ``limit`` usable records, in file order (the scan stops there).
        verify_images: decode every image at construction, as ``__getitem__`` will, so corrupt or oversized files
            are skipped up front. ``False`` only checks that the file exists (and defers the rest to batches).
        progress: show a progress bar while checking records.
        max_image_pixels: skip images with more pixels than this (``None``: no budget), before decoding them.
        allow_outside_image_folder: accept absolute image paths and paths that leave ``image_folder`` by ``..``.

    Items are dicts with ``input_ids`` and ``labels`` (1-D LongTensors), ``pixel_values`` (3 x S x S float for a
    record with one image, N x 3 x S x S for N images) and ``id``; batch them with :class:`MultimodalCollator`.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_folder: str | Path,
        processor: LacoProcessor,
        max_length: int | None = 512,
        strict: bool = False,
        limit: int | None = None,
        verify_images: bool = True,
        progress: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        allow_outside_image_folder: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.image_folder = Path(image_folder)
        self.processor = processor
        self.max_length = max_length
        self.max_image_pixels = max_image_pixels
        self.allow_outside_image_folder = allow_outside_image_folder
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length={max_length} must be a positive number of tokens (or None for no limit).")
        if limit is not None and limit < 1:
            raise ValueError(f"limit={limit} must be a positive number of records (or None for all).")
        if not self.json_path.is_file():
            raise MissingData(f"LLaVA JSON file {self.json_path} not found; check json_path.")
        if not self.image_folder.is_dir():
            raise MissingData(
                f"image folder {self.image_folder} not found; check image_folder (--image-folder, data.image_folder)."
            )
        raw = self._load_json()

        self.records: list[LlavaRecord] = []
        # int32 arrays, not Python lists: a few hundred thousand records of a few hundred tokens each would
        # otherwise cost gigabytes, and DataLoader workers would copy them on access (refcount writes).
        self._input_ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.report = DatasetReport(total=len(raw))
        # VQA sets ask several questions per image; check each file once.
        checked_images: dict[Path, RecordSkipped | None] = {}
        first_problem = ""
        bar = tqdm(raw, desc=f"checking {self.json_path.name}", unit="rec", disable=not progress, leave=False)
        try:
            for index, record in enumerate(bar):
                if limit is not None and len(self.records) >= limit:
                    break
                self.report.examined += 1
                record_id = _record_id(record, index)
                try:
                    self._add(record, record_id, verify_images, checked_images)
                except RecordSkipped as skip:
                    if strict:
                        raise DataError(
                            f"record {record_id!r} (index {index}) of {self.json_path}: {skip.reason}: "
                            f"{skip.detail} Fix: {FIXES[skip.reason]} (or pass strict=False to skip bad records)."
                        ) from None
                    self.report.add_skip(skip.reason, record_id)
                    first_problem = first_problem or f"record {record_id!r}: {skip.reason}: {skip.detail}"
        finally:
            bar.close()
        self.report.used = len(self.records)
        self.report.truncated = sum(record.truncated for record in self.records)

        if not self.records:
            raise DataError(
                f"{self.json_path} has no usable record ({self.report.summary()}; first: {first_problem}); "
                "fix the records or the image_folder / max_length arguments."
            )
        if self.report.num_skipped:
            warnings.warn(f"{self.json_path.name}: {self.report.summary()}", stacklevel=2)
        else:
            logger.info("%s: %s", self.json_path.name, self.report.summary())

    # ---------------------------------------------------------------------------------------------------------
    # Construction

    def _load_json(self) -> list[Any]:
        try:
            with self.json_path.open(encoding="utf-8") as file:
                raw = json.load(file)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{self.json_path} is not valid UTF-8 JSON ({error}); is it a LLaVA JSON file?") from None
        if not isinstance(raw, list):
            raise DataError(
                f"{self.json_path} holds a JSON {type(raw).__name__}; a LLaVA file is a JSON list of records."
            )
        return raw

    def _add(
        self, record: Any, record_id: str, verify_images: bool, checked_images: dict[Path, RecordSkipped | None]
    ) -> None:
        """Check one record and, if usable, append it with its token ids; raise :class:`RecordSkipped` otherwise."""
        turns = _checked_turns(record)
        image_paths = self._checked_image_paths(record)
        for position, image_path in enumerate(image_paths):
            if image_path not in checked_images:
                checked_images[image_path] = _image_problem(image_path, verify_images, self.max_image_pixels)
            problem = checked_images[image_path]
            if problem is not None:
                which = f"image {position + 1} of {len(image_paths)}: " if len(image_paths) > 1 else ""
                # a fresh exception: re-raising the cached one would grow its traceback
                raise RecordSkipped(problem.reason, which + problem.detail)
        try:
            encoded = self.processor.encode_conversation(turns, max_length=self.max_length, num_images=len(image_paths))
        except RecordError as error:
            raise self._classify(error) from None
        except (ValueError, TypeError) as error:  # a chat template or tokenizer refusing this text
            raise RecordSkipped(
                SkipReason.UNUSABLE, f"the conversation cannot be rendered and tokenized ({error})."
            ) from None
        kept = tuple((turn["from"], turn["value"]) for turn in turns)
        self.records.append(LlavaRecord(record_id, tuple(image_paths), kept, encoded.truncated))
        self._input_ids.append(np.asarray(encoded.input_ids, dtype=np.int32))
        self._labels.append(np.asarray(encoded.labels, dtype=np.int32))

    def _checked_image_paths(self, record: dict[str, Any]) -> list[Path]:
        """The record's image paths (``image``: one path, or a list of them), each inside the image folder."""
        if "image" not in record:
            raise RecordSkipped(SkipReason.NO_IMAGE, "the record has no 'image' (a text-only conversation).")
        image = record["image"]
        images = image if isinstance(image, list) else [image]
        if not images or not all(isinstance(path, str) and path and "\0" not in path for path in images):
            raise RecordSkipped(
                SkipReason.MALFORMED, f"'image' is {image!r}, not a path string or a non-empty list of path strings."
            )
        for path in images:
            if not self.allow_outside_image_folder and not inside_folder(path, self.image_folder):
                raise RecordSkipped(
                    SkipReason.OUTSIDE_FOLDER,
                    f"image path {path!r} leaves image_folder {self.image_folder} (by '..', an absolute path or a "
                    "symbolic link pointing out of it).",
                )
        return [self.image_folder / path for path in images]

    @staticmethod
    def _classify(error: RecordError) -> RecordSkipped:
        """Turn a processor :class:`RecordError` into a skip reason, by its machine-readable ``reason``."""
        known = {
            SkipReason.MALFORMED,
            SkipReason.IMAGE_TAGS,
            SkipReason.NO_ANSWER,
            SkipReason.TOO_LONG,
            SkipReason.UNUSABLE,
        }
        return RecordSkipped(error.reason if error.reason in known else SkipReason.UNUSABLE, str(error))

    # ---------------------------------------------------------------------------------------------------------
    # Access

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        images = []
        for path in record.images:
            try:
                images.append(load_rgb(path, self.max_image_pixels))
            except ImageProblem as error:
                # only with verify_images=False, or a file changed since the check
                raise DataError(
                    f"cannot load image {path} of record {record.id!r} ({error}); "
                    "re-encode or remove the file (verify_images=True finds such files up front)."
                ) from error
        pixel_values = self.processor.image_transform(images)
        return {
            "input_ids": torch.from_numpy(self._input_ids[index].astype(np.int64)),
            "labels": torch.from_numpy(self._labels[index].astype(np.int64)),
            "pixel_values": pixel_values[0] if len(images) == 1 else pixel_values,
            "id": record.id,
        }

    @property
    def image_tag(self) -> str:
        """The tag that places an image in the records' text (the processor's image token)."""
        return self.processor.image_token

    @property
    def lengths(self) -> list[int]:
        """Token count of every item, without loading images (for length-grouped samplers)."""
        return [len(ids) for ids in self._input_ids]

    def example(self, index: int) -> LlavaExample:
        """The record's last answer as an evaluation example: asked after the turns before it, reference answers
        included, with every image of the record."""
        record = self.records[index]
        last = max(i for i, (speaker, _) in enumerate(record.turns) if ROLES[speaker] == "assistant")
        asked = [value for speaker, value in record.turns[:last] if ROLES[speaker] == "user"]
        question = asked[-1].replace(self.image_tag, "").strip() if asked else ""
        single = len(record.images) == 1 and len(record.questions) == 1 and len(record.answers) == 1
        if single:  # asked as before multi-turn support: the question about the image, its tag first
            return LlavaExample(record.id, record.image, question, record.answers[0])
        turns = tuple({"from": speaker, "value": value} for speaker, value in record.turns[:last])
        return LlavaExample(record.id, record.image, question, record.turns[last][1], record.images, turns)


def _record_id(record: Any, index: int) -> str:
    """The record's ``id`` as a string, or ``#index`` for records without a usable one."""
    if isinstance(record, dict) and isinstance(record.get("id"), (str, int)) and not isinstance(record["id"], bool):
        return str(record["id"])
    return f"#{index}"


def _checked_turns(record: Any) -> list[dict[str, str]]:
    if not isinstance(record, dict):
        raise RecordSkipped(SkipReason.MALFORMED, f"the record is a JSON {type(record).__name__}, not an object.")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordSkipped(SkipReason.MALFORMED, "'conversations' is missing, empty or not a list.")
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordSkipped(SkipReason.MALFORMED, f"turn {position} is not a dict with a string 'value'.")
        if not _is_unicode(turn["value"]):
            raise RecordSkipped(
                SkipReason.MALFORMED,
                f"turn {position} holds text that is not valid Unicode (a lone surrogate such as \\ud800, "
                "from a broken JSON escape); re-export the record as UTF-8.",
            )
        if turn.get("from") not in ROLES:
            raise RecordSkipped(
                SkipReason.MALFORMED, f"turn {position} is from {turn.get('from')!r}, not one of {sorted(ROLES)}."
            )
    return turns


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _image_problem(path: Path, verify: bool, max_pixels: int | None) -> RecordSkipped | None:
    """Why the image at ``path`` cannot be used, or ``None`` if it can (decoded exactly as ``__getitem__`` will)."""
    if not path.is_file():
        return RecordSkipped(SkipReason.MISSING_IMAGE, f"image file {path} does not exist.")
    if not verify:
        return None
    try:
        load_rgb(path, max_pixels)
    except ImageProblem as problem:
        reason = SkipReason.IMAGE_TOO_LARGE if problem.reason == "too large" else SkipReason.UNREADABLE_IMAGE
        return RecordSkipped(reason, str(problem))
    return None
