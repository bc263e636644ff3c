"""Train a LaCo MLLM in LLaVA-style stages with the Hugging Face ``Trainer``.

One command scales from this CPU to many GPUs: run it under ``accelerate launch`` (DDP, FSDP or DeepSpeed ZeRO
configs in ``configs/accelerate/``) and the ``Trainer`` picks the distributed setup up from the environment.

Layout of a run directory::

    runs/NAME/
      config.yaml                 the resolved run config
      processor/                  tokenizer (with <image>) + image transform + placeholder count
      stage1/checkpoint-N/        Trainer checkpoints (model safetensors, optimizer, scheduler, RNG)
      stage1/final/               the model after stage 1 (safetensors), written when the stage completes
      stage2/...
      final/                      the model after the last stage, with its processor: what eval/generate load
      summary.json                per-stage steps, loss, time, tokens/s, images/s

A killed run restarts where it stopped: finished stages are skipped, and the interrupted stage resumes from its
newest checkpoint with the optimizer, scheduler, data order and RNG state restored.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..config import RunConfig, dump_config
from ..data import LlavaDataset, MultimodalCollator, answer_balanced_weights, split_files
from ..mllm import (
    LacoLlavaForConditionalGeneration,
    LacoProcessor,
    build_mllm,
    resolve_attn_implementation,
)
from ..mllm.loss import answer_loss
from ..precision import Precision
from ..precision import choose as choose_precision
from .freezing import count_parameters, part_parameters, set_trainable

logger = logging.getLogger(__name__)

FINAL = "final"
DONE_MARKER = "laco-stage-done.json"


@dataclass
class StageSummary:
    name: str
    steps: int
    seconds: float
    final_loss: float
    tokens_per_second: float
    images_per_second: float
    trainable_parameters: int
    images: int
    world_size: int


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
        pixel_values = inputs.get("pixel_values")
        if pixel_values is not None:
            self.images_seen += pixel_values.shape[0] * self.args.world_size
        return super().training_step(model, inputs, num_items_in_batch)

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


def _training_arguments(
    config: RunConfig, stage_index: int, output: Path, precision: Precision | None = None
) -> TrainingArguments:
    stage, training = config.stages[stage_index], config.training
    cuda = torch.cuda.is_available()
    precision = precision or choose_precision(training.precision, "cuda" if cuda else "cpu", warn=False)
    return TrainingArguments(
        output_dir=str(output),
        max_steps=stage.max_steps,
        per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum,
        learning_rate=stage.learning_rate,
        weight_decay=stage.weight_decay,
        warmup_steps=math.ceil(stage.warmup_ratio * stage.max_steps),
        lr_scheduler_type=stage.scheduler,
        logging_steps=training.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=1,
        bf16=precision.name == "bf16",
        fp16=precision.name == "fp16",
        use_cpu=not cuda,
        activation_checkpointing=training.gradient_checkpointing,
        dataloader_num_workers=training.dataloader_num_workers,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        report_to=[],
        seed=config.seed + stage_index,
        data_seed=config.seed,
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )


def last_complete_checkpoint(stage_dir: Path, tidy: bool = True) -> str | None:
    """The newest checkpoint the ``Trainer`` finished writing (it writes ``trainer_state.json`` last).

    A run killed while saving leaves a partial ``checkpoint-N``; resuming from it would fail or, worse, load a
    half-written optimizer state. It is skipped, and moved aside when ``tidy`` (on the main process only).
    """
    if not stage_dir.exists():
        return None
    checkpoints = sorted(
        (p for p in stage_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in checkpoints:
        if (checkpoint / TRAINER_STATE_NAME).exists():
            return str(checkpoint)
        if tidy:
            aside = checkpoint.with_name(f"incomplete-{checkpoint.name}")
            logger.warning("moving the partially written %s aside to %s", checkpoint, aside)
            if aside.exists():
                shutil.rmtree(aside)
            checkpoint.rename(aside)
    return None


def _stage_done(directory: Path) -> bool:
    return (directory / FINAL / DONE_MARKER).exists()


def train(config: RunConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Run every stage of ``config`` (resuming a previous run in the same ``output_dir``); returns the summary."""
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    dump_config(config, output / "config.yaml")
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    set_seed(config.seed)
    precision = choose_precision(config.training.precision, "cuda" if torch.cuda.is_available() else "cpu")
    if not quiet:
        print(f"precision: {precision.describe()}")

    model, processor = _model_for_next_stage(config, output)
    json_path, image_folder = split_files(config.data, "train")
    dataset = LlavaDataset(
        json_path,
        image_folder,
        processor,
        max_length=config.data.max_length,
        strict=config.data.strict,
        limit=config.data.limit,
        progress=not quiet,
    )
    if not quiet:
        print(f"data: {dataset.report.summary()}")
    collator = MultimodalCollator(processor.tokenizer.pad_token_id)

    summaries: list[dict[str, Any]] = _previous_summaries(output)
    for index, stage in enumerate(config.stages):
        stage_dir = output / stage.name
        if _stage_done(stage_dir):
            continue
        counts = set_trainable(model, stage.trainable)
        trainable, total = count_parameters(model)
        if not quiet:
            parts = ", ".join(f"{part} {n / 1e6:.2f}M" for part, n in counts.items())
            print(f"{stage.name}: training {trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters ({parts})")
        trainer = LacoTrainer(
            model=model,
            args=_training_arguments(config, index, stage_dir, precision),
            train_dataset=dataset,
            data_collator=collator,
            processing_class=processor.tokenizer,
            part_learning_rates=stage.part_learning_rates,
            sample_weights=answer_balanced_weights(dataset, stage.answer_balance) if stage.answer_balance else None,
        )
        last_checkpoint = last_complete_checkpoint(stage_dir, tidy=trainer.is_world_process_zero())
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=last_checkpoint)
        seconds = time.perf_counter() - started
        # throughput of this session only: a resumed stage counts the steps it ran, not the restored ones
        tokens = trainer.state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen
        summary = StageSummary(
            name=stage.name,
            steps=result.global_step,
            seconds=round(seconds, 1),
            final_loss=_last_logged_loss(trainer),
            tokens_per_second=round(tokens / seconds, 1),
            images_per_second=round(trainer.images_seen / seconds, 2),
            trainable_parameters=trainable,
            images=trainer.images_seen,
            world_size=trainer.args.world_size,
        )
        if trainer.is_world_process_zero():
            final = stage_dir / FINAL
            trainer.save_model(str(final))
            # the final model directory holds safetensors and JSON only: no pickled training arguments
            (final / "training_args.bin").unlink(missing_ok=True)
            (final / "training_args.json").write_text(trainer.args.to_json_string())
            processor.save_pretrained(final)
            (final / DONE_MARKER).write_text(json.dumps(asdict(summary), indent=2) + "\n")
        trainer.accelerator.wait_for_everyone()
        summaries = [s for s in summaries if s["name"] != stage.name] + [asdict(summary)]

    if _is_main_process():
        last_final = output / config.stages[-1].name / FINAL
        final = output / FINAL
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(last_final, final)
        summary = {"name": config.name, "precision": precision.to_dict(), "stages": summaries}
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {"name": config.name, "output_dir": str(output), "precision": precision.to_dict(), "stages": summaries}


def _model_for_next_stage(config: RunConfig, output: Path) -> tuple[LacoLlavaForConditionalGeneration, LacoProcessor]:
    """The model the first unfinished stage starts from: the last finished stage's, or a freshly assembled one."""
    finished = [s for s in config.stages if _stage_done(output / s.name)]
    if finished:
        source = output / finished[-1].name / FINAL
        logger.info("resuming from finished stage %s", source)
        model = LacoLlavaForConditionalGeneration.from_pretrained(source)
        model.set_attn_implementation(resolve_attn_implementation(config.model.attn_implementation))
        return model, LacoProcessor.from_pretrained(source)
    spec = config.model
    model, processor = build_mllm(
        spec.vision,
        spec.llm,
        spec.compression,
        image_size=spec.image_size,
        system_prompt=spec.system_prompt,
        attn_implementation=spec.attn_implementation,
    )
    return model, processor


def _previous_summaries(output: Path) -> list[dict[str, Any]]:
    summaries = []
    for marker in sorted(output.glob(f"*/{FINAL}/{DONE_MARKER}")):
        summaries.append(json.loads(marker.read_text()))
    return summaries


def _last_logged_loss(trainer: Trainer) -> float:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return round(float(losses[-1]), 4) if losses else float("nan")


def _is_main_process() -> bool:
    return (
        not torch.distributed.is_available()
        or not torch.distributed.is_initialized()
        or torch.distributed.get_rank() == 0
    )
