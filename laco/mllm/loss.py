"""The training objective of a LaCo MLLM: next-token cross-entropy on the labelled (answer) positions only.

Why not the model's own ``labels=`` loss: it projects every position onto the vocabulary, image placeholders
included, and in LLaVA-style training most positions are image tokens with no label. Here the LM head runs
only where the next token is labelled (``logits_to_keep`` as a mask), which gives the same loss for a fraction
of the LM head's FLOPs and of the logits' memory. ``laco train`` and the training step ``laco bench`` times both
use this function, so the benchmark times the step the trainer runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .processing import IGNORE_INDEX


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets, keep)``: the label each position predicts (its successor's) and where there is one."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets, targets != IGNORE_INDEX


def answer_loss(
    model: nn.Module, inputs: dict[str, Any], num_items_in_batch: int | torch.Tensor | None = None
) -> tuple[torch.Tensor, Any]:
    """``(loss, outputs)``: mean next-token cross-entropy over the labelled positions of ``inputs["labels"]``.

    ``num_items_in_batch`` (the Trainer's count over all accumulated micro-batches) replaces the local count as
    the divisor, so gradient accumulation gives the same gradients as one large batch. ``outputs.logits`` holds
    the kept positions only, in batch-major order.
    """
    inputs = dict(inputs)
    targets, keep = next_token_targets(inputs.pop("labels"))
    outputs = model(**inputs, logits_to_keep=keep)
    loss = torch.nn.functional.cross_entropy(outputs.logits.float(), targets[keep], reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp_min(1)), outputs
