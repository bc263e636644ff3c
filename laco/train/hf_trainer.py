"""``LacoTrainer``: the Hugging Face ``Trainer`` with what laco's stages need: per-part learning rates, an
answer-balanced sampler, the answer-only loss, sealed checkpoints loaded strictly, and throughput logs. The stages
that use it are in :mod:`laco.train.trainer`; the distillation stage's subclass in :mod:`laco.train.distill`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler
from transformers import Trainer

from ..mllm.loss import answer_loss
from ..weights import from_pretrained_strict
from .checkpoints import prune, seal
from .freezing import part_parameters


class LacoTrainer(Trainer):
    """``Trainer`` with per-part learning rates and throughput logs (tokens/s, images/s per logging interval)."""

    def __init__(
        self,
        *args: Any,
        part_learning_rates: dict[str, float] | None = None,
        sample_weights: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.part_learning_rates = dict(part_learning_rates or {})
        self.sample_weights = sample_weights
        self.images_seen = 0
        self._last_log = (time.perf_counter(), 0, 0)

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        # seeded, so a resumed run replays the same order and skips exactly the batches it already trained on
        generator = torch.Generator().manual_seed(
            self.args.data_seed if self.args.data_seed is not None else self.args.seed
        )
        return WeightedRandomSampler(
            self.sample_weights, len(self.sample_weights), replacement=True, generator=generator
        )

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with one parameter group per (learning rate, weight decay) pair."""
        if not self.part_learning_rates or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        rate_of: dict[int, float] = {}
        for part, rate in self.part_learning_rates.items():
            for parameter in part_parameters(model, part):
                rate_of.setdefault(id(parameter), rate)
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                key = (rate_of.get(id(parameter), self.args.learning_rate), name in decay)
                groups.setdefault(key, []).append(parameter)
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_class(
            [
                {"params": params, "lr": rate, "weight_decay": self.args.weight_decay if decays else 0.0}
                for (rate, decays), params in groups.items()
            ],
            **optimizer_kwargs,
        )
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Next-token loss computed only where there is a label (:func:`laco.mllm.loss.answer_loss`)."""
        loss, outputs = answer_loss(model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.images_seen += _images_in(inputs) * self.args.world_size
        return super().training_step(model, inputs, num_items_in_batch)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then sealed (once every process has written its files) and older ones pruned."""
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # each rank writes its own RNG state (and shards under FSDP/ZeRO)
        if self.is_world_process_zero():
            checkpoint = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            seal(checkpoint)
            prune(checkpoint.parent)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load a checkpoint's weights strictly: every tensor the model has, by the names ``save_pretrained`` wrote.

        The Trainer's own loader reads the safetensors file with ``load_state_dict(strict=False)``, but
        ``save_pretrained`` writes LLaVA's LLM under ``model.language_model.model.*`` while the model names it
        ``model.language_model.*``: it warned about "missing keys" and resumed stage 2 with the stage-1 LLM. Loading
        through ``from_pretrained`` applies the same key mapping as every other load, and any key that still does
        not fit is an error. FSDP and DeepSpeed checkpoints are their own sharded formats, loaded by their own code.
        """
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.model if model is None else model
        dtype = next(model.parameters()).dtype
        saved = from_pretrained_strict(type(model), resume_from_checkpoint, dtype=dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            last_time, last_tokens, last_images = self._last_log
            elapsed = max(now - last_time, 1e-9)
            tokens = self.state.num_input_tokens_seen
            logs["tokens_per_second"] = round((tokens - last_tokens) / elapsed, 1)
            logs["images_per_second"] = round((self.images_seen - last_images) / elapsed, 2)
            self._last_log = (now, tokens, self.images_seen)
        super().log(logs, start_time)


__all__ = ["LacoTrainer"]


def _images_in(inputs: dict[str, Any]) -> int:
    """Images in a batch: a row of ``pixel_values`` each for LLaVA, else what the family's processor says per image
    (Qwen-VL packs patches as rows, Idefics3 stacks images per record, AnyRes stacks tiles per image)."""
    for key in ("image_grid_thw", "image_sizes"):
        if inputs.get(key) is not None:
            return int(inputs[key].shape[0])
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return 0
    if pixel_values.dim() == 5 and inputs.get("pixel_attention_mask") is not None:  # Idefics3: zero images pad
        return int((pixel_values.flatten(-3) != 0).any(-1).sum())
    return int(pixel_values.shape[0])
