"""LLaVA conversation JSON fed through a checkpoint's own processor and chat template (every MLLM family).

:class:`~laco.data.llava.LlavaDataset` gives every image one square and a fixed number of placeholders, which is
what LLaVA takes. The other families need what only their processor computes: Qwen-VL's packed patches with
``image_grid_thw``, AnyRes tiles with ``image_sizes``, InternVL's tiles between ``<img>`` tokens, Idefics3's padded
tiles with ``pixel_attention_mask``, Gemma3's ``token_type_ids``. :class:`ProcessorDataset` therefore renders each
record with ``processor.apply_chat_template`` (image parts where the record's ``<image>`` tags are) and encodes the
text with the processor itself, so a record trains on exactly what the model sees at inference.

Labels are on the answers only, found from the rendered text, never from family-specific token strings: each answer
starts where its text appears after the point where the conversation rendered up to the question (with the
generation prompt) stops agreeing with the whole conversation, and ends where the conversation rendered up to that
answer stops agreeing with it (the turn's end-of-turn tokens included, so the model learns to stop). Character
positions become token positions by encoding the text up to each boundary with the processor (images included, so
image expansion is counted as the model sees it) and comparing token ids with the whole record's: a token that
spans a boundary (BPE merging ``": red"``) is attributed by the common prefix, never split.

Records are checked once up front as the LLaVA path checks them (the same skip reasons and report, or a
:class:`~laco.data.report.DataError` with ``strict``); a record longer than ``max_length`` is skipped (``too
long``), not truncated, since cutting a processor's output can split an image's tiles or token types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..mllm.processing import IGNORE_INDEX, IMAGE_TAG, ROLES, RecordError
from .images import ImageProblem, load_rgb
from .llava import LlavaDataset, LlavaRecord, _checked_turns, _image_problem
from .report import DataError, RecordSkipped, SkipReason

# Inputs with one entry per token: padded along the sequence, never concatenated.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids")
_SEQUENCE_PAD = {"labels": IGNORE_INDEX}  # input_ids pad with the tokenizer's pad id, the others with 0


def chat_messages(turns: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """LLaVA ``from``/``value`` turns as chat-template messages, each ``<image>`` tag an image part.

    Turns after the last answer are dropped (nothing in them is learned); a record whose ``<image>`` tags are in an
    answer or after the last answer raises :class:`RecordError`, since its images would never reach the model.
    """
    roles = [ROLES.get(str(turn.get("from"))) for turn in turns]
    if None in roles:
        raise RecordError(f"a turn is from {turns[roles.index(None)].get('from')!r}, not one of {sorted(ROLES)}.")
    answers = [index for index, role in enumerate(roles) if role == "assistant"]
    if not answers or not all(turns[index]["value"].strip() for index in answers):
        raise RecordError("the conversation has an empty or missing answer (gpt turn) to learn from.", "no answer")
    if roles[0] == "assistant":
        raise RecordError(
            "the conversation starts with an answer (gpt turn), so there is no question before it; start with the "
            "human turn.",
            "unusable conversation",
        )
    misplaced = sum(turn["value"].count(IMAGE_TAG) for turn in turns[answers[-1] :])
    if misplaced:
        raise RecordError(
            f"{misplaced} {IMAGE_TAG} tag(s) sit in an answer or after the last answer, where no image reaches the "
            f"model; put each {IMAGE_TAG} in the question its image belongs to.",
            "wrong <image> tags",
        )
    return [_message(role, turn["value"]) for role, turn in zip(roles, turns[: answers[-1] + 1])]


def _message(role: str, text: str) -> dict[str, Any]:
    parts: list[dict[str, str]] = []
    for index, piece in enumerate(text.split(IMAGE_TAG)):
        if index:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return {"role": role, "content": parts}


def render(processor: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    """The conversation as the checkpoint's chat template writes it (a template is required: without one, no
    rendering is the model's)."""
    if not getattr(processor, "chat_template", None):
        raise DataError(
            f"{type(processor).__name__} has no chat_template, so laco cannot render conversations as the model was "
            "trained on them; save the checkpoint's chat_template.jinja (or chat_template.json) next to its "
            "processor (processor.chat_template = ...; processor.save_pretrained(DIR))."
        )
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def encode(processor: Any, text: str, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The processor's inputs for one rendered record (a batch of one)."""
    images_argument = {"images": [list(images)]} if images else {}
    return dict(processor(text=[text], return_tensors="pt", **images_argument))


def answer_spans(processor: Any, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int, int]]:
    """``(start, end, images before)`` character spans of every answer in ``text``, the whole rendered record."""
    spans, images = [], 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            images += sum(part["type"] == "image" for part in message["content"])
            continue
        answer = "".join(part.get("text", "") for part in message["content"]).strip()
        asked = _common_prefix(render(processor, messages[:index], generation_prompt=True), text)
        start = text.find(answer, max(asked, spans[-1][1] if spans else 0))
        if start < 0:
            raise RecordError(
                f"the chat template of {type(processor).__name__} does not write answer {index} ({answer[:40]!r}) "
                "as given, so its tokens cannot be found to label.",
                "unusable conversation",
            )
        said = render(processor, messages[: index + 1]) if index + 1 < len(messages) else text
        spans.append((start, max(_common_prefix(said, text), start + len(answer)), images))
    return spans


def encode_record(
    processor: Any, turns: Sequence[Mapping[str, str]], images: Sequence[Image.Image], max_length: int | None
) -> tuple[str, list[int], list[int]]:
    """``(rendered text, input_ids, labels)`` of one record; labels are ``-100`` except on the answers' tokens."""
    messages = chat_messages(turns)
    tags = sum(part["type"] == "image" for message in messages for part in message["content"])
    if tags != len(images):
        raise RecordError(
            f"the conversation has {tags} {IMAGE_TAG} tag(s) for {len(images)} image(s); put exactly one "
            f"{IMAGE_TAG} per image in a human turn.",
            "wrong <image> tags",
        )
    text = render(processor, messages)
    input_ids = encode(processor, text, images)["input_ids"][0].tolist()
    if max_length is not None and len(input_ids) > max_length:
        raise RecordError(
            f"the record is {len(input_ids)} tokens after the processor ({len(images)} image(s) expanded), over "
            f"max_length={max_length}; raise max_length or shorten the conversation.",
            "too long",
        )
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end, before in answer_spans(processor, messages, text):
        first = _common_prefix(encode(processor, text[:start], images[:before])["input_ids"][0].tolist(), input_ids)
        last = _common_prefix(encode(processor, text[:end], images[:before])["input_ids"][0].tolist(), input_ids)
        labels[first:last] = input_ids[first:last]
    if all(label == IGNORE_INDEX for label in labels):
        raise RecordError("no answer token was found in the processor's encoding.", "no answer")
    return text, input_ids, labels


def generation_inputs(
    processor: Any, prompts: Sequence[str | Sequence[Mapping[str, str]]], images: Sequence[Sequence[Image.Image]]
) -> dict[str, torch.Tensor]:
    """Left-padded inputs that ask each prompt (a question, or LLaVA turns ending with one) about its images, rendered
    with the processor's chat template and its generation prompt, as the records were for training."""
    texts = []
    for prompt, row in zip(prompts, images, strict=True):
        turns = [{"from": "human", "value": prompt}] if isinstance(prompt, str) else list(prompt)
        tags = sum(turn["value"].count(IMAGE_TAG) for turn in turns)
        if tags == 0:  # a bare question: its images first, as LacoProcessor.prompt puts them
            turns[-1] = {**turns[-1], "value": IMAGE_TAG * len(row) + "\n" + turns[-1]["value"]}
        elif tags != len(row):
            raise ValueError(
                f"a prompt holds {tags} {IMAGE_TAG} tag(s) for {len(row)} image(s); give one image per tag, in order."
            )
        messages = [_message(ROLES[str(turn["from"])], turn["value"]) for turn in turns]
        texts.append(render(processor, messages, generation_prompt=True))
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues every row at its end
    try:
        return dict(processor(text=texts, images=[list(row) for row in images], padding=True, return_tensors="pt"))
    finally:
        tokenizer.padding_side = side


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    length = min(len(a), len(b))
    return next((i for i in range(length) if a[i] != b[i]), length)


class ProcessorDataset(LlavaDataset):
    """Usable records of a LLaVA conversation JSON file, rendered and encoded by a stock (or LaCo) ``processor``.

    Takes :class:`~laco.data.llava.LlavaDataset`'s arguments; ``processor`` is the checkpoint's own processor (with
    its chat template). Items hold every input the processor returns for the record (1-D ``input_ids``,
    ``attention_mask``, token types; images as the processor shapes them) plus ``labels`` and ``id``; batch them
    with :class:`ProcessorCollator`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._texts: list[str] = []  # each record rendered once, at the check
        super().__init__(*args, **kwargs)

    def _add(
        self, record: Any, record_id: str, verify_images: bool, checked_images: dict[Any, RecordSkipped | None]
    ) -> None:
        """Check one record and keep it with its rendered text, ids and labels. Its images are always decoded here
        (``verify_images`` has no cheaper mode: the processor's placeholder counts depend on the pixels)."""
        turns = _checked_turns(record)
        paths = self._checked_image_paths(record)
        images = self._images(paths, checked_images)
        try:
            text, input_ids, labels = encode_record(self.processor, turns, images, self.max_length)
        except RecordError as error:
            raise self._classify(error) from None
        except (ValueError, TypeError, IndexError) as error:  # a template or processor refusing this record
            raise RecordSkipped(
                SkipReason.UNUSABLE,
                f"{type(self.processor).__name__} cannot render and encode the record ({type(error).__name__}: "
                f"{error}).",
            ) from None
        kept = tuple((turn["from"], turn["value"]) for turn in turns)
        self.records.append(LlavaRecord(record_id, tuple(paths), kept))
        self._texts.append(text)
        self._input_ids.append(np.asarray(input_ids, dtype=np.int32))
        self._labels.append(np.asarray(labels, dtype=np.int32))

    def _images(self, paths: list[Any], checked: dict[Any, RecordSkipped | None]) -> list[Image.Image]:
        """The record's images, decoded once each (a file found bad is remembered: VQA sets reuse images)."""
        images = []
        for position, path in enumerate(paths):
            problem = checked.get(path) or _image_problem(path, False, self.max_image_pixels)  # does it exist
            if problem is None:
                try:
                    images.append(load_rgb(path, self.max_image_pixels))
                except ImageProblem as error:
                    too_large = error.reason == "too large"
                    reason = SkipReason.IMAGE_TOO_LARGE if too_large else SkipReason.UNREADABLE_IMAGE
                    problem = RecordSkipped(reason, str(error))
            if problem is not None:
                checked[path] = problem
                which = f"image {position + 1} of {len(paths)}: " if len(paths) > 1 else ""
                raise RecordSkipped(problem.reason, which + problem.detail)
        return images

    @property
    def image_tag(self) -> str:
        return IMAGE_TAG  # LLaVA JSON's, whatever token the family's template writes for an image

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            images = [load_rgb(path, self.max_image_pixels) for path in record.images]
        except ImageProblem as error:
            raise DataError(
                f"cannot load an image of record {record.id!r} ({error}); re-encode or remove the file."
            ) from error
        inputs = encode(self.processor, self._texts[index], images)
        input_ids = torch.from_numpy(self._input_ids[index].astype(np.int64))
        if not torch.equal(inputs["input_ids"][0], input_ids):
            raise DataError(
                f"record {record.id!r} encodes to other token ids than when it was checked: its image files changed "
                "since; rebuild the dataset."
            )
        item = {key: value[0] if key in SEQUENCE_KEYS else value for key, value in inputs.items()}
        return {**item, "labels": torch.from_numpy(self._labels[index].astype(np.int64)), "id": record.id}


class ProcessorCollator:
    """Batches :class:`ProcessorDataset` items for the family's ``forward``.

    Per-token inputs (``input_ids``, ``attention_mask``, ``labels``, ``token_type_ids``, ``mm_token_type_ids``) are
    padded on ``padding_side`` (``input_ids`` with ``pad_token_id``, ``labels`` with ``-100``, the rest with 0).
    Everything else is concatenated along its first dimension, which is where each family puts its images: Qwen-VL's
    packed patches and ``image_grid_thw``, ``image_sizes``, InternVL's and Gemma3's per-tile/per-image rows, LLaVA
    AnyRes ``(images, tiles, 3, H, W)`` and Idefics3's ``(batch, images, 3, H, W)`` with ``pixel_attention_mask``.
    Other dimensions are zero-padded to the batch's largest, as the processors pad a batch themselves: an all-zero
    Idefics3 image and AnyRes tiles past an image's count are dropped by the model.
    """

    def __init__(self, pad_token_id: int | None, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; pass processor.tokenizer.pad_token_id (set a pad token first).")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}; choose 'left' or 'right'.")
        self.pad_token_id, self.padding_side, self.pad_to_multiple_of = (
            int(pad_token_id),
            padding_side,
            pad_to_multiple_of,
        )

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch.")
        width = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        for key in features[0]:
            if key == "id":
                continue
            values = [torch.as_tensor(feature[key]) for feature in features]
            if key in SEQUENCE_KEYS:
                pad = self.pad_token_id if key == "input_ids" else _SEQUENCE_PAD.get(key, 0)
                batch[key] = torch.stack([self._pad_row(value, width, pad) for value in values])
            else:
                batch[key] = _concatenate(values)
        return batch

    def _pad_row(self, row: torch.Tensor, width: int, pad: int) -> torch.Tensor:
        filler = torch.full((width - len(row),), pad, dtype=row.dtype)
        return torch.cat([row, filler] if self.padding_side == "right" else [filler, row])


def _concatenate(values: list[torch.Tensor]) -> torch.Tensor:
    """Along dim 0, each tensor zero-padded (at the end) to the largest size in every other dimension."""
    if len({value.dim() for value in values}) != 1:
        raise ValueError(f"cannot batch inputs of shapes {[tuple(v.shape) for v in values]}: their ranks differ.")
    sizes = [max(value.shape[d] for value in values) for d in range(1, values[0].dim())]
    padded = []
    for value in values:
        grown = value.new_zeros((value.shape[0], *sizes))
        grown[(slice(None), *(slice(0, n) for n in value.shape[1:]))] = value
        padded.append(grown)
    return torch.cat(padded)
