"""Tower distillation: a stage in which the compressed vision tower learns to reproduce the uncompressed one.

Before the LLM ever sees the merged tokens, the tower after the merge is taught to give what the original tower gave
for the same image: the frozen, uncompressed tower's features (the layer(s) the LLM reads, the tokens it reads) are
``factor x factor`` average-pooled through the same merges, to the merged token count, and the compressed tower's
features are pulled toward them. Only images are used; the LLM does not run, so a step costs two tower forwards and
one tower backward. Its trainable parts are the merge (``compressor``) and, if listed, ``vision_after_merge``.

A stage says ``objective: tower_distillation`` (and ``distill_loss: mse | cosine``); it is a stage like any other,
checkpointed and resumed by the same Trainer machinery. The teacher is copied from the model the stage starts from,
before any checkpoint is loaded, so a resumed stage has the same teacher as an uninterrupted one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .. import functional as F
from .. import patch as laco_patch
from ..adapters import resolve_encoder
from .hf_trainer import LacoTrainer


def uncompressed_copy(tower: nn.Module) -> nn.Module:
    """A frozen copy of ``tower`` without its merges (laco's hooks are deep-copy safe: the copy's own are removed)."""
    teacher = copy.deepcopy(tower)
    laco_patch.remove(teacher)
    return teacher.requires_grad_(False).eval()


def read_features(config: Any, tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The hidden states LLaVA reads from ``tower`` (``vision_feature_layer``, one or a list, concatenated)."""
    layers = config.vision_feature_layer
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states
    layers = layers if isinstance(layers, (list, tuple)) else [layers]
    return torch.cat([hidden[layer] for layer in layers], dim=-1)


def pooled_target(student: nn.Module, teacher_features: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """The teacher's grid tokens average-pooled through each of the student's merges, in turn, to its grid."""
    encoder, adapter = resolve_encoder(student)
    grid = adapter.grid(encoder, pixel_values)
    head, tokens = F.split_prefix(teacher_features, adapter.num_prefix_tokens(encoder))
    for compressor in laco_patch.compressors(student):
        tokens, grid = F.avg_pool_tokens(tokens, grid, compressor.factor)
    return torch.cat([head, tokens], dim=1)


def distillation_loss(student: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``mse``: mean squared difference per channel; ``cosine``: mean ``1 - cos`` per token (direction only)."""
    student, target = student.float(), target.float()
    if kind == "mse":
        return (student - target).square().mean()
    return (1 - nn.functional.cosine_similarity(student, target, dim=-1)).mean()


class DistillTrainer(LacoTrainer):
    """Trains a stage with ``objective: tower_distillation`` (see the module docstring)."""

    loss_is_scaled_for_ga = False  # the loss is a mean per micro-batch: the Trainer averages over accumulation

    def __init__(self, *args: Any, distill_loss: str = "mse", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1:
            raise ValueError(
                "objective: tower_distillation runs the vision tower outside the model's own forward, which "
                "data-parallel training does not synchronise; run this stage in one process, then the next stages "
                "under the launcher."
            )
        tower = self.model.model.vision_tower
        if laco_patch.placement_of(tower) is None:
            raise ValueError(
                "objective: tower_distillation teaches a compressed tower to match the uncompressed one, but this "
                "model's tower is not compressed; set model.compression.layers, or drop the distillation stage."
            )
        self.distill_loss = distill_loss
        self.teacher = uncompressed_copy(tower)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        model = self.accelerator.unwrap_model(model)
        tower, config = model.model.vision_tower, model.config
        pixel_values = pixel_values.to(next(tower.parameters()).dtype)
        with torch.no_grad():
            target = pooled_target(tower, read_features(config, self.teacher, pixel_values), pixel_values)
        features = read_features(config, tower, pixel_values)
        if config.vision_feature_select_strategy == "default":  # LLaVA drops the CLS token
            features, target = features[:, 1:], target[:, 1:]
        loss = distillation_loss(features, target, self.distill_loss)
        return (loss, {"loss": loss}) if return_outputs else loss
