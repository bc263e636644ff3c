"""What each built-in measurement times, as ``(prepare, call)`` for one variant on the run's
:class:`~laco.bench.testbed.Testbed` (registered in :mod:`laco.bench.measurements`).

* encoder: the vision tower's forward (inference mode);
* train: a stage-2 training step of the MLLM, everything trainable: forward, the loss ``laco train`` uses
  (:func:`laco.mllm.loss.answer_loss`: the LM head projects the answer tokens only), backward, AdamW step, zero
  grad;
* prefill: time to first token: forward over image + prompt with an empty KV cache, logits of the last token,
  greedy first token;
* decode: ``answer_tokens`` greedy single-token steps with the KV cache left by the prefill.

``prepare`` runs untimed before every call: it activates the variant's placement (and sets up a fresh cache).
Calls that run the LLM report the time inside its decoder layers (``stack_*``), which ``--llm-layers`` scales.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from ..mllm.loss import answer_loss

if TYPE_CHECKING:
    from .measurements import Workload
    from .testbed import Testbed
    from .variants import BenchVariant


def encoder_forward(bench: Testbed, variant: BenchVariant) -> Workload:
    pixel_values = bench.inputs.pixel_values

    def prepare() -> None:
        bench.activate(variant)

    def call() -> None:
        with torch.inference_mode():
            bench.tower(pixel_values=pixel_values)

    return prepare, call


def train_step(bench: Testbed, variant: BenchVariant) -> Workload:
    ids = bench.inputs.ids(bench.image_tokens(variant), with_answer=True)
    batch = {"input_ids": ids, "pixel_values": bench.inputs.pixel_values, "labels": bench.inputs.labels(ids)}
    model, clock, stack = bench.model, bench.clock, bench.stack

    def prepare() -> None:
        bench.activate(variant)

    def call() -> dict[str, float]:
        rest, stack_optimizer, own = bench.optimizers(variant)
        stack.reset()
        t0 = clock.mark()
        loss, _ = answer_loss(model, batch)
        t1 = clock.mark()
        loss.backward()
        t2 = clock.mark()
        rest.step()
        if own is not None:
            own.step()
        t3 = clock.mark()
        stack_optimizer.step()
        t4 = clock.mark()
        model.zero_grad(set_to_none=True)
        t5 = clock.mark()
        return {
            "forward": clock.seconds(t0, t1),
            "backward": clock.seconds(t1, t2),
            "optimizer": clock.seconds(t2, t5),
            "stack_forward": stack.forward_seconds(),
            "stack_backward": stack.backward_seconds(),
            "stack_optimizer": clock.seconds(t3, t4),
        }

    return prepare, call


def _new_cache(bench: Testbed):
    from transformers import DynamicCache

    return DynamicCache(config=bench.model.config.text_config)


def _first_token(bench: Testbed, ids: torch.Tensor, cache) -> torch.Tensor:
    """Prefill ``cache`` with image + prompt and pick the first answer token greedily (logits of the last only)."""
    out = bench.model(
        input_ids=ids, pixel_values=bench.inputs.pixel_values, cache=cache, use_cache=True, logits_to_keep=1
    )
    return out.logits[:, -1:].argmax(-1)


def _prefill_once(bench: Testbed, variant: BenchVariant):
    """The first token and the KV cache after the prompt, computed untimed for decoding."""
    ids = bench.inputs.ids(bench.image_tokens(variant), with_answer=False)
    cache = _new_cache(bench)
    with torch.inference_mode():
        return _first_token(bench, ids, cache), cache


def prefill(bench: Testbed, variant: BenchVariant) -> Workload:
    ids = bench.inputs.ids(bench.image_tokens(variant), with_answer=False)
    state: dict[str, Any] = {}

    def prepare() -> None:
        bench.activate(variant)
        state["cache"] = _new_cache(bench)

    def call() -> dict[str, float]:
        bench.stack.reset()
        with torch.inference_mode():
            _first_token(bench, ids, state["cache"])
        return {"stack_forward": bench.stack.forward_seconds()}

    return prepare, call


def decode(bench: Testbed, variant: BenchVariant) -> Workload:
    steps = bench.inputs.answer_tokens
    state: dict[str, Any] = {}

    def prepare() -> None:
        bench.activate(variant)
        if variant.name not in bench.prefill_cache:
            bench.prefill_cache[variant.name] = _prefill_once(bench, variant)
        token, cache = bench.prefill_cache[variant.name]
        state["token"], state["cache"] = token, copy.deepcopy(cache)  # every round decodes from the same prefix

    def call() -> dict[str, float]:
        bench.stack.reset()
        token, cache = state["token"], state["cache"]
        with torch.inference_mode():
            for _ in range(steps):
                out = bench.model(input_ids=token, cache=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
        return {"stack_forward": bench.stack.forward_seconds()}

    return prepare, call
