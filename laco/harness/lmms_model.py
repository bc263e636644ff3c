"""The lmms-eval model ``laco``: any checkpoint laco saved, run with its own processor and chat template.

    lmms-eval --model laco --model_args pretrained=runs/default/final --tasks easyvqa \\
        --include_path ~/.cache/laco/lmms-eval-tasks --batch_size 32

``model_args`` (comma-separated ``key=value``):

* ``pretrained`` (required): a checkpoint directory laco wrote (``runs/<run>/final``): the default model, any
  compression placement or compressor, or none; anything :func:`laco.evaluate.load_model` loads, which includes
  every family's LaCo checkpoint (``laco convert``, ``laco train --init-from``; through its own processor and chat
  template, ``generate_until`` requests only). A stock checkpoint of another family, or a damaged one, is refused
  before loading (:func:`laco.harness.family.check_servable`).
* ``device`` (default: ``cuda`` when available, else ``cpu``), ``precision`` (``auto``, ``bf16``, ``fp16``,
  ``fp32``; default ``auto`` as ``laco eval``: bf16 where the device has it natively, see :mod:`laco.precision`),
  ``attn_implementation`` (default ``auto``).
* ``max_new_tokens``: the answer length limit for tasks that set none (default 32).
* ``response_log``: a JSON-lines file that keeps every batch's answers as soon as they exist; running again
  with the same file resumes where an interrupted run stopped (see :mod:`laco.harness.responses`).

``--batch_size N`` sets the batch. Requests keep lmms-eval's order (grouped by generation settings), so with the
same batch size the answers are exactly those of ``laco eval``. Each request must carry one image or several (all
asked about in one prompt, in order, before the context); a request with no image, a video or audio is refused with
an error naming the task and document.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

from ..evaluate import load_model
from ..precision import choose as choose_precision
from .family import check_servable
from .inference import GenerationSettings, continuation_logprobs, generate_answers
from .responses import ResponseLog, checkpoint_fingerprint, request_key

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 32
MODEL_ARGS = ("pretrained", "device", "precision", "attn_implementation", "max_new_tokens", "response_log")

# lmms-eval 0.7.1-0.7.3 pass every response through unwrap_generation_output, which turns a (float, bool)
# loglikelihood pair into the string "(1.5, True)", and its multiple-choice scorer then fails on that string.
# A pair inside its GenerationResult wrapper comes through unchanged. Decided by behaviour, not by version number,
# so an lmms-eval that keeps pairs gets plain pairs.
_WRAP_PAIRS = unwrap_generation_output((0.0, True))[0] != (0.0, True)


class RequestError(ValueError):
    """A request the laco model cannot serve as given (its images, its form)."""


def _batch_size(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise ValueError(f"--batch_size {value!r} is not supported by --model laco; pass a whole number such as 32.")
    return size


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class LacoLmms(lmms):
    """lmms-eval's ``lmms`` interface over :class:`laco.mllm.LacoLlavaForConditionalGeneration`."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        device: str | None = None,
        precision: str = "auto",
        attn_implementation: str = "auto",
        batch_size: int | str = 1,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        response_log: str | None = None,
        max_batch_size: int | None = None,  # lmms-eval passes it for its "auto" batch size, which we do not offer
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(f"unknown model_args {sorted(unknown)} for --model laco; it takes {', '.join(MODEL_ARGS)}.")
        if not pretrained:
            raise ValueError("--model laco needs --model_args pretrained=<checkpoint directory> (a run's final/).")
        check_servable(pretrained, "lmms-eval --model laco", families=True)  # generate_until only, for those
        self.batch_size_per_gpu = _batch_size(batch_size)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        chosen = choose_precision(precision, self._device).name
        self.model, self.processor = load_model(
            pretrained, device=self._device, precision=chosen, attn_implementation=attn_implementation
        )
        self.max_new_tokens = int(max_new_tokens)
        self.responses = ResponseLog(response_log, checkpoint_fingerprint(pretrained, chosen)) if response_log else None
        self._warned: set[str] = set()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---------------------------------------------------------------------------------------------------------
    # Requests

    def _images(self, request) -> list[Image.Image]:
        """The request's images, from its task's ``doc_to_visual``."""
        doc_to_visual, doc_id, task, split = request.args[2:6]
        where = f"task {task!r}, document {doc_id}"
        try:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        except Exception as error:
            raise RequestError(f"{where}: its image could not be loaded: {error}") from error
        visuals = list(visuals or [])
        if not visuals or not all(isinstance(visual, Image.Image) for visual in visuals):
            kinds = ", ".join(type(visual).__name__ for visual in visuals) or "no image"
            raise RequestError(
                f"{where} comes with {len(visuals)} visual(s) ({kinds}); --model laco needs one image or several "
                "(PIL images) per question, not videos, audio or none. Run tasks whose documents have images."
            )
        return [visual.convert("RGB") for visual in visuals]

    @staticmethod
    def _checked(request, kind: str) -> tuple:
        if len(request.args) != 6:
            raise RequestError(
                f"a {kind} request of task {getattr(request, 'task_name', '?')!r} has {len(request.args)} arguments, "
                "not (context, ..., doc_to_visual, doc_id, task, split): --model laco needs an image with every "
                "request (so no acc_mutual_info metric, whose requests have none)."
            )
        return request.args

    def _warn_ignored(self, keys: list[str]) -> None:
        new = [key for key in keys if key not in self._warned]
        if new:
            logger.warning(
                "--model laco ignores the generation settings %s (it honours until, max_new_tokens, "
                "temperature, top_p, top_k, num_beams).",
                new,
            )
            self._warned.update(new)

    @contextlib.contextmanager
    def _progress(self, total: int, kind: str):
        with tqdm(total=total, desc=f"laco {kind}", unit="request", disable=self.rank != 0) as bar:
            yield bar

    def _serve(self, requests, kind: str, keys: list[str], batches: Iterator[list[int]], compute, bar) -> list:
        """Answer ``requests`` batch by batch, from the response log where it already has them."""
        results: list[Any] = [None] * len(requests)
        for batch in batches:
            missing = []
            for index in batch:
                cached = self.responses.get(keys[index]) if self.responses is not None else None
                if cached is None:
                    missing.append(index)
                else:
                    results[index] = tuple(cached) if kind == "loglikelihood" else cached
            if missing:
                answers = compute(missing)
                for index, answer in zip(missing, answers):
                    results[index] = answer
                if self.responses is not None:
                    self.responses.add((keys[index], results[index]) for index in missing)
            bar.update(len(batch))
        return results

    def generate_until(self, requests) -> list[str]:
        """Answers generated in batches of requests that share their generation settings, in request order."""
        args = [self._checked(request, "generate_until") for request in requests]
        groups: dict[str, list[int]] = {}
        for index, (_, gen_kwargs, *_rest) in enumerate(args):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(index)
        results: list[Any] = [None] * len(requests)
        with self._progress(len(requests), "generate_until") as bar:
            for indices in groups.values():
                settings, ignored = GenerationSettings.from_task(args[indices[0]][1], self.max_new_tokens)
                self._warn_ignored(ignored)
                keys = {i: request_key("generate_until", *args[i][3:6], args[i][0], asdict(settings)) for i in indices}

                def compute(batch: list[int], settings=settings) -> list[str]:
                    images = [self._images(requests[i]) for i in batch]
                    return generate_answers(self.model, self.processor, images, [args[i][0] for i in batch], settings)

                served = self._serve(requests, "generate_until", keys, _chunks(indices, self.batch_size), compute, bar)
                for index in indices:
                    results[index] = served[index]
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(negative log-likelihood, greedy)`` of each continuation after its chat-templated context and image.

        The first value is the continuation's negative log-probability in nats, summed over its tokens: lower is
        likelier. lmms-eval 0.7's multiple-choice scorer picks the choice with the *smallest* value (its own models
        return losses), so this is what makes its ``acc`` choose the most probable answer. Where lmms-eval would
        turn pairs into strings (0.7.1-0.7.3), each pair comes wrapped in a ``GenerationResult`` (``.text`` holds it).
        """
        args = [self._checked(request, "loglikelihood") for request in requests]
        keys = [request_key("loglikelihood", *a[3:6], a[0], a[1]) for a in args]

        def compute(batch: list[int]) -> list[tuple[float, bool]]:
            images = [self._images(requests[i]) for i in batch]
            scored = continuation_logprobs(
                self.model, self.processor, images, [args[i][0] for i in batch], [args[i][1] for i in batch]
            )
            return [(-log_prob, greedy) for log_prob, greedy in scored]

        with self._progress(len(requests), "loglikelihood") as bar:
            batches = _chunks(range(len(requests)), self.batch_size)
            pairs = self._serve(requests, "loglikelihood", keys, batches, compute, bar)
        return [GenerationResult(text=pair) for pair in pairs] if _WRAP_PAIRS else pairs

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("--model laco answers single-turn requests only (no generate_until_multi_round).")

    def apply_chat_template(self, *_args, **_kwargs):
        raise RequestError(
            "--model laco always applies the checkpoint's own chat template (from its tokenizer, with its system "
            "prompt); drop --apply_chat_template."
        )
