"""Turn images and conversations into model inputs, with image placeholders sized to the compressed encoder.

``<image>`` in a user message becomes ``num_image_tokens`` copies of the image token, where the count comes from
the (compressed) vision tower, not from the uncompressed patch grid; a record or prompt may hold several images, one
tag each. Conversations are rendered with the processor's multimodal chat template when it has one (a stock
processor's), else the LLM's (plain ``USER:/ASSISTANT:`` turns for tokenizers without one); only assistant answers
get labels, every answer of a multi-turn conversation included.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..config import IMAGE_POSITIONS
from .transform import ImageTransform

IMAGE_TAG = "<image>"
IGNORE_INDEX = -100
PROCESSOR_FILE = "laco_processor.json"
AUTO_PROCESSOR_FILE = "processor_config.json"
# What AutoProcessor passes on that the tokenizer loader understands (it adds its own internal flags).
_TOKENIZER_KWARGS = ("cache_dir", "local_files_only", "revision", "subfolder", "token", "trust_remote_code")

# Role names of LLaVA conversation JSON, mapped to chat-template roles.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

_FALLBACK_TURN = {"system": "{}\n", "user": "USER: {}\n", "assistant": "ASSISTANT: {}{eos}\n"}


class RecordError(ValueError):
    """A training record that cannot be used as given; ``reason`` is a short machine-readable category."""

    def __init__(self, message: str, reason: str = "unusable conversation") -> None:
        super().__init__(message)
        self.reason = reason


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
        image_transform: how images become ``pixel_values`` (size, resize policy, normalisation).
        num_image_tokens: placeholders per image, i.e. what the compressed encoder emits
            (``LacoLlavaForConditionalGeneration.num_image_tokens()``).
        image_token: the placeholder token.
        system_prompt: optional system message for every conversation (``None`` keeps the template's default).
        chat_template: a multimodal chat template (a stock processor's, whose messages hold lists of
            ``{"type": "image"}`` / ``{"type": "text"}`` parts); ``None`` renders with the tokenizer's template.
        image_position: ``"before_question"`` renders turns as written; ``"after_question"`` moves the image tags
            that open a user turn (LLaVA's ``"<image>\\nq"``) after its text, in training records and prompts alike.
    """

    tokenizer: PreTrainedTokenizerBase
    image_transform: ImageTransform = field(default_factory=ImageTransform)
    num_image_tokens: int = 256
    image_token: str = IMAGE_TAG
    system_prompt: str | None = None
    chat_template: str | None = None
    image_position: str = IMAGE_POSITIONS[0]

    def __post_init__(self) -> None:
        if self.image_position not in IMAGE_POSITIONS:
            raise ValueError(f"image_position must be one of {IMAGE_POSITIONS}, got {self.image_position!r}.")
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
            content = turn.get("value", turn.get("content", ""))
            messages.append({"role": role, "content": self._laid_out(content) if role == "user" else content})
        return messages

    def _laid_out(self, content: str) -> str:
        """``content`` with the image tags that open it moved after its text, where ``image_position`` says so."""
        if self.image_position == "before_question":
            return content
        tags, text = 0, content
        while text.startswith(self.image_token):
            tags, text = tags + 1, text[len(self.image_token) :].lstrip("\n")
        if not tags or not text.strip():
            return content
        return "\n".join([text.rstrip("\n")] + [self.image_token] * tags)

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if self.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": m["role"], "content": self._parts(m["content"])} for m in messages],
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        eos = self.tokenizer.eos_token or ""
        text = "".join(_FALLBACK_TURN[m["role"]].format(m["content"], eos=eos) for m in messages)
        return text + ("ASSISTANT: " if generation_prompt else "")

    def _parts(self, content: str) -> list[dict[str, str]]:
        """``"<image>\\nWhat?"`` as multimodal templates take it: ``[{"type": "image"}, {"type": "text", ...}]``."""
        parts: list[dict[str, str]] = []
        for index, piece in enumerate(content.split(self.image_token)):
            if index:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        return parts

    def _tokenize(self, text: str) -> list[int]:
        """Tokenize, replacing every ``<image>`` tag by ``num_image_tokens`` image tokens."""
        ids: list[int] = []
        for index, piece in enumerate(text.split(self.image_token)):
            if index:
                ids.extend([self.image_token_id] * self.num_image_tokens)
            if piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids

    def prompt(self, question: str, num_images: int = 1) -> str:
        """The text that asks ``question`` about ``num_images`` images, ending where the assistant's answer starts.

        ``<image>`` tags in the question place the images (one per image); without tags they all come first.
        """
        tags = question.count(self.image_token)
        if tags == 0:
            question = "\n".join([self.image_token] * num_images + [question])
        elif tags != num_images:
            raise ValueError(
                f"the prompt {question!r} holds {tags} {self.image_token} tag(s) for {num_images} image(s); put one "
                f"tag per image where it belongs in the text, or none to put every image first."
            )
        return self.prompt_turns([{"from": "human", "value": question}])

    def prompt_turns(self, turns: Sequence[dict[str, str]]) -> str:
        """The conversation ``turns`` (LLaVA ``from``/``value`` dicts, ending with a question) ready for the answer."""
        return self._render(self._messages(turns), generation_prompt=True)

    def encode_conversation(
        self, turns: Sequence[dict[str, str]], max_length: int | None = None, num_images: int = 1
    ) -> EncodedConversation:
        """Token ids and labels of a LLaVA conversation; labels are ``-100`` everywhere but on answers (every answer
        turn of a multi-turn conversation is learned).

        Truncation cuts from the end, never into an image's placeholders: a record whose images do not fit,
        or that keeps no answer token, raises :class:`RecordError`. So does one whose encoded ids do not hold
        ``num_image_tokens`` placeholders for each of its ``num_images`` images, counted after the chat template (an
        ``<image>`` in a turn after the last answer is never encoded, and the model would fail on the batch).
        """
        messages = self._messages(turns)
        self._check_tags(messages, num_images)
        input_ids: list[int] = []
        labels: list[int] = []
        rendered = ""
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
            answer_ids = self._answer_ids(full[len(prompt) :])
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
        self._check_placeholders(input_ids, num_images)
        return EncodedConversation(input_ids, labels, truncated)

    def _answer_ids(self, text: str) -> list[int]:
        """An answer's ids. Stock multimodal templates (LLaVA's) end an answer with a space, not the EOS the original
        training appended; without it the model never learns to stop, so it is added there."""
        ids = self._tokenize(text)
        eos = self.tokenizer.eos_token_id
        if self.chat_template and eos is not None and eos not in ids:
            ids.append(eos)
        return ids

    def _check_tags(self, messages: list[dict[str, str]], num_images: int) -> None:
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
        if messages[0]["role"] == "assistant":
            raise RecordError(
                "the conversation starts with an answer (gpt turn) and no system prompt, so there is no question "
                "before it; start with the human turn.",
                "unusable conversation",
            )

    def _check_placeholders(self, input_ids: list[int], num_images: int) -> None:
        """Each image's placeholders, as runs of ``num_image_tokens`` (adjacent images make one longer run)."""
        runs, length = [], 0
        for token in [*input_ids, None]:
            if token == self.image_token_id:
                length += 1
            elif length:
                runs.append(length)
                length = 0
        if any(run % self.num_image_tokens for run in runs) or sum(runs) != num_images * self.num_image_tokens:
            raise RecordError(
                f"after the chat template the conversation holds image placeholder runs of {runs} tokens where "
                f"{num_images} image(s) need {self.num_image_tokens} each; an {self.image_token} tag in a turn after "
                "the last answer is never encoded: put it in the question the image belongs to.",
                "wrong <image> tags",
            )

    # ---------------------------------------------------------------------------------------------------------
    # Inference inputs

    def __call__(
        self,
        questions: Sequence[str | Sequence[dict[str, str]]],
        images: Sequence[Image.Image | Sequence[Image.Image]],
    ) -> dict[str, torch.Tensor]:
        """Left-padded generation inputs, one row per question.

        ``questions[i]`` is a question (see :meth:`prompt`) or a conversation ending with a question (LLaVA turns,
        earlier answers included); ``images[i]`` its image, or its list of images in the order of their tags.
        ``pixel_values`` holds every image of every row, in order.
        """
        if len(questions) != len(images):
            raise ValueError(
                f"got {len(questions)} questions for {len(images)} images (or image lists); pass one entry per "
                "question: its image, or the list of its images."
            )
        per_row = [[item] if isinstance(item, Image.Image) else list(item) for item in images]
        if any(not row for row in per_row):
            raise ValueError("every question needs at least one image; laco's model is image-conditioned.")
        sequences = [self._tokenize(self._prompt_of(q, len(row))) for q, row in zip(questions, per_row)]
        for index, (ids, row) in enumerate(zip(sequences, per_row)):
            if ids.count(self.image_token_id) != len(row) * self.num_image_tokens:
                raise ValueError(
                    f"question {index} holds {ids.count(self.image_token_id)} image placeholders after the chat "
                    f"template where its {len(row)} image(s) need {len(row) * self.num_image_tokens}: the template "
                    f"drops or repeats {self.image_token} tags. Give the processor a template that writes each "
                    "image part as the tag (chat_template), or none to use the tokenizer's."
                )
        width = max(map(len, sequences))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        pixel_values = self.image_transform([image for row in per_row for image in row])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}

    def _prompt_of(self, question: str | Sequence[dict[str, str]], num_images: int) -> str:
        if isinstance(question, str):
            return self.prompt(question, num_images)
        tags = sum(turn.get("value", "").count(self.image_token) for turn in question)
        if tags != num_images:
            raise ValueError(
                f"a conversation with {tags} {self.image_token} tag(s) came with {num_images} image(s); give one "
                "image per tag, in the order of the tags."
            )
        return self.prompt_turns(question)

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]

    # ---------------------------------------------------------------------------------------------------------
    # Persistence

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        settings = {
            "image_transform": self.image_transform.to_dict(),
            "num_image_tokens": self.num_image_tokens,
            "image_token": self.image_token,
            "system_prompt": self.system_prompt,
            "chat_template": self.chat_template,
            "image_position": self.image_position,
        }
        (directory / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        # AutoProcessor.from_pretrained reads the class from here first (before the tokenizer's own record, which
        # names a stock processor when the tokenizer came from one).
        (directory / AUTO_PROCESSOR_FILE).write_text(json.dumps({"processor_class": type(self).__name__}) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> "LacoProcessor":
        """Load a processor saved by :meth:`save_pretrained` (also what ``AutoProcessor.from_pretrained`` calls)."""
        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {directory} a checkpoint saved by laco?")
        settings = json.loads(path.read_text())
        transform = ImageTransform.from_dict(settings.pop("image_transform"))
        hub = {key: value for key, value in kwargs.items() if key in _TOKENIZER_KWARGS and value is not None}
        tokenizer = AutoTokenizer.from_pretrained(directory, **hub)
        return cls(tokenizer, transform, **settings)
