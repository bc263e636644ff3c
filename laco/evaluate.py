"""Exact-match evaluation and question answering (one or several images per question) for a trained LaCo MLLM.

A multi-turn record is scored on its last answer, asked after the turns before it with their reference answers
(the history the record gives, as training reads it); a record with several images is asked with all of them.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .atomic import atomic_write_text
from .data.images import load_rgb
from .data.llava import LlavaExample
from .data.processor_data import generation_inputs
from .mllm import LacoLlavaForConditionalGeneration, LacoProcessor, resolve_attn_implementation
from .mllm.stock import load_processor
from .precision import choose as choose_precision
from .weights import from_pretrained_strict

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and surrounding whitespace: "Blue." and "blue" match, "a blue one" does not."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


@dataclass
class EvalResult:
    accuracy: float
    correct: int
    total: int
    majority_answer: str
    majority_accuracy: float
    question_prior_accuracy: float | None
    seconds: float
    multi_turn: int = 0  # examples asked after earlier turns (scored on their last answer)
    multi_image: int = 0  # examples asked about several images
    per_answer: dict[str, float] = field(default_factory=dict)
    predictions: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        prior = (
            "" if self.question_prior_accuracy is None else f", question-only prior {self.question_prior_accuracy:.1%}"
        )
        kinds = [f"{n} {kind}" for n, kind in ((self.multi_turn, "multi-turn"), (self.multi_image, "multi-image")) if n]
        scored = f" ({', '.join(kinds)}: last answer scored)" if kinds else ""
        return (
            f"exact match {self.accuracy:.1%} ({self.correct}/{self.total}){scored}; blind baselines: majority answer "
            f"'{self.majority_answer}' {self.majority_accuracy:.1%}{prior}; {self.seconds:.0f} s"
        )

    def by_group(self, groups: dict[str, Sequence[str]]) -> dict[str, dict[str, float]]:
        """Accuracy (and the question-only prior's) per group of reference answers, e.g. easy-VQA's answer types, and
        ``same_as_prior``: the share of answers equal to the prior's, which is 1 for a model that ignores the image
        on that group however well it scores."""
        table = {}
        for name, answers in groups.items():
            members = {normalize_answer(a) for a in answers}
            rows = [p for p in self.predictions if normalize_answer(p["reference"]) in members]
            if not rows:
                continue
            hits = [normalize_answer(p["prediction"]) == normalize_answer(p["reference"]) for p in rows]
            prior = [p.get("question_prior") == normalize_answer(p["reference"]) for p in rows]
            same = [p.get("question_prior") == normalize_answer(p["prediction"]) for p in rows]
            table[name] = {"accuracy": sum(hits) / len(rows), "question_prior": sum(prior) / len(rows), "n": len(rows),
                           "same_as_prior": sum(same) / len(rows)}  # fmt: skip
        return table

    @classmethod
    def from_json(cls, path: str | Path) -> EvalResult:
        """A result :meth:`to_json` wrote (with its predictions, which :meth:`by_group` needs)."""
        return cls(**json.loads(Path(path).read_text()))

    def to_json(self, path: str | Path, include_predictions: bool = True) -> None:
        data = asdict(self)
        if not include_predictions:
            data.pop("predictions")
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def load_model(
    directory: str | Path,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    attn_implementation: str = "auto",
):
    """A trained model and its processor from a checkpoint directory written by ``laco train`` (or a LaCo LLaVA
    checkpoint written by ``laco convert``, whose stock processor is read as :func:`laco.mllm.stock.load_processor`
    says).

    ``precision`` (see :mod:`laco.precision`) is the dtype the weights are loaded in: ``auto`` is bf16 where the
    device multiplies it natively and float32 elsewhere.
    """
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory} has no config.json; point --model at a run's final/ directory.")
    dtype = choose_precision(precision, device).dtype
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    if model_type not in ("laco_llava", "llava"):  # another family's LaCo checkpoint: answered through its processor
        from .convert import load_family_processor
        from .loading import load

        model = load(directory, dtype=dtype).to(device).eval()
        model.set_attn_implementation(resolve_attn_implementation(attn_implementation))
        return model, load_family_processor(directory)
    # strict: weights that do not fit the config (a missing compressor, one saved after another layer) are refused
    model = from_pretrained_strict(LacoLlavaForConditionalGeneration, directory, dtype=dtype).to(device).eval()
    model.set_attn_implementation(resolve_attn_implementation(attn_implementation))
    return model, load_processor(directory, model)


@torch.inference_mode()
def answer(
    model: LacoLlavaForConditionalGeneration,
    processor: LacoProcessor,
    images: Sequence[Image.Image | Sequence[Image.Image]],
    questions: Sequence[str | Sequence[dict[str, str]]],
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers, one per question: ``images[i]`` is question ``i``'s image or list of images, and
    ``questions[i]`` a question or a conversation ending with one (see :meth:`LacoProcessor.__call__`)."""
    if isinstance(processor, LacoProcessor):
        inputs = processor(questions, images)
    else:  # another family's own processor and chat template (laco.data.processor_data)
        rows = [[item] if isinstance(item, Image.Image) else list(item) for item in images]
        inputs = generation_inputs(processor, questions, rows)
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    texts = processor.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [text.strip() for text in texts]


def evaluate(
    model: LacoLlavaForConditionalGeneration,
    processor: LacoProcessor,
    examples: Sequence[LlavaExample],
    *,
    train_pairs: Sequence[tuple[str, str]] = (),
    batch_size: int = 32,
    max_new_tokens: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Exact match of greedy answers against references, next to two baselines that never look at the image.

    ``examples`` are :class:`~laco.data.LlavaExample` (id, image, question, reference; a multi-turn or multi-image
    record also its turns and images); ``train_pairs`` are the training set's ``(question, answer)`` pairs. The *majority answer* baseline always gives the most common training answer;
    the *question-only prior* gives, for each question, its most common training answer (easy-VQA asks the
    same 107 questions in both splits, so this prior is strong). A model uses the image only if it beats both.
    Without ``train_pairs`` the majority is taken from the evaluated split and the prior is not computed.
    """
    if not examples:
        raise ValueError("no examples to evaluate.")
    started = time.perf_counter()
    references = [normalize_answer(example.answer) for example in examples]
    train_answers = [normalize_answer(a) for _, a in train_pairs] or references
    majority = Counter(train_answers).most_common(1)[0][0]
    prior_accuracy = None
    if train_pairs:
        by_question: dict[str, Counter] = {}
        for question, reference in train_pairs:
            by_question.setdefault(normalize_answer(question), Counter())[normalize_answer(reference)] += 1
        prior = [
            by_question[q].most_common(1)[0][0]
            if (q := normalize_answer(example.question)) in by_question
            else majority
            for example in examples
        ]
        prior_accuracy = sum(p == r for p, r in zip(prior, references)) / len(references)
    else:
        prior = [None] * len(examples)
    predictions: list[dict[str, str]] = []
    batches = range(0, len(examples), batch_size)
    for start in tqdm(batches, desc="eval", unit="batch", disable=not progress):
        batch = examples[start : start + batch_size]
        images = [[load_rgb(path, max_pixels=None) for path in ex.images or (ex.image,)] for ex in batch]  # checked
        prompts = [list(ex.turns) if ex.turns else ex.question for ex in batch]
        outputs = answer(model, processor, images, prompts, max_new_tokens)
        for offset, (example, output) in enumerate(zip(batch, outputs)):
            predictions.append(
                {
                    "id": example.id,
                    "question": example.question,
                    "reference": example.answer,
                    "prediction": output,
                    "question_prior": prior[start + offset],
                }
            )
    hits = [normalize_answer(p["prediction"]) == ref for p, ref in zip(predictions, references)]
    per_answer = {
        ref: sum(h for h, r in zip(hits, references) if r == ref) / references.count(ref)
        for ref in sorted(set(references))
    }
    return EvalResult(
        accuracy=sum(hits) / len(hits),
        correct=sum(hits),
        total=len(hits),
        majority_answer=majority,
        majority_accuracy=sum(ref == majority for ref in references) / len(references),
        question_prior_accuracy=prior_accuracy,
        seconds=round(time.perf_counter() - started, 1),
        per_answer=per_answer,
        predictions=predictions,
        multi_turn=sum(sum(turn["from"] in ("gpt", "assistant") for turn in ex.turns) > 0 for ex in examples),
        multi_image=sum(len(ex.images) > 1 for ex in examples),
    )
