"""A depth curriculum (EPIC-style): stages that train the merge at other depths than ``model.compression`` puts it.

A stage with ``merge_layer: k`` moves the model's merge to after layer ``k`` before it trains, carrying the merge's
learned weights along (the merge has the same shape at every depth: the token width does not change); a stage
without it moves the merge back to where ``model.compression`` puts it, so the run's last stage, which may not set
``merge_layer``, always ends with the configured model. EPIC moves compression from deep to shallow while the
uncompressed model teaches the compressed one: here, a sequence of ``objective: tower_distillation`` stages with
decreasing ``merge_layer``, then the usual stages.

Where the merge sits during a stage is a function of the config and the stage alone (:func:`stage_placement`), so a
stage resumed from a checkpoint, or started from the previous stage's saved model, sees the same placement as an
uninterrupted run.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from .. import patch as laco_patch
from ..adapters import resolve_encoder
from ..config import RunConfig
from ..placement import Placement


def stage_placement(config: RunConfig, index: int, depth: int) -> Placement | None:
    """Where stage ``index`` trains the merge, resolved for an encoder of ``depth`` blocks (``None``: the config does
    not say, as for a run from ``init_from``, whose checkpoint holds its merge)."""
    configured, layer = config.model.compression, config.stages[index].merge_layer
    if configured is None:
        return None
    if layer is not None:
        configured = replace(configured, layers=(layer,))
    return configured.resolve(depth)


def move_merge(model: nn.Module, placement: Placement) -> None:
    """Put ``model``'s single merge after ``placement.layers``, keeping its weights (no-op where it already is)."""
    tower = model.model.vision_tower
    current = laco_patch.placement_of(tower)
    if current is None or current.layers == placement.layers:
        return
    learned = {name: value.clone() for name, value in laco_patch.compressors(tower)[0].state_dict().items()}
    recorded = getattr(model.config, "image_seq_length", None)  # counted at the processor's size (see modeling.py)
    laco_patch.remove(model)
    laco_patch.apply(model, replace(current, layers=placement.layers))
    laco_patch.compressors(tower)[0].load_state_dict(learned, strict=True)
    if recorded is not None:
        model.config.image_seq_length = recorded


def place_for_stage(model: nn.Module, config: RunConfig, index: int) -> None:
    """Move the merge to where stage ``index`` trains it (see :func:`stage_placement`)."""
    if config.model.compression is None:
        return  # init_from: the checkpoint's merge stays (and its tower may be elsewhere than LLaVA's)
    encoder, adapter = resolve_encoder(model.model.vision_tower)
    placement = stage_placement(config, index, len(adapter.blocks(encoder)))
    if placement is not None:
        move_merge(model, placement)
