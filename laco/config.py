"""Run configuration: typed dataclasses, read from YAML, overridable from the command line.

A YAML file in ``configs/`` names a model, a dataset, training stages and evaluation; anything left out takes the
defaults below, which are the embedded default run (DINOv2-S + SmolLM2-135M, LaCo at 1/4 depth, easy-VQA).
Unknown keys are errors that list the accepted ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .overrides import apply_override
from .placement import Placement
from .precision import normalize as normalize_precision
from .typed import from_dict, to_plain

T = TypeVar("T")

# "merger" is another name for "projector": the connector, whatever the family calls it (Qwen-VL: the merger)
TRAINABLE_PARTS = ("compressor", "projector", "merger", "llm", "vision_after_merge", "vision")
VISION_PARTS = ("vision_after_merge", "vision")  # pretrained encoder weights: vision_learning_rate_scale applies
OBJECTIVES = ("next_token", "tower_distillation")
DISTILL_LOSSES = ("mse", "cosine")
BALANCE_BY = ("answer", "question")  # what a stage's answer_balance evens out
DISTILL_PARTS = ("compressor", "vision_after_merge")  # what a tower-distillation stage can train (no LLM runs)
# Keys an older config may still use, and what replaced them (named in the error instead of a bare "unknown key").
RENAMED = {"bf16": "precision: auto | bf16 | fp16 | fp32 (auto picks bf16 only where the hardware has it)"}


DEFAULT_VISION = "dinov2-small"
DEFAULT_LLM = "smollm2-135m"
DEFAULT_IMAGE_SIZE = 112  # the embedded default run's size for the offline DINOv2-S (8x8 patches), not DINOv2's own
DEFAULT_LAYERS = "1/4"  # LaCo after a quarter of the encoder's depth: the paper's headline placement
RESIZE_POLICIES = ("squash", "shortest_edge", "pad")
# Where a turn's images go: as LLaVA writes them, before the question ("<image>\nq"), or after it ("q\n<image>"),
# so that the LLM reads the image tokens knowing what is asked.
IMAGE_POSITIONS = ("before_question", "after_question")
IMAGE_KEYS = ("image_size", "image_mean", "image_std", "resize")  # null: the encoder's own (its image processor's)


class ConfigError(ValueError):
    """A run config whose values have the right type but cannot run; the message names the key and the fix."""


@dataclass
class ModelConfig:
    """``vision`` + ``llm`` assembled with ``compression`` (unset: the embedded default's), or ``init_from`` a LaCo
    LLaVA checkpoint, which brings all of them and its processor. Unset image settings are the encoder's own
    (112 px for the offline ``dinov2-small``, which has no image processor); ``resize``: ``squash``,
    ``shortest_edge`` (the shorter side, then the centre square) or ``pad`` (to a square, then resize)."""

    vision: str | None = None
    llm: str | None = None
    init_from: str | None = None
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    resize: str | None = None
    system_prompt: str | None = ""  # an empty system turn: SmolLM2's template would add a 20-token default
    # before_question renders records as LLaVA writes them ("<image>\nq"); after_question puts each turn's opening
    # images after its text, so the LLM reads them knowing the question (saved in the processor, used at eval).
    image_position: str = IMAGE_POSITIONS[0]
    # "auto": eager attention on CPU, where torch's flash-attention backward is slower than eager on sequences this
    # short; the transformers default (SDPA / FlashAttention) on GPU.
    attn_implementation: str = "auto"
    compression: Placement | None = None

    def __post_init__(self) -> None:
        # Filled here rather than as field defaults, so that a run from a checkpoint can leave them unset (and say
        # so in its config.yaml) while configs recorded before init_from existed compare equal to today's.
        if self.init_from is None:
            self.vision = DEFAULT_VISION if self.vision is None else self.vision
            self.llm = DEFAULT_LLM if self.llm is None else self.llm
            self.compression = Placement(DEFAULT_LAYERS) if self.compression is None else self.compression
            if self.image_size is None and self.vision == DEFAULT_VISION:
                self.image_size = DEFAULT_IMAGE_SIZE

    def image_overrides(self) -> dict[str, Any]:
        """The image settings given, as ``build_mllm`` takes them (``None``: the encoder's own)."""
        return {key: getattr(self, key) for key in IMAGE_KEYS}


@dataclass
class DataConfig:
    dataset: str = "easy-vqa"  # "easy-vqa" (converted once into the cache) or "llava" with the paths below
    train_json: str | None = None
    eval_json: str | None = None
    image_folder: str | None = None
    max_length: int = 256
    limit: int | None = None
    strict: bool = False
    # Image paths in the JSON must stay inside image_folder (no "../", no absolute paths) unless this is true.
    allow_outside_image_folder: bool = False
    # Images above this many pixels are skipped as bad records (decoding a 10000 x 10000 PNG costs gigabytes and seconds;
    # training resizes every image to image_size anyway). 50 megapixels admits any camera photo.
    max_image_pixels: int = 50_000_000


@dataclass
class StageConfig:
    name: str = "stage1"
    trainable: list[str] = field(default_factory=lambda: ["compressor", "projector"])
    max_steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 2e-4
    part_learning_rates: dict[str, float] = field(default_factory=dict)  # e.g. {projector: 2e-4} next to an LLM at 2e-5
    # Sample records with weight count(answer) ** -answer_balance: 0 is the data's own mix, 1 gives every answer the
    # same share. easy-VQA is 74% yes/no questions that the question alone mostly answers; a short stage 1 spent in
    # that mix never learns to read colours and shapes from the image.
    answer_balance: float = 0.0
    # What the balance evens out: "answer" (every answer's share) or "question" (each question's answers, so a
    # question the text alone answers, e.g. "is a brown shape present?" = "no" 91% of the time, needs the image).
    balance_by: str = "answer"
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"
    # Rate of the pretrained encoder parts this stage trains (vision_after_merge, vision), as a multiple of
    # learning_rate, unless part_learning_rates names them. 1 keeps every earlier recipe as it was; LLaVA-UHD v4
    # recovers its in-ViT merge with the ViT unfrozen at 0.2.
    vision_learning_rate_scale: float = 1.0
    # next_token: the MLLM's answer loss. tower_distillation: images only, the compressed tower learns the
    # uncompressed tower's features, 2x2-average-pooled to the merged count (laco.train.distill); put it first.
    objective: str = "next_token"
    distill_loss: str = "mse"  # tower_distillation only: mse (values and scale) or cosine (direction only)
    # A depth curriculum (laco.train.curriculum): this stage trains the merge after this layer (an int or a fraction)
    # instead of model.compression's, carrying its weights; null: model.compression's. Not on the last stage.
    merge_layer: int | str | None = None


@dataclass
class TrainingConfig:
    # auto: bf16 autocast where the hardware multiplies bf16 natively (see laco.precision), float32 elsewhere
    precision: str = "auto"
    logging_steps: int = 10
    save_steps: int = 50
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = 0
    threads: int | None = None


@dataclass
class EvalConfig:
    precision: str = "auto"  # the dtype the model answers in (see laco.precision)
    split: str = "test"
    limit: int | None = 1000
    batch_size: int = 32
    max_new_tokens: int = 8


def _default_stages() -> list[StageConfig]:
    # Batch 16 rather than LLaVA's 256, and LLaVA's stage-1 rate 1e-3: on 150 steps it teaches the merge and the
    # projector what 2e-4 does not (colour answers 94.6% against 9-62%; docs/default-model.md).
    return [
        StageConfig("stage1", ["compressor", "projector"], max_steps=150, learning_rate=1e-3, answer_balance=1.0),
        StageConfig(
            "stage2",
            ["compressor", "projector", "llm"],
            max_steps=90,
            learning_rate=2e-5,
            part_learning_rates={"compressor": 2e-4, "projector": 2e-4},
            answer_balance=0.3,
        ),
    ]


@dataclass
class RunConfig:
    name: str = "laco-quarter"
    output_dir: str = "runs/laco-quarter"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[StageConfig] = field(default_factory=_default_stages)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "RunConfig":
        """Check values that have the right type but cannot run; every message names the key and the fix."""
        if not self.stages:
            raise ConfigError("a run needs at least one stage under 'stages'.")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique, got {names}.")
        _validate_curriculum(self)
        for index, stage in enumerate(self.stages):
            _validate_stage(stage, f"stages.{index}")
            compression = self.model.compression
            if stage.objective == "tower_distillation" and compression is not None and not compression.compressed:
                raise ConfigError(
                    f"stages.{index}.objective: tower_distillation teaches a compressed tower to match the "
                    "uncompressed one, but model.compression.layers is none; set layers (e.g. 1/4) or drop the stage."
                )
        for where, value in (("training.precision", self.training.precision), ("eval.precision", self.eval.precision)):
            try:
                normalize_precision(value)
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from None
        if self.data.dataset not in ("easy-vqa", "llava"):
            raise ConfigError(f"data.dataset must be 'easy-vqa' or 'llava', got {self.data.dataset!r}.")
        if self.data.dataset == "llava" and not (self.data.train_json and self.data.image_folder):
            raise ConfigError("data.dataset='llava' needs data.train_json and data.image_folder.")
        _at_least(1, "data.max_length", self.data.max_length)
        _at_least(1, "data.limit", self.data.limit, optional=True)
        _at_least(1, "data.max_image_pixels", self.data.max_image_pixels)
        _validate_model(self.model)
        _at_least(1, "training.logging_steps", self.training.logging_steps)
        _at_least(1, "training.save_steps", self.training.save_steps)
        _at_least(0, "training.dataloader_num_workers", self.training.dataloader_num_workers)
        _at_least(1, "training.threads", self.training.threads, optional=True)
        _at_least(1, "eval.limit", self.eval.limit, optional=True)
        _at_least(1, "eval.batch_size", self.eval.batch_size)
        _at_least(1, "eval.max_new_tokens", self.eval.max_new_tokens)
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def _validate_model(model: ModelConfig) -> None:
    _at_least(1, "model.image_size", model.image_size, optional=True)
    for key in ("image_mean", "image_std"):
        values = getattr(model, key)
        if values is not None and (len(values) != 3 or (key == "image_std" and min(values) <= 0)):
            raise ConfigError(
                f"model.{key} takes one number per RGB channel (3{', > 0' if 'std' in key else ''}), "
                f"e.g. [0.5, 0.5, 0.5]; got {values}."
            )
    if model.resize is not None and model.resize not in RESIZE_POLICIES:
        raise ConfigError(
            f"model.resize must be one of {RESIZE_POLICIES} (or null: the encoder's own), got {model.resize!r}."
        )
    if model.image_position not in IMAGE_POSITIONS:
        raise ConfigError(
            f"model.image_position must be one of {IMAGE_POSITIONS} (where a question's image goes), "
            f"got {model.image_position!r}."
        )
    if model.init_from is None:
        return
    unused = [key for key in ("vision", "llm", "compression", *IMAGE_KEYS) if getattr(model, key) is not None]
    if model.image_position != IMAGE_POSITIONS[0]:  # the checkpoint's processor brings its own layout
        unused.append("image_position")
    if unused:
        raise ConfigError(
            f"model.init_from={model.init_from!r} starts from a checkpoint that holds its encoder, LLM, merge and "
            f"processor, so {', '.join('model.' + key for key in unused)} would not be used: remove "
            f"{'them' if len(unused) > 1 else 'it'} (to change the merge, convert again: laco convert SRC DST --layer "
            "...), or drop model.init_from to assemble a new model."
        )


def _validate_stage(stage: StageConfig, where: str) -> None:
    unknown = sorted(set(stage.trainable) - set(TRAINABLE_PARTS))
    if unknown:
        raise ConfigError(f"stage {stage.name!r}: unknown trainable part(s) {unknown}; choose from {TRAINABLE_PARTS}.")
    if not 0.0 <= stage.answer_balance <= 1.0:
        raise ConfigError(f"stage {stage.name!r}: answer_balance must lie in [0, 1], got {stage.answer_balance}.")
    if stage.balance_by not in BALANCE_BY:
        raise ConfigError(f"stage {stage.name!r}: balance_by must be one of {BALANCE_BY}, got {stage.balance_by!r}.")
    unknown = sorted(set(stage.part_learning_rates) - set(TRAINABLE_PARTS))
    if unknown:
        raise ConfigError(f"stage {stage.name!r}: part_learning_rates for unknown part(s) {unknown}.")
    if stage.max_steps < 1 or stage.batch_size < 1 or stage.grad_accum < 1:
        raise ConfigError(f"stage {stage.name!r}: max_steps, batch_size and grad_accum must be >= 1.")
    for part, rate in {"": stage.learning_rate, **stage.part_learning_rates}.items():
        if rate <= 0:
            key = f"{where}.part_learning_rates.{part}" if part else f"{where}.learning_rate"
            raise ConfigError(f"{key} must be a positive learning rate such as 2e-4, got {rate}.")
    _at_least(0, f"{where}.weight_decay", stage.weight_decay)
    if stage.vision_learning_rate_scale <= 0:
        raise ConfigError(
            f"{where}.vision_learning_rate_scale must be > 0 (a multiple of learning_rate, e.g. 0.2), got "
            f"{stage.vision_learning_rate_scale}; to freeze the encoder, leave vision parts out of trainable."
        )
    _validate_objective(stage, where)
    if not 0.0 <= stage.warmup_ratio <= 1.0:
        raise ConfigError(
            f"{where}.warmup_ratio must lie in [0, 1] (a fraction of max_steps), got {stage.warmup_ratio}."
        )


def _validate_curriculum(config: RunConfig) -> None:
    moved = [index for index, stage in enumerate(config.stages) if stage.merge_layer is not None]
    if not moved:
        return
    where, compression = f"stages.{moved[0]}.merge_layer", config.model.compression
    if moved[-1] == len(config.stages) - 1:
        raise ConfigError(
            f"stages.{moved[-1]}.merge_layer: the last stage trains the merge where model.compression puts it, so "
            "the run ends with the configured model; remove merge_layer from it (earlier stages move the merge)."
        )
    if compression is None:
        raise ConfigError(
            f"{where}: a run from model.init_from keeps its checkpoint's merge where it is; drop merge_layer (or "
            "convert the checkpoint to another layer with laco convert)."
        )
    if len(compression.layers) != 1:
        raise ConfigError(
            f"{where} moves one merge, and model.compression.layers={list(compression.layers)} does not give exactly "
            "one; set model.compression.layers to a single layer (e.g. 1/4), or drop merge_layer."
        )
    for index in moved:
        try:
            Placement(config.stages[index].merge_layer)
        except ValueError as error:
            raise ConfigError(f"stages.{index}.merge_layer: {error}") from None


def _validate_objective(stage: StageConfig, where: str) -> None:
    if stage.objective not in OBJECTIVES:
        raise ConfigError(f"{where}.objective must be one of {OBJECTIVES}, got {stage.objective!r}.")
    if stage.distill_loss not in DISTILL_LOSSES:
        raise ConfigError(f"{where}.distill_loss must be one of {DISTILL_LOSSES}, got {stage.distill_loss!r}.")
    if stage.objective != "tower_distillation":
        return
    others = sorted(set(stage.trainable) - set(DISTILL_PARTS))
    if others or not stage.trainable:
        raise ConfigError(
            f"{where}.trainable: a tower_distillation stage runs the vision tower alone, so it trains only "
            f"{list(DISTILL_PARTS)}; got {stage.trainable}. Use e.g. trainable: [compressor], and train "
            f"{others or 'the other parts'} in a next_token stage after it."
        )


def _at_least(low: int, key: str, value: float | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low:
        hint = " (or null for no limit)" if optional else ""
        raise ConfigError(f"{key} must be >= {low}{hint}, got {value!r}.")


def read_run_config(data: dict[str, Any] | None) -> RunConfig:
    """A :class:`RunConfig` from plain data (unvalidated), naming renamed keys in the error."""
    return from_dict(RunConfig, data, renamed=RENAMED)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or the embedded default when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} not found; see configs/ for examples.")
        data = yaml.safe_load(path.read_text()) or {}
    for override in overrides or []:
        apply_override(data, override, lambda: [dataclasses.asdict(stage) for stage in _default_stages()])
    _complete_compression(data)
    return read_run_config(data).validate()


def _complete_compression(data: dict[str, Any]) -> None:
    """Fill the fields a config or ``--set`` leaves out of ``model.compression`` from the default placement.

    Without this, ``--set model.compression.method=avgpool`` (or ``laco train --method avgpool``) would build a
    placement from that one field, whose ``layers`` default is *no compression*: the run would silently train
    an uncompressed model."""
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("compression"), dict):
        model["compression"] = {**Placement(DEFAULT_LAYERS).to_dict(), **model["compression"]}
