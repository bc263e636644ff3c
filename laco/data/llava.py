"""LLaVA conversation JSON as a PyTorch dataset, validated once up front, plus the batch collator.

LLaVA instruction data is a JSON list of records such as::

    {"id": "000123", "image": "coco/000123.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"}, {"from": "gpt", "value": "A cat."}]}

with ``image`` relative to an image folder. Real dumps contain records a training run cannot use: text-only
records, missing or corrupt images, a wrong number of ``<image>`` tags, conversations too long for the context.
Finding those in the middle of an epoch (or, worse, training on them silently) wastes runs, so
:class:`LlavaDataset` checks every record once at construction, tokenizes the usable ones right away (the ids
are kept, so text is tokenized exactly once) and reports what it dropped and why: one warning by default, or a
:class:`DataError` at the first bad record with ``strict=True``.

The check does what training does, so a record that passes cannot fail at a batch: its token ids are the ones the
collator will batch (image placeholders counted after the chat template), and its image is decoded in full by
the same reader ``__getitem__`` uses (:func:`laco.data.images.load_rgb`, with its pixel budget). Image paths must
stay inside the image folder unless ``allow_outside_image_folder``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..mllm.processing import IGNORE_INDEX, ROLES, LacoProcessor, RecordError
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageProblem, inside_folder, load_rgb

logger = logging.getLogger(__name__)

# How many example ids per skip reason the report (and the warning) keeps.
_MAX_EXAMPLES = 5


class DataError(ValueError):
    """A data file or record that cannot be used as given; the message names the record and the fix."""


class SkipReason:
    """Why a record was skipped (the keys of :attr:`DatasetReport.skipped`)."""

    MALFORMED = "malformed"
    NO_IMAGE = "no image"
    MISSING_IMAGE = "missing image"
    OUTSIDE_FOLDER = "image outside image_folder"
    UNREADABLE_IMAGE = "unreadable image"
    IMAGE_TOO_LARGE = "image too large"
    IMAGE_TAGS = "wrong <image> tags"
    NO_ANSWER = "no answer"
    TOO_LONG = "too long"
    UNUSABLE = "unusable conversation"


_FIXES = {
    SkipReason.MALFORMED: (
        "give each record 'conversations': a list of {'from': 'human'|'gpt', 'value': str} dicts, "
        "and 'image': a path (string) relative to image_folder"
    ),
    SkipReason.NO_IMAGE: "this model is image-conditioned; remove text-only records or pass strict=False to skip them",
    SkipReason.MISSING_IMAGE: "check image_folder (the record's image path is relative to it) or remove the record",
    SkipReason.OUTSIDE_FOLDER: (
        "give image paths relative to image_folder, or set data.allow_outside_image_folder=true if the paths are "
        "meant to leave it"
    ),
    SkipReason.UNREADABLE_IMAGE: "re-download or re-encode the image file, or remove the record",
    SkipReason.IMAGE_TOO_LARGE: "downscale the image file, or raise data.max_image_pixels",
    SkipReason.IMAGE_TAGS: "put exactly one <image> tag in a human turn and none in answers",
    SkipReason.NO_ANSWER: "add a non-empty gpt turn after the question",
    SkipReason.TOO_LONG: "raise max_length or shorten the conversation",
    SkipReason.UNUSABLE: "fix the conversation as the message says",
}


class _Skip(Exception):
    """Internal: a record failed one check (``reason``), with a human-readable ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class DatasetReport:
    """What :class:`LlavaDataset` found in its JSON file.

    ``total`` counts the records in the file, ``examined`` those checked (fewer when ``limit`` stopped the scan
    early), ``used`` those kept, ``truncated`` the kept records whose text was cut at ``max_length``.
    ``skipped`` counts dropped records per reason and ``examples`` keeps a few of their ids per reason.
    """

    total: int = 0
    examined: int = 0
    used: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_skip(self, reason: str, record_id: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < _MAX_EXAMPLES:
            ids.append(record_id)

    def summary(self) -> str:
        """One line for logs and CLI output."""
        text = f"{self.used} of {self.total} records used"
        if self.examined < self.total:
            text += f" (limit reached after {self.examined})"
        text += f", {self.num_skipped} skipped"
        if self.skipped:
            reasons = ", ".join(
                f"{count} {reason} (e.g. {', '.join(self.examples.get(reason, []))})"
                for reason, count in sorted(self.skipped.items(), key=lambda item: -item[1])
            )
            text += f": {reasons}"
        if self.truncated:
            text += f"; {self.truncated} used records truncated to max_length"
        return text


@dataclass(frozen=True)
class LlavaRecord:
    """A usable record: its id, image path and the text of its turns (the token ids live in the dataset)."""

    id: str
    image: Path
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    truncated: bool = False


class LlavaExample(NamedTuple):
    """One single-turn record as an evaluator needs it: the question without the ``<image>`` tag and the answer.

    A named tuple, so it also unpacks as ``(id, image, question, answer)``.
    """

    id: str
    image: Path
    question: str
    answer: str


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

    Items are dicts with ``input_ids`` and ``labels`` (1-D LongTensors), ``pixel_values`` (3 x S x S float) and
    ``id``; batch them with :class:`MultimodalCollator`.
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
            raise FileNotFoundError(f"LLaVA JSON file {self.json_path} not found; check json_path.")
        if not self.image_folder.is_dir():
            raise FileNotFoundError(f"image folder {self.image_folder} not found; check image_folder.")
        raw = self._load_json()

        self.records: list[LlavaRecord] = []
        # int32 arrays, not Python lists: a few hundred thousand records of a few hundred tokens each would
        # otherwise cost gigabytes, and DataLoader workers would copy them on access (refcount writes).
        self._input_ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.report = DatasetReport(total=len(raw))
        # VQA sets ask several questions per image; check each file once.
        checked_images: dict[Path, _Skip | None] = {}
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
                except _Skip as skip:
                    if strict:
                        raise DataError(
                            f"record {record_id!r} (index {index}) of {self.json_path}: {skip.reason}: "
                            f"{skip.detail} Fix: {_FIXES[skip.reason]} (or pass strict=False to skip bad records)."
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

    def _add(self, record: Any, record_id: str, verify_images: bool, checked_images: dict[Path, _Skip | None]) -> None:
        """Check one record and, if usable, append it with its token ids; raise :class:`_Skip` otherwise."""
        turns = _checked_turns(record)
        if "image" not in record:
            raise _Skip(SkipReason.NO_IMAGE, "the record has no 'image' (a text-only conversation).")
        image = record["image"]
        if not isinstance(image, str) or not image or "\0" in image:
            raise _Skip(SkipReason.MALFORMED, f"'image' is {image!r}, not a path string (one image per record).")
        if not self.allow_outside_image_folder and not inside_folder(image):
            raise _Skip(SkipReason.OUTSIDE_FOLDER, f"image path {image!r} leaves image_folder {self.image_folder}.")
        questions, answers = self._checked_text(turns)
        image_path = self.image_folder / image
        if image_path not in checked_images:
            checked_images[image_path] = _image_problem(image_path, verify_images, self.max_image_pixels)
        problem = checked_images[image_path]
        if problem is not None:
            raise _Skip(problem.reason, problem.detail)  # a fresh exception: re-raising one would grow its traceback

        try:
            encoded = self.processor.encode_conversation(turns, max_length=self.max_length, num_images=1)
        except RecordError as error:
            raise self._classify(error) from None
        except (ValueError, TypeError) as error:  # a chat template or tokenizer refusing this text
            raise _Skip(SkipReason.UNUSABLE, f"the conversation cannot be rendered and tokenized ({error}).") from None
        self.records.append(LlavaRecord(record_id, image_path, questions, answers, encoded.truncated))
        self._input_ids.append(np.asarray(encoded.input_ids, dtype=np.int32))
        self._labels.append(np.asarray(encoded.labels, dtype=np.int32))

    def _checked_text(self, turns: list[dict[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The questions and answers of ``turns`` (their tags and emptiness are checked by the processor)."""
        questions = tuple(turn["value"] for turn in turns if ROLES[turn["from"]] == "user")
        answers = tuple(turn["value"] for turn in turns if ROLES[turn["from"]] == "assistant")
        return questions, answers

    @staticmethod
    def _classify(error: RecordError) -> _Skip:
        """Turn a processor :class:`RecordError` into a skip reason, by its machine-readable ``reason``."""
        known = {
            SkipReason.MALFORMED,
            SkipReason.IMAGE_TAGS,
            SkipReason.NO_ANSWER,
            SkipReason.TOO_LONG,
            SkipReason.UNUSABLE,
        }
        return _Skip(error.reason if error.reason in known else SkipReason.UNUSABLE, str(error))

    # ---------------------------------------------------------------------------------------------------------
    # Access

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            rgb = load_rgb(record.image, self.max_image_pixels)
        except ImageProblem as error:
            # only with verify_images=False, or a file changed since the check
            raise DataError(
                f"cannot load image {record.image} of record {record.id!r} ({error}); "
                "re-encode or remove the file (verify_images=True finds such files up front)."
            ) from error
        return {
            "input_ids": torch.from_numpy(self._input_ids[index].astype(np.int64)),
            "labels": torch.from_numpy(self._labels[index].astype(np.int64)),
            "pixel_values": self.processor.image_transform([rgb])[0],
            "id": record.id,
        }

    @property
    def lengths(self) -> list[int]:
        """Token count of every item, without loading images (for length-grouped samplers)."""
        return [len(ids) for ids in self._input_ids]

    def example(self, index: int) -> LlavaExample:
        """Question (without the ``<image>`` tag) and reference answer of a single-turn record, for evaluation."""
        record = self.records[index]
        if len(record.questions) != 1 or len(record.answers) != 1:
            raise ValueError(
                f"record {record.id!r} has {len(record.questions)} questions and {len(record.answers)} answers; "
                "example() serves single-turn records (one question, one answer), use .records[index] instead."
            )
        question = record.questions[0].replace(self.processor.image_token, "").strip()
        return LlavaExample(record.id, record.image, question, record.answers[0])


def _record_id(record: Any, index: int) -> str:
    """The record's ``id`` as a string, or ``#index`` for records without a usable one."""
    if isinstance(record, dict) and isinstance(record.get("id"), (str, int)) and not isinstance(record["id"], bool):
        return str(record["id"])
    return f"#{index}"


def _checked_turns(record: Any) -> list[dict[str, str]]:
    if not isinstance(record, dict):
        raise _Skip(SkipReason.MALFORMED, f"the record is a JSON {type(record).__name__}, not an object.")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _Skip(SkipReason.MALFORMED, "'conversations' is missing, empty or not a list.")
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise _Skip(SkipReason.MALFORMED, f"turn {position} is not a dict with a string 'value'.")
        if not _is_unicode(turn["value"]):
            raise _Skip(
                SkipReason.MALFORMED,
                f"turn {position} holds text that is not valid Unicode (a lone surrogate such as \\ud800, "
                "from a broken JSON escape); re-export the record as UTF-8.",
            )
        if turn.get("from") not in ROLES:
            raise _Skip(
                SkipReason.MALFORMED, f"turn {position} is from {turn.get('from')!r}, not one of {sorted(ROLES)}."
            )
    return turns


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _image_problem(path: Path, verify: bool, max_pixels: int | None) -> _Skip | None:
    """Why the image at ``path`` cannot be used, or ``None`` if it can (decoded exactly as ``__getitem__`` will)."""
    if not path.is_file():
        return _Skip(SkipReason.MISSING_IMAGE, f"image file {path} does not exist.")
    if not verify:
        return None
    try:
        load_rgb(path, max_pixels)
    except ImageProblem as problem:
        reason = SkipReason.IMAGE_TOO_LARGE if problem.reason == "too large" else SkipReason.UNREADABLE_IMAGE
        return _Skip(reason, str(problem))
    return None


class MultimodalCollator:
    """Batches :class:`LlavaDataset` items for ``LlavaForConditionalGeneration.forward`` (and the HF ``Trainer``).

    Right-pads ``input_ids`` with ``pad_token_id`` and ``labels`` with ``-100``, adds the ``attention_mask`` and
    stacks ``pixel_values``; other keys (``id``) are dropped. The mask comes from the item lengths, never from
    comparing ids with the pad id, because many tokenizers pad with their EOS token, which answers end with.

    Args:
        pad_token_id: the tokenizer's pad id (``processor.tokenizer.pad_token_id``).
        pad_to_multiple_of: round the padded length up to a multiple of this (tensor-core friendly shapes).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; pass processor.tokenizer.pad_token_id (LacoProcessor sets one).")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} must be a positive integer or None.")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch.")
        lengths = [len(feature["input_ids"]) for feature in features]
        for feature, length in zip(features, lengths):
            if len(feature["labels"]) != length:
                raise ValueError(
                    f"item {feature.get('id', '?')!r} has {length} input_ids but {len(feature['labels'])} labels; "
                    "items must come from LlavaDataset (or carry one label per token)."
                )
        width = max(lengths)
        if self.pad_to_multiple_of is not None:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths)):
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :length] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": torch.stack([torch.as_tensor(feature["pixel_values"]) for feature in features]),
        }


def answer_balanced_weights(dataset: LlavaDataset, strength: float = 1.0) -> torch.Tensor:
    """Per-record sampling weights ``count(answer) ** -strength`` over each record's final answer.

    VQA sets are dominated by a few answers (easy-VQA: 74% yes/no, which the question alone mostly predicts), so
    a short training budget spent in natural proportions barely sees the answers that need the image.
    ``strength=1`` gives every answer the same share, ``0.5`` shares in proportion to the square root of the
    answer counts, ``0`` is natural sampling.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"answer balance strength must lie in [0, 1], got {strength}.")
    answers = [record.answers[-1].strip().lower() for record in dataset.records]
    counts = Counter(answers)
    return torch.tensor([counts[answer] ** -strength for answer in answers], dtype=torch.double)
