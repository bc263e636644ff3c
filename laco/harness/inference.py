"""Batched generation and continuation log-likelihoods for a laco MLLM, with its own processor and chat template.

These are the two operations an evaluation harness asks of a model. They take plain images and strings (no
lmms-eval types), so they are tested without lmms-eval installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..data.processor_data import generation_inputs
from ..mllm import LacoLlavaForConditionalGeneration, LacoProcessor

# Generation settings lmms-eval tasks pass that we honour; `max_gen_toks` is lm-eval's name for max_new_tokens.
_HONOURED = {"until", "max_new_tokens", "max_gen_toks", "temperature", "do_sample", "top_p", "top_k", "num_beams"}


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate one batch: greedy unless the temperature is above 0."""

    max_new_tokens: int
    until: tuple[str, ...] = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    num_beams: int = 1

    @classmethod
    def from_task(
        cls, kwargs: Mapping[str, Any], default_max_new_tokens: int
    ) -> tuple["GenerationSettings", list[str]]:
        """Settings from a task's ``generation_kwargs``, and the keys we do not use (model-specific ones)."""
        until = kwargs.get("until") or ()
        if isinstance(until, str):
            until = (until,)
        elif not isinstance(until, (list, tuple)) or not all(isinstance(stop, str) for stop in until):
            raise ValueError(f"generation_kwargs until={until!r} must be a string or a list of strings.")
        max_new_tokens = kwargs.get("max_new_tokens", kwargs.get("max_gen_toks", default_max_new_tokens))
        temperature = float(kwargs.get("temperature") or 0.0)
        # lmms-eval's own models sample exactly when temperature > 0, whatever do_sample says; so do we
        do_sample = temperature > 0
        settings = cls(
            max_new_tokens=int(max_new_tokens),
            until=tuple(stop for stop in until if stop),
            do_sample=do_sample,
            temperature=temperature if do_sample else 1.0,
            top_p=kwargs.get("top_p") if do_sample else None,
            top_k=kwargs.get("top_k") if do_sample else None,
            num_beams=int(kwargs.get("num_beams") or 1),
        )
        return settings, sorted(set(kwargs) - _HONOURED)

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = float(self.top_p)
            if self.top_k is not None:
                kwargs["top_k"] = int(self.top_k)
        if self.num_beams > 1:
            kwargs["num_beams"] = self.num_beams
        return kwargs


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first of the ``until`` strings (the harness's stop sequences)."""
    for stop in until:
        text = text.split(stop, 1)[0]
    return text.strip()


def _model_inputs(
    model: LacoLlavaForConditionalGeneration, processor: LacoProcessor, questions, images
) -> dict[str, torch.Tensor]:
    if isinstance(processor, LacoProcessor):
        encoded = processor(questions, images)
    else:  # another family's LaCo checkpoint: its own processor and chat template, as laco eval asks it
        rows = [[item] if isinstance(item, Image.Image) else list(item) for item in images]
        encoded = generation_inputs(processor, questions, rows)
    inputs = {key: value.to(model.device) for key, value in encoded.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


@torch.inference_mode()
def generate_answers(
    model: LacoLlavaForConditionalGeneration,
    processor: LacoProcessor,
    images: Sequence[Image.Image | Sequence[Image.Image]],
    questions: Sequence[str],
    settings: GenerationSettings,
) -> list[str]:
    """One answer per question (about its image, or its list of images), generated as a left-padded batch.

    Greedy settings make exactly the ``generate`` call of :func:`laco.evaluate.answer` (what ``laco eval``
    scores), so the two give the same answers for the same batches.
    """
    inputs = _model_inputs(model, processor, questions, images)
    output = model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=processor.tokenizer.pad_token_id)
    texts = processor.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [cut_at_stops(text.strip(), settings.until) for text in texts]


@torch.inference_mode()
def continuation_logprobs(
    model: LacoLlavaForConditionalGeneration,
    processor: LacoProcessor,
    images: Sequence[Image.Image | Sequence[Image.Image]],
    contexts: Sequence[str],
    continuations: Sequence[str],
) -> list[tuple[float, bool]]:
    """``(log P(continuation | prompt), greedy)`` per row, where the prompt is ``context`` about the image in the
    checkpoint's chat template, ending where the assistant's answer starts (as in training).

    ``greedy`` says whether greedy decoding would produce exactly the continuation's tokens. The continuation is
    tokenized on its own, as training tokenizes answers. Log-probabilities are natural logs summed over tokens.
    """
    if not (len(images) == len(contexts) == len(continuations)):
        raise ValueError(f"got {len(images)} images, {len(contexts)} contexts and {len(continuations)} continuations.")
    if not isinstance(processor, LacoProcessor):
        # explicit 1-D positions below are LLaVA's; Qwen-VL's M-RoPE and Gemma3's token types need their own
        raise ValueError(
            f"loglikelihood (multiple-choice) requests are scored for LaCo LLaVA checkpoints only, not with a "
            f"{type(processor).__name__}; run this family on generate_until tasks."
        )
    tokenizer = processor.tokenizer
    targets = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
    for text, ids in zip(continuations, targets):
        if not ids:
            raise ValueError(f"the continuation {text!r} has no tokens to score; give each choice some text.")
    prompt = _model_inputs(model, processor, contexts, images)
    width = max(map(len, targets))
    batch = len(targets)
    continuation = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
    continuation_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, ids in enumerate(targets):
        continuation[row, : len(ids)] = torch.tensor(ids)
        continuation_mask[row, : len(ids)] = 1
    # Prompts are left-padded, continuations right-padded: [pad | prompt | continuation | pad].
    input_ids = torch.cat([prompt["input_ids"], continuation.to(model.device)], dim=1)
    attention_mask = torch.cat([prompt["attention_mask"], continuation_mask.to(model.device)], dim=1)
    # Positions count real tokens only, as generate() numbers a left-padded prompt.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # Only the logits that predict continuation tokens: the last prompt position and all but the last one after.
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        pixel_values=prompt["pixel_values"],
        logits_to_keep=width + 1,
    ).logits[:, :-1]
    log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
    token_log_probs = log_probs.gather(-1, continuation.unsqueeze(-1)).squeeze(-1) * continuation_mask
    greedy = (log_probs.argmax(-1) == continuation) | (continuation_mask == 0)
    return [(float(total), bool(hit)) for total, hit in zip(token_log_probs.sum(-1), greedy.all(-1))]
