"""What :func:`laco.apply` attaches to an encoder: its state, and the hooks that merge tokens as the layout says.

Hooks are objects holding the patch state rather than closures, so ``copy.deepcopy`` (EMA copies, some distributed
wrappers) and pickling give the copy hooks that drive the copy's compressors, not the original's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import EncoderAdapter
from .adapters.base import Undo
from .adapters.layout import TokenLayout
from .compressors import TokenCompressor
from .placement import Placement

COMPRESSOR_ATTRIBUTE = "laco_compressor"


@dataclass
class Stage:
    layer: int
    block: nn.Module
    hook: torch.utils.hooks.RemovableHandle


@dataclass
class PatchState:
    """What :func:`apply` attached, and the layout of the current forward call's input."""

    adapter: EncoderAdapter
    encoder: nn.Module  # a cycle, on purpose: deepcopy and pickling map it to the copy, as they do the hooks
    placement: Placement
    stages: list[Stage]
    handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)
    undo: list[Undo] = field(default_factory=list)
    input_layout: TokenLayout | None = None

    def compressor(self, stage: int) -> TokenCompressor:
        return getattr(self.stages[stage].block, COMPRESSOR_ATTRIBUTE)

    def layout_after(self, layout: TokenLayout, stages: int) -> TokenLayout:
        """``layout`` once the first ``stages`` merges have run."""
        for index in range(stages):
            layout = layout.after(self.compressor(index))
        return layout

    def stages_before_block(self, block_index: int) -> int:
        """How many merges run before block ``block_index`` (0-based): those after blocks 1..block_index."""
        return sum(stage.layer <= block_index for stage in self.stages)


class InputHook:
    """Encoder forward pre-hook: record the layout of this call's input, from which every stage derives its own.

    Hooks are objects holding the patch state rather than closures, so ``copy.deepcopy`` (EMA copies, some
    distributed wrappers) and pickling give the copy hooks that drive the copy's compressors, not the original's.
    """

    def __init__(self, state: PatchState) -> None:
        self.state = state

    def __call__(self, module, args, kwargs):
        state = self.state
        layout = state.input_layout = state.adapter.layout(module, args, kwargs, state.placement)
        return None if layout is None else layout.encoder_inputs(args, kwargs)


class StageHook:
    """Forward hook of block k: merge the image tokens of its output as the layout says."""

    def __init__(self, state: PatchState, index: int) -> None:
        self.state, self.index = state, index

    def __call__(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        layout = layout_before_stage(self.state, self.index, hidden)
        hidden = layout.merge(hidden, getattr(module, COMPRESSOR_ATTRIBUTE))
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class BlockInputsHook:
    """Forward pre-hook of a block after a merge: give it the arguments its (merged) tokens need."""

    def __init__(self, state: PatchState, block_index: int) -> None:
        self.state, self.block_index = state, block_index

    def __call__(self, module, args, kwargs):
        state = self.state
        if state.input_layout is None:
            return None
        layout = state.layout_after(state.input_layout, state.stages_before_block(self.block_index))
        return layout.block_call(self.block_index, args, kwargs)


def layout_before_stage(state: PatchState, index: int, hidden: torch.Tensor) -> TokenLayout:
    where = f"layer {state.stages[index].layer}"
    if state.input_layout is None:  # no readable input (blocks called directly, inputs_embeds)
        return state.adapter.fallback_layout(state.encoder, hidden, where)
    layout = state.layout_after(state.input_layout, index)
    layout.check(hidden, where)
    return layout
