"""What changes around a Qwen-VL tower's post-encoder mergers when LaCo merges inside it.

``keep_llm_tokens``: the tower's own 2x2 merge has moved inside the ViT, so the final merger (and Qwen3-VL's
DeepStack mergers fed by layers after the merge) must take one token per output instead of four. Each runs a
*1x merger* instead: a copy of the pretrained one whose first Linear sums its four input blocks, so a token that is
the average of four identical tokens maps exactly as those four did (a LayerNorm over the concatenation, Qwen3-VL's
DeepStack "postshuffle" norm, folds its affine into that Linear first). The copy is a new child of the stock merger
(``laco_one_to_one``), which stays in the model with its pretrained tensors; :func:`laco.remove` takes the copy out.

``compress_more``: the pretrained mergers stay and merge the merged grid 2x2 once more. Two hooks keep the outputs
in the order the LLM expects: Qwen2.5-VL un-permutes the merger's output with the *input's* window index, which has
four times too many entries now, so the merger's real output is set aside in row-major order and handed back as the
tower's ``pooler_output``; Qwen3-VL's DeepStack taps that precede the merge see four times too many tokens, so their
outputs are averaged over each 2x2 block (parameter-free) to line up with the LLM's tokens.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .base import CallState, Undo
from .changes import Changes


@torch.no_grad()
def one_to_one_merger(merger: nn.Module, width: int) -> nn.Module:
    """A 1x copy of a Qwen-VL patch merger (``PatchMerger``, ``Qwen2_5_VLPatchMerger``, ``Qwen3VLVisionPatchMerger``)
    that maps each token of width ``width`` to one output, initialised from the pretrained merger."""
    groups = merger.hidden_size // width
    new = copy.deepcopy(merger)
    if hasattr(merger, "ln_q"):  # Qwen2-VL, Qwen2.5-VL: norm per token, mlp[0] on the concatenation
        new.mlp[0] = _summed_linear(merger.mlp[0], groups, width)
    elif getattr(merger, "use_postshuffle_norm", False):  # Qwen3-VL DeepStack: LayerNorm over the concatenation
        norm = merger.norm
        new.norm = nn.LayerNorm(width, eps=norm.eps, device=norm.weight.device, dtype=norm.weight.dtype)
        new.linear_fc1 = _summed_linear(merger.linear_fc1, groups, width, norm.weight, norm.bias)
    elif hasattr(merger, "linear_fc1"):  # Qwen3-VL: norm per token
        new.linear_fc1 = _summed_linear(merger.linear_fc1, groups, width)
    else:
        raise ValueError(f"laco does not know the merger {type(merger).__name__}; it cannot be made 1x.")
    new.hidden_size = width  # the merger views its normalised input as (-1, hidden_size): one token each now
    return new


def _summed_linear(
    linear: nn.Linear, groups: int, width: int, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
) -> nn.Linear:
    """``linear`` on ``groups`` concatenated copies of one token (after an affine ``scale * x + shift`` over the
    concatenation, if given), as one Linear on the token."""
    weight = linear.weight.view(linear.out_features, groups, width)
    bias = linear.bias.clone() if linear.bias is not None else torch.zeros_like(weight[:, 0, 0])
    if shift is not None:
        bias += linear.weight @ shift
    if scale is not None:
        weight = weight * scale.view(1, groups, width)
    new = nn.Linear(width, linear.out_features, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight.sum(1))
    new.bias.copy_(bias)
    return new


ONE_TO_ONE_ATTRIBUTE = "laco_one_to_one"
"""The child of a Qwen-VL merger that holds its 1x copy under ``keep_llm_tokens``."""


class RunOneToOne:
    """Instance ``forward`` of a Qwen-VL merger under ``keep_llm_tokens``: its 1x copy (the child
    :data:`ONE_TO_ONE_ATTRIBUTE`) runs instead. Holds the merger, not a bound method, so ``copy.deepcopy`` maps it to
    the copy's child."""

    def __init__(self, merger: nn.Module) -> None:
        self.merger = merger

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.merger, ONE_TO_ONE_ATTRIBUTE)(*args, **kwargs)


def run_one_to_one(merger: nn.Module, width: int) -> list[Undo]:
    """Make ``merger`` run a 1x copy of itself, kept as its child: the stock merger's own tensors stay in the
    model (and in what ``save_pretrained`` writes) under their names, so a converted checkpoint keeps every
    pretrained tensor, a model reloaded compressed has them loaded, and :func:`laco.remove` restores a working stock
    model. Returns the undo steps."""
    changes, one_to_one = Changes(), one_to_one_merger(merger, width)
    for parameter in merger.parameters():  # inactive while compressed: frozen, so DDP finds no unused trainable one
        changes.set(parameter, "requires_grad", False)
    changes.add_child(merger, ONE_TO_ONE_ATTRIBUTE, one_to_one)
    changes.override(merger, "forward", RunOneToOne(merger))
    return changes.undo


# --------------------------------------------------------------------------------------------------------------
# compress_more: hooks that keep the outputs in the LLM's order. Objects rather than closures, so copy.deepcopy of the
# model gives the copy hooks that read the copy's state, as laco's own hooks do.


class _CallHook:
    """A forward hook that acts only inside a running forward call of the tower, on that call's grids (read from
    the patch state, which ``copy.deepcopy`` maps to the copy's)."""

    def __init__(self, state: CallState) -> None:
        self.state = state

    def __call__(self, module, args, output):
        grids = getattr(self.state.input_layout, "grids", None)
        if grids is None or getattr(grids, "finished", False):
            return None
        return self.during_call(grids, output)

    def during_call(self, grids: Any, output: Any) -> Any:
        raise NotImplementedError


class SetAsideWindowedOutput(_CallHook):
    """Forward hook of Qwen2.5-VL's final merger (``compress_more``): keep its real output in row-major order and
    hand the tower's forward a zero-width stand-in that its own ``[argsort(window_index)]`` can index."""

    def during_call(self, grids: Any, output: torch.Tensor) -> torch.Tensor:
        grids.final_output = output[grids.output_order.to(output.device)]
        return output.new_empty((grids.units, 0))


class PoolEarlyTap(_CallHook):
    """Forward hook of a Qwen3-VL DeepStack merger that reads a layer before the merge (``compress_more``): average
    its outputs over each 2x2 block of merge units, the LLM's tokens."""

    def during_call(self, grids: Any, output: torch.Tensor) -> torch.Tensor:
        blocks = output[grids.rows_to_blocks.to(output.device)]
        return blocks.view(-1, grids.group, output.shape[-1]).mean(1)


class FinishCall(_CallHook):
    """Forward hook of the tower (``compress_more``): put the set-aside merger output in ``pooler_output`` and mark
    the call finished, so a merger called on its own afterwards is left alone."""

    def during_call(self, grids: Any, output: Any) -> Any:
        grids.finished = True
        final = getattr(grids, "final_output", None)
        if final is None:
            return None
        grids.final_output = None
        if isinstance(output, tuple):
            return (output[0], final, *output[2:])
        output["pooler_output"] = final
        return output


__all__ = [
    "ONE_TO_ONE_ATTRIBUTE",
    "FinishCall",
    "PoolEarlyTap",
    "RunOneToOne",
    "SetAsideWindowedOutput",
    "one_to_one_merger",
    "run_one_to_one",
]
