"""Turn images and conversations into model inputs, with image placeholders sized to the compressed encoder.

``<image>`` in a user message becomes ``num_image_tokens`` copies of the image token, where the count comes from
the (compressed) vision tower, not from the uncompressed patch grid. Conversations are rendered with the LLM's
chat template (plain ``USER:/ASSISTANT:`` turns for tokenizers without one); only assistant answers get labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..pretrained import DINOV2_IMAGE_MEAN, DINOV2_IMAGE_SIZE, DINOV2_IMAGE_STD, preprocess_images

IMAGE_TAG = "<image>"
IGNORE_INDEX = -100
PROCESSOR_FILE = "laco_processor.json"

# Role names of LLaVA conversation JSON, mapped to chat-template roles.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

_FALLBACK_TURN = {"system": "{}\n", "user": "USER: {}\n", "assistant": "ASSISTANT: {}{eos}\n"}


class RecordError(ValueError):
    """A training record that cannot be used as given; ``reason`` is a short machine-readable category."""

    def __init__(self, message: str, reason: str = "unusable conversation") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageTransform:
    """Square resize and mean/std normalisation (the DINOv2/ImageNet statistics by default)."""

    size: int = DINOV2_IMAGE_SIZE
    mean: tuple[float, float, float] = DINOV2_IMAGE_MEAN
    std: tuple[float, float, float] = DINOV2_IMAGE_STD

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return preprocess_images(images, self.size, mean=self.mean, std=self.std)


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class LacoProcessor:
    """Tokenizer + image transform + placeholder count, saved next to the model.

    Args:
        tokenizer: the LLM's tokenizer, with ``image_token`` registered as a special token.
        image_transform: how images become ``pixel_values``.
        num_image_tokens: placeholders per image, i.e. what the compressed encoder emits
            (``LacoLlavaForConditionalGeneration.num_image_tokens()``).
        image_token: the placeholder token.
        system_prompt: optional system message for every conversation (``None`` keeps the template's default).
    """

    tokenizer: PreTrainedTokenizerBase
    image_transform: ImageTransform = field(default_factory=ImageTransform)
    num_image_tokens: int = 256
    image_token: str = IMAGE_TAG
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.image_token not in self.tokenizer.get_vocab():
            self.tokenizer.add_special_tokens({"additional_special_tokens": [self.image_token]})
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    # ---------------------------------------------------------------------------------------------------------
    # Text

    def _messages(self, turns: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        for turn in turns:
            role = ROLES.get(turn.get("from", turn.get("role", "")))
            if role is None:
                raise RecordError(
                    f"unknown speaker {turn.get('from')!r}; expected one of {sorted(ROLES)}.", "malformed"
                )
            messages.append({"role": role, "content": turn.get("value", turn.get("content", ""))})
        return messages

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        eos = self.tokenizer.eos_token or ""
        text = "".join(_FALLBACK_TURN[m["role"]].format(m["content"], eos=eos) for m in messages)
        return text + ("ASSISTANT: " if generation_prompt else "")

    def _tokenize(self, text: str) -> list[int]:
        """Tokenize, replacing every ``<image>`` tag by ``num_image_tokens`` image tokens."""
        ids: list[int] = []
        for index, piece in enumerate(text.split(self.image_token)):
            if index:
                ids.extend([self.image_token_id] * self.num_image_tokens)
            if piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids

    def prompt(self, question: str) -> str:
        """The text that asks ``question`` about one image, ending where the assistant's answer starts."""
        content = question if self.image_token in question else f"{self.image_token}\n{question}"
        return self._render(self._messages([{"from": "human", "value": content}]), generation_prompt=True)

    def encode_conversation(
        self, turns: Sequence[dict[str, str]], max_length: int | None = None, num_images: int = 1
    ) -> EncodedConversation:
        """Token ids and labels of a LLaVA conversation; labels are ``-100`` everywhere but on answers.

        Truncation cuts from the end, never into an image's placeholders: a record whose images do not fit,
        or that keeps no answer token, raises :class:`RecordError`. So does one whose encoded ids do not hold
        ``num_images * num_image_tokens`` placeholders, counted after the chat template (an ``<image>`` in a turn
        after the last answer is never encoded, and the model would fail on the batch).
        """
        messages = self._messages(turns)
        tags = sum(m["content"].count(self.image_token) for m in messages if m["role"] != "assistant")
        answer_tags = sum(m["content"].count(self.image_token) for m in messages if m["role"] == "assistant")
        if tags != num_images or answer_tags:
            raise RecordError(
                f"the conversation has {tags} {self.image_token} tag(s) in human turns and {answer_tags} in answers for "
                f"{num_images} image(s); put exactly one {self.image_token} per image in a human turn.",
                "wrong <image> tags",
            )
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        if not answers or not all(answer.strip() for answer in answers):
            raise RecordError("the conversation has an empty or missing answer (gpt turn) to learn from.", "no answer")
        input_ids: list[int] = []
        labels: list[int] = []
        rendered = ""
        if messages[0]["role"] == "assistant":
            raise RecordError(
                "the conversation starts with an answer (gpt turn) and no system prompt, so there is no question "
                "before it; start with the human turn.",
                "unusable conversation",
            )
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:index], generation_prompt=True)
            full = self._render(messages[: index + 1], generation_prompt=False)
            if not (prompt.startswith(rendered) and full.startswith(prompt)):
                raise RecordError(
                    "the chat template does not render conversations incrementally.", "unusable conversation"
                )
            prompt_ids = self._tokenize(prompt[len(rendered) :])
            answer_ids = self._tokenize(full[len(prompt) :])
            input_ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
            rendered = full
        truncated = max_length is not None and len(input_ids) > max_length
        if truncated:
            image_positions = [i for i, token in enumerate(input_ids) if token == self.image_token_id]
            if image_positions and image_positions[-1] >= max_length:
                raise RecordError(
                    f"the image placeholders end at token {image_positions[-1] + 1}, past max_length={max_length}; "
                    "raise max_length or shorten the text before the image.",
                    "too long",
                )
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise RecordError(f"no answer token is left within max_length={max_length}.", "too long")
        placeholders = input_ids.count(self.image_token_id)
        if placeholders != num_images * self.num_image_tokens:
            raise RecordError(
                f"after the chat template the conversation holds {placeholders} image placeholder tokens where "
                f"{num_images} image(s) need {num_images * self.num_image_tokens}; an {self.image_token} tag in a "
                "turn after the last answer is never encoded: put it in the question the image belongs to.",
                "wrong <image> tags",
            )
        return EncodedConversation(input_ids, labels, truncated)

    # ---------------------------------------------------------------------------------------------------------
    # Inference inputs

    def __call__(self, questions: Sequence[str], images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Left-padded generation inputs for one question per image."""
        if len(questions) != len(images):
            raise ValueError(f"got {len(questions)} questions for {len(images)} images; pass one question per image.")
        sequences = [self._tokenize(self.prompt(q)) for q in questions]
        width = max(map(len, sequences))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": self.image_transform(images)}

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]

    # ---------------------------------------------------------------------------------------------------------
    # Persistence

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        settings = {
            "image_transform": asdict(self.image_transform),
            "num_image_tokens": self.num_image_tokens,
            "image_token": self.image_token,
            "system_prompt": self.system_prompt,
        }
        (directory / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **tokenizer_kwargs: Any) -> "LacoProcessor":
        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {directory} a checkpoint saved by laco?")
        settings = json.loads(path.read_text())
        transform = settings.pop("image_transform")
        transform = ImageTransform(transform["size"], tuple(transform["mean"]), tuple(transform["std"]))
        tokenizer = AutoTokenizer.from_pretrained(directory, **tokenizer_kwargs)
        return cls(tokenizer, transform, **settings)
