"""Train a LaCo MLLM in LLaVA-style stages with the Hugging Face ``Trainer``.

One command scales from this CPU to many GPUs: run it under ``accelerate launch`` (DDP, FSDP or DeepSpeed ZeRO
configs in ``configs/accelerate/``) and the ``Trainer`` picks the distributed setup up from the environment.

Layout of a run directory::

    runs/NAME/
      config.yaml                 the resolved run config (written once accepted: see laco.train.resume)
      .laco.lock                  held by the process training here
      processor/                  tokenizer (with <image>) + image transform + placeholder count
      stage1/checkpoint-N/        Trainer checkpoints (model safetensors, optimizer, scheduler, RNG), the last two
      stage1/final/               the model after stage 1 (safetensors), written when the stage completes
      stage2/...
      final/                      the model after the last stage, with its processor: what eval/generate load
      summary.json                per-stage steps, loss, time, tokens/s, images/s

A killed run restarts where it stopped: finished stages are skipped, and the interrupted stage resumes from its
newest complete checkpoint with the model (loaded strictly), optimizer, scheduler, data order and RNG state
restored. Every stage starts from the previous stage's saved ``final/``, whether the run was interrupted or not, so
a resumed run and an uninterrupted one take the same path. What makes this exact, and what refuses a rerun that
would not be, lives in :mod:`laco.train.checkpoints` (sealed, checked checkpoints; the last two kept) and
:mod:`laco.train.resume` (the run lock and the config comparison).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments, set_seed
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from .. import patch as laco_patch
from ..adapters import resolve_encoder
from ..config import RunConfig
from ..data import (
    LlavaDataset,
    MultimodalCollator,
    ProcessorCollator,
    answer_balanced_weights,
    llava_dataset,
    processor_dataset,
)
from ..mllm import (
    LacoLlavaForConditionalGeneration,
    LacoProcessor,
    build_mllm,
    resolve_attn_implementation,
)
from ..placement import Placement
from ..precision import Precision
from ..precision import choose as choose_precision
from ..weights import from_pretrained_strict
from .checkpoints import (
    last_complete_checkpoint,
    previous_summaries,
    publish_final,
    save_stage_final,
    stage_done,
)
from .curriculum import place_for_stage, stage_placement
from .distill import DistillTrainer
from .freezing import count_parameters, set_trainable, stage_part_rates
from .hf_trainer import LacoTrainer
from .init_from import check_init_from, checkpoint_model_class, checkpoint_processor, load_init_from
from .resume import ConfigMismatch, RunLock, accept_config

logger = logging.getLogger(__name__)


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
        save_total_limit=None,  # LacoTrainer._save_checkpoint keeps the last two, after checking the newest
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


def train(config: RunConfig, *, quiet: bool = False, force_config: bool = False) -> dict[str, Any]:
    """Run every stage of ``config`` (resuming a previous run in the same ``output_dir``); returns the summary.

    Refused before any work: a directory another run holds (:class:`~laco.train.resume.RunDirectoryBusy`), and a
    rerun whose config changes the result of the run it would continue
    (:class:`~laco.train.resume.ConfigMismatch`, unless ``force_config``).
    """
    if config.model.init_from is not None:
        check_init_from(config.model.init_from)  # before the run directory is touched
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with RunLock(output):
        accept_config(config, output, force=force_config)
        if config.training.threads:
            torch.set_num_threads(config.training.threads)
        set_seed(config.seed)
        precision = choose_precision(config.training.precision, "cuda" if torch.cuda.is_available() else "cpu")
        if not quiet:
            print(f"precision: {precision.describe()}")
        model, processor = _model_for_next_stage(config, output)
        # laco's LLaVA processor, or (a converted checkpoint of another family) the checkpoint's own
        read = llava_dataset if isinstance(processor, LacoProcessor) else processor_dataset
        dataset = read(config.data, "train", processor, limit=config.data.limit, progress=not quiet)
        if not quiet:
            print(f"data: {dataset.report.summary()}")
        summaries: list[dict[str, Any]] = previous_summaries(output)
        for index, stage in enumerate(config.stages):
            if stage_done(output / stage.name):
                continue
            if model is None:  # the previous stage just finished: start from its final/, as a rerun would
                model, _ = _model_for_next_stage(config, output)
            summary = _train_stage(config, index, model, processor, dataset, precision, quiet=quiet)
            model = None
            gc.collect()  # the finished stage's model, optimizer and gradients
            summaries = [s for s in summaries if s["name"] != stage.name] + [summary]
        # what the run started from and how it read images, which config.yaml leaves to the checkpoint or encoder
        started = {"init_from": config.model.init_from, **_image_reading(processor)}
        if _is_main_process():
            publish_final(output, config, summaries, precision=precision.to_dict(), extra=started)
    return {
        "name": config.name,
        "output_dir": str(output),
        "precision": precision.to_dict(),
        **started,
        "stages": summaries,
    }


def _train_stage(
    config: RunConfig,
    index: int,
    model: LacoLlavaForConditionalGeneration,
    processor: LacoProcessor,
    dataset: LlavaDataset,
    precision: Precision,
    *,
    quiet: bool,
) -> dict[str, Any]:
    """Train stage ``index`` (from its newest complete checkpoint, if any) and save its ``final/``."""
    stage = config.stages[index]
    stage_dir = Path(config.output_dir) / stage.name
    place_for_stage(model, config, index)  # before a checkpoint loads: its merge is where this stage trains it
    counts = set_trainable(model, stage.trainable)
    trainable, total = count_parameters(model)
    if not quiet:
        parts = ", ".join(f"{part} {n / 1e6:.2f}M" for part, n in counts.items())
        print(f"{stage.name}: training {trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters ({parts})")
    trainer_class, objective = LacoTrainer, {}
    if stage.objective == "tower_distillation":
        trainer_class, objective = DistillTrainer, {"distill_loss": stage.distill_loss}
    trainer = trainer_class(
        model=model,
        args=_training_arguments(config, index, stage_dir, precision),
        train_dataset=dataset,
        data_collator=(
            MultimodalCollator(processor.tokenizer.pad_token_id)
            if isinstance(processor, LacoProcessor)
            else ProcessorCollator(processor.tokenizer.pad_token_id)
        ),
        processing_class=processor.tokenizer,
        part_learning_rates=stage_part_rates(stage),
        sample_weights=(
            answer_balanced_weights(dataset, stage.answer_balance, stage.balance_by) if stage.answer_balance else None
        ),
        **objective,
    )
    _check_world_size(trainer)
    last_checkpoint = last_complete_checkpoint(stage_dir, tidy=trainer.is_world_process_zero())
    trainer.accelerator.wait_for_everyone()  # damaged checkpoints are moved aside before anyone trains
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
    save_stage_final(trainer, processor, stage_dir / "final", asdict(summary))
    return asdict(summary)


def _image_reading(processor: Any) -> dict[str, Any]:
    """How the run read images, for summary.json: laco's transform, or the family processor that did it."""
    if isinstance(processor, LacoProcessor):
        return {"image_transform": processor.image_transform.to_dict()}
    image_processor = getattr(processor, "image_processor", None)
    return {"processor": type(processor).__name__, "image_processor": type(image_processor).__name__}


def _check_world_size(trainer: Trainer) -> None:
    """Refuse processes that a launcher started together but that would each train alone (and overwrite each other)."""
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and trainer.args.world_size != launched:
        raise RuntimeError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}), but the Trainer runs as "
            f"{trainer.args.world_size}: each would train alone and overwrite the others' checkpoints. accelerate "
            "runs FSDP and DeepSpeed configs this way on a CPU; there, launch data-parallel training with "
            "`torchrun --nproc_per_node N -m laco train ...`, and use the FSDP/DeepSpeed configs on GPUs."
        )


def _model_for_next_stage(config: RunConfig, output: Path) -> tuple[LacoLlavaForConditionalGeneration, LacoProcessor]:
    """The model the first unfinished stage starts from: the last finished stage's, the ``init_from`` checkpoint,
    or a freshly assembled one."""
    finished = [s for s in config.stages if stage_done(output / s.name)]
    if finished:
        source = output / finished[-1].name / "final"
        logger.info("starting from finished stage %s", source)
        # Built whole, and its Trainer shards it. Under DeepSpeed ZeRO-3 the last stage's Trainer left transformers
        # building models partitioned (zero.Init), where laco.apply cannot initialise the compressors.
        unset_hf_deepspeed_config()
        model = from_pretrained_strict(checkpoint_model_class(source), source)
        _check_placement(model, config, source, config.stages.index(finished[-1]))
        model.set_attn_implementation(resolve_attn_implementation(config.model.attn_implementation))
        return model, checkpoint_processor(source, model)
    spec = config.model
    if spec.init_from is not None:
        return load_init_from(spec.init_from, spec.attn_implementation)
    model, processor = build_mllm(
        spec.vision,
        spec.llm,
        spec.compression,
        system_prompt=spec.system_prompt,
        image_position=spec.image_position,
        attn_implementation=spec.attn_implementation,
        **spec.image_overrides(),
    )
    return model, processor


def _check_placement(model: LacoLlavaForConditionalGeneration, config: RunConfig, source: Path, index: int) -> None:
    """A finished stage's model carries its own compression; a config asking for another would be ignored."""
    if config.model.compression is None:  # init_from: the checkpoint's merge is the run's
        return
    tower = model.model.vision_tower
    saved = laco_patch.placement_of(tower) or Placement()
    _, adapter = resolve_encoder(tower)
    wanted = stage_placement(config, index, len(adapter.blocks(tower)))  # where finished stage `index` trained it
    if wanted.mode == "auto":  # the adapter chose the mode when the model was built
        wanted = replace(wanted, mode=saved.mode)
    if saved.to_dict() != wanted.to_dict():
        raise ConfigMismatch(
            f"the finished stage in {source} was trained with compression {saved.label()} ({saved.to_dict()}), the "
            f"config asks for {wanted.label()}; a finished stage's model cannot change (not even with "
            "--force-config). Train the new compression into a new --output-dir."
        )


def _last_logged_loss(trainer: Trainer) -> float:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return round(float(losses[-1]), 4) if losses else float("nan")


def _is_main_process() -> bool:
    return (
        not torch.distributed.is_available()
        or not torch.distributed.is_initialized()
        or torch.distributed.get_rank() == 0
    )
