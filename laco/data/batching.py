"""Batches of LLaVA examples: padding them together, and sampling weights that balance the answers."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..config import BALANCE_BY
from ..mllm.processing import IGNORE_INDEX

if TYPE_CHECKING:
    from .llava import LlavaDataset


class MultimodalCollator:
    """Batches :class:`LlavaDataset` items for ``LlavaForConditionalGeneration.forward`` (and the HF ``Trainer``).

    Right-pads ``input_ids`` with ``pad_token_id`` and ``labels`` with ``-100``, adds the ``attention_mask`` and
    puts every item's images one after another in ``pixel_values`` (items with several images give several rows;
    the model matches them to the placeholders in order); other keys (``id``) are dropped. The mask comes from the item lengths, never from
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
            "pixel_values": torch.cat([_image_rows(feature["pixel_values"]) for feature in features]),
        }


def _image_rows(pixel_values: Any) -> torch.Tensor:
    """An item's images as ``(N, 3, H, W)``: one image comes as ``(3, H, W)``."""
    pixel_values = torch.as_tensor(pixel_values)
    return pixel_values.unsqueeze(0) if pixel_values.dim() == 3 else pixel_values


def answer_balanced_weights(dataset: LlavaDataset, strength: float = 1.0, by: str = "answer") -> torch.Tensor:
    """Per-record sampling weights that even out each record's final answer.

    ``by="answer"``: ``count(answer) ** -strength``. VQA sets are dominated by a few answers (easy-VQA: 74% yes/no),
    so a short training budget spent in natural proportions barely sees the answers that need the image.

    ``by="question"``: ``(count(question) / (answers(question) * count(question, answer))) ** strength``, where
    ``answers(question)`` is how many different answers the question has: every question keeps its share of the data
    and, at ``strength=1``, each of its answers is equally likely. A question whose answer the text alone predicts
    (easy-VQA: "is a brown shape present?" is "no" 91% of the time) then can only be answered from the image.

    ``strength=1`` balances fully, ``0.5`` halfway (square roots), ``0`` is natural sampling.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"answer balance strength must lie in [0, 1], got {strength}.")
    if by not in BALANCE_BY:
        raise ValueError(f"answer balance by {by!r} is unknown; choose one of {BALANCE_BY}.")
    answers = [record.answers[-1].strip().lower() for record in dataset.records]
    if by == "answer":
        counts = Counter(answers)
        return torch.tensor([counts[answer] ** -strength for answer in answers], dtype=torch.double)
    questions = [record.questions[-1].replace("<image>", "").strip().lower() for record in dataset.records]
    per_question, pairs = Counter(questions), Counter(zip(questions, answers))
    kinds = Counter(question for question, _ in pairs)
    weights = [(per_question[q] / (kinds[q] * pairs[q, a])) ** strength for q, a in zip(questions, answers)]
    return torch.tensor(weights, dtype=torch.double)
