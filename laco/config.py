"""Run configuration: typed dataclasses, read from YAML, overridable from the command line.

A YAML file in ``configs/`` names a model, a dataset, training stages and evaluation; anything left out takes the
defaults below, which are the embedded default run (DINOv2-S + SmolLM2-135M, LaCo at 1/4 depth, easy-VQA).
Unknown keys are errors that list the accepted ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

from .placement import Placement
from .precision import normalize as normalize_precision

T = TypeVar("T")

TRAINABLE_PARTS = ("compressor", "projector", "llm", "vision_after_merge", "vision")
# Keys an older config may still use, and what replaced them (named in the error instead of a bare "unknown key").
RENAMED = {"bf16": "precision: auto | bf16 | fp16 | fp32 (auto picks bf16 only where the hardware has it)"}


@dataclass
class ModelConfig:
    vision: str = "dinov2-small"
    llm: str = "smollm2-135m"
    image_size: int | None = 112
    system_prompt: str | None = ""  # an empty system turn: SmolLM2's template would add a 20-token default
    # "auto": eager attention on CPU, where torch's flash-attention backward is slower than eager on sequences this
    # short; the transformers default (SDPA / FlashAttention) on GPU.
    attn_implementation: str = "auto"
    compression: Placement = field(default_factory=lambda: Placement("1/4"))


@dataclass
class DataConfig:
    dataset: str = "easy-vqa"  # "easy-vqa" (converted once into the cache) or "llava" with the paths below
    train_json: str | None = None
    eval_json: str | None = None
    image_folder: str | None = None
    max_length: int = 256
    limit: int | None = None
    strict: bool = False


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
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"


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
    # Batch 16 rather than LLaVA's 256: LLaVA's 1e-3 for the projector diverges at this batch (the frozen LLM never reads
    # the image); 2e-4 learns easy-VQA's colours within ~100 steps.
    return [
        StageConfig("stage1", ["compressor", "projector"], max_steps=200, learning_rate=2e-4, answer_balance=1.0),
        StageConfig(
            "stage2",
            ["compressor", "projector", "llm"],
            max_steps=120,
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
        if not self.stages:
            raise ValueError("a run needs at least one stage under 'stages'.")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}.")
        for stage in self.stages:
            unknown = sorted(set(stage.trainable) - set(TRAINABLE_PARTS))
            if unknown:
                raise ValueError(
                    f"stage {stage.name!r}: unknown trainable part(s) {unknown}; choose from {TRAINABLE_PARTS}."
                )
            if not 0.0 <= stage.answer_balance <= 1.0:
                raise ValueError(
                    f"stage {stage.name!r}: answer_balance must lie in [0, 1], got {stage.answer_balance}."
                )
            unknown = sorted(set(stage.part_learning_rates) - set(TRAINABLE_PARTS))
            if unknown:
                raise ValueError(f"stage {stage.name!r}: part_learning_rates for unknown part(s) {unknown}.")
            if stage.max_steps < 1 or stage.batch_size < 1 or stage.grad_accum < 1:
                raise ValueError(f"stage {stage.name!r}: max_steps, batch_size and grad_accum must be >= 1.")
        for where, value in (("training.precision", self.training.precision), ("eval.precision", self.eval.precision)):
            try:
                normalize_precision(value)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        if self.data.dataset not in ("easy-vqa", "llava"):
            raise ValueError(f"data.dataset must be 'easy-vqa' or 'llava', got {self.data.dataset!r}.")
        if self.data.dataset == "llava" and not (self.data.train_json and self.data.image_folder):
            raise ValueError("data.dataset='llava' needs data.train_json and data.image_folder.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# ------------------------------------------------------------------------------------------------------------------
# Reading


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, recursively, rejecting unknown keys."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    renamed = [f"{key} is now {RENAMED[key]}" for key in unknown if key in RENAMED]
    if unknown:
        hint = f" ({'; '.join(renamed)})" if renamed else ""
        raise ValueError(f"unknown key(s) {unknown} in {where or cls.__name__}{hint}; accepted: {sorted(names)}.")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**values)


def to_plain(value: Any) -> Any:
    """A config dataclass as plain YAML data (placements through their own ``to_dict``)."""
    if isinstance(value, Placement):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    return value


def _convert(hint: Any, value: Any, where: str) -> Any:
    if hint is Placement:
        if isinstance(value, Placement):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping of placement fields (layers, method, ...), got {value!r}.")
        try:
            return Placement.from_dict(value)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if get_origin(hint) is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}.")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or the embedded default when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} not found; see configs/ for examples.")
        data = yaml.safe_load(path.read_text()) or {}
    for override in overrides or []:
        _apply_override(data, override)
    return from_dict(RunConfig, data).validate()


def _apply_override(data: dict[str, Any], override: str) -> None:
    """``model.compression.layers=1/2`` or ``stages.0.max_steps=10``: values are parsed as YAML scalars."""
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like key.path=value, e.g. stages.0.max_steps=10.")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    parts = key.strip().split(".")
    node: Any = data
    for index, part in enumerate(parts[:-1]):
        following_is_index = parts[index + 1].isdigit()
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if part not in node:
            if part == "stages":
                node[part] = [dataclasses.asdict(stage) for stage in _default_stages()]
            else:
                node[part] = [] if following_is_index else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def dump_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
