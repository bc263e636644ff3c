"""What a benchmark run asks for (:class:`BenchSettings`, the one place the options are written: the keyword
arguments of :func:`laco.bench.run_benchmark` and the options of ``laco bench``), and the same with every ``None``
field filled in from the preset for the device it runs on (:class:`ResolvedSettings`, by :func:`resolve`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..cost import LLMGeometry, encoder_flops, image_tokens, mllm_flops
from ..measure.timing import usable_cores
from ..placement import Placement
from ..precision import PRECISIONS, Precision
from ..precision import choose as choose_precision
from ..precision import normalize as normalize_precision
from .measurements import MEASUREMENTS, Measurement, measurement
from .options import FLAG, check_threads, csv, csv_or_none, given, option
from .presets import PRESETS, BenchPreset, load_preset
from .variants import DEFAULT_DEPTHS, DEFAULT_METHODS, DEFAULT_TWO_STAGE

DEFAULT_PRESET = "llava-ov-0.5b"
QUICK_PRESET = "tiny"
# Few rounds whatever the preset, and float32 everywhere so CI counts the same thing on every machine.
QUICK_OVERRIDES: dict[str, Any] = {"reps": 3, "warmup": 1, "precision": "fp32"}
# Tiny ops gain nothing from threads, and with more threads than free cores OpenMP barriers wait on descheduled ones.
QUICK_THREADS = 1
COMPILE_WARMUP = 2  # the first warm-up call counts FLOPs eagerly; the second compiles
OPTIMIZER_LR = 1e-6  # tiny, so repeated steps on random weights stay finite; the cost does not depend on it


def preset_name(settings: Any) -> str | BenchPreset:
    """The preset ``settings`` (or a namespace with their fields) ask for: ``preset``, else by ``quick``."""
    chosen = getattr(settings, "preset", None)
    return chosen if chosen is not None else QUICK_PRESET if getattr(settings, "quick", False) else DEFAULT_PRESET


def _tuple(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@dataclass(frozen=True)
class BenchSettings:
    """Everything a run depends on; ``None`` fields take the preset's per-device defaults (:func:`resolve`)."""

    preset: str | BenchPreset | None = option(
        None,
        f"built-in preset ({', '.join(PRESETS)}) or a .yaml file; default {DEFAULT_PRESET} ({QUICK_PRESET} with --quick)",
    )
    quick: bool = option(False, "CI mode: tiny geometry (unless --preset), 3 rounds, 1 thread", FLAG)
    device: str = option("auto", "cpu, cuda, cuda:N or auto (default: auto; cpu with --engine vllm)")
    precision: str | None = option(
        None,
        "auto (bf16 where the device multiplies it natively, else fp32), bf16, fp16 (GPU) or fp32; default: the "
        "preset's, auto",
        choices=PRECISIONS,
    )
    threads: int | None = option(None, "torch intra-op threads, 1..usable cores (default: all usable cores)", int)
    reps: int | None = option(None, "timed rounds (default: preset's, 3 on CPU, 10 on CUDA)", int)
    warmup: int | None = option(None, "untimed rounds, >= 1; the first counts FLOPs", int)
    batch: int | None = option(None, "images (one per sequence) per step", int)
    llm_layers: int | None = option(None, "time N LLM decoder layers and scale linearly to the full depth", int)
    measure: tuple[str, ...] | None = option(
        None, "comma list of measurements: " + ",".join(MEASUREMENTS) + " (default: the preset's)", csv
    )
    methods: tuple[str, ...] = option(
        DEFAULT_METHODS, "compressors; laco runs at every --depths, the others at --method-depth", csv
    )
    depths: tuple[str, ...] = option(DEFAULT_DEPTHS, "depth fractions (or layer numbers) for LaCo", csv)
    method_depth: str = option("1/4", "depth of the other compressors")
    method_options: tuple[str, ...] = option(
        (), "comma list of KEY=VALUE options of the other compressors, values as YAML (e.g. init=ffn_reuse)", csv
    )
    two_stage: tuple[str, ...] | None = option(
        DEFAULT_TWO_STAGE, "depths of a two-stage LaCo (16x with --factor 2); 'none' to skip", csv_or_none
    )
    factor: int = option(2, "merge factor per side of every compressor (2: 2x2 tokens into one)", int)
    seed: int = option(0, "seed of the random weights and inputs", int)
    compile: bool = option(
        False,
        "time compiled models: torch.compile each encoder block and LLM decoder layer (compressors stay eager); "
        "not for " + ",".join(name for name, spec in MEASUREMENTS.items() if spec.compile_blocker),
        FLAG,
    )

    def __post_init__(self) -> None:
        # Lists from the command line or a caller become tuples: equal settings compare equal however given.
        object.__setattr__(self, "measure", _tuple(self.measure))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "two_stage", _tuple(self.two_stage) or None)
        object.__setattr__(self, "method_options", tuple(self.method_options))
        parse_options(self.method_options)  # refuse a malformed option before any model is built

    @classmethod
    def from_namespace(cls, namespace: Any) -> BenchSettings:
        """The settings an ``argparse`` namespace holds; a field it lacks keeps its default."""
        return cls(**given(namespace, cls))


# ---------------------------------------------------------------------------------------------------------------
# Resolved settings


@dataclass(frozen=True)
class Prediction:
    """The cost model's FLOPs of one call, and the token counts behind them."""

    flops: float
    image_tokens: int
    sequence_tokens: int | None


@dataclass(frozen=True)
class ResolvedSettings:
    """A :class:`BenchSettings` with the preset loaded and every default filled in for the device.

    ``requested`` keeps what was asked; the other fields are what the run uses. ``llm_layers`` is ``None`` when
    the LLM is built at its full depth. ``notes`` are caveats the resolution added (a measurement left out).
    """

    requested: BenchSettings
    preset: BenchPreset
    device: torch.device
    precision: Precision
    threads: int
    reps: int
    warmup: int
    batch: int
    llm_layers: int | None
    measure: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def measurements(self) -> list[Measurement]:
        return [measurement(name) for name in self.measure]

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def execution(self) -> str:
        """How the model ran: its dtype, and whether its blocks were compiled."""
        return self.dtype_name + (", compiled" if self.requested.compile else "")

    @property
    def llm_layers_full(self) -> int | None:
        return self.preset.llm.layers if self.preset.llm is not None else None

    @property
    def built_llm(self) -> LLMGeometry | None:
        """The LLM geometry as built: ``llm_layers`` decoder layers where fewer are timed."""
        llm = self.preset.llm
        return llm.with_layers(self.llm_layers) if llm is not None and self.llm_layers is not None else llm

    @property
    def llm_scale(self) -> float:
        """Full LLM depth over the timed one: what the decoder stack's time is multiplied by."""
        if self.preset.llm is None or self.llm_layers is None:
            return 1.0
        return self.preset.llm.layers / self.llm_layers

    @property
    def cost_inputs(self) -> dict[str, int]:
        """What one call processes, as :func:`laco.cost.mllm_flops` and its kin take it."""
        preset = self.preset
        return {
            "image_size": preset.resolution,
            "images": self.batch,
            "prompt_tokens": preset.prompt_tokens,
            "answer_tokens": preset.answer_tokens,
        }

    def predict(self, mode: str, placement: Placement, *, full: bool) -> Prediction:
        """FLOPs of a ``mode`` call of ``placement``, for the LLM as built (``full=False``) or at its full depth."""
        preset = self.preset
        llm = preset.llm if full else self.built_llm
        if llm is None:
            cost = encoder_flops(preset.encoder, placement, image_size=preset.resolution, images=self.batch)
            return Prediction(cost.total, image_tokens(cost, preset.encoder, drop_prefix=False), None)
        cost = mllm_flops(preset.encoder, llm, placement, mode=mode, **self.cost_inputs)
        return Prediction(cost.total, int(cost.info["image_tokens"]), cost.info.get("sequence_tokens"))

    def to_dict(self) -> dict[str, Any]:
        """The ``settings`` of ``bench.json``: every requested field as resolved, plus what the preset fixed."""
        resolved = {f.name for f in fields(self)}
        data: dict[str, Any] = {}
        for f in fields(BenchSettings):
            value = getattr(self if f.name in resolved else self.requested, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        data["precision"] = self.precision.to_dict()
        data.update(
            preset=self.preset.name,
            device=str(self.device),
            dtype=self.dtype_name,
            llm_layers_full=self.llm_layers_full,
            image_size=self.preset.resolution,
            prompt_tokens=self.preset.prompt_tokens,
            answer_tokens=self.preset.answer_tokens,
            optimizer=f"AdamW(lr={OPTIMIZER_LR}, fused)",
        )
        return data


def resolve(settings: BenchSettings) -> ResolvedSettings:
    """Load the preset, pick the device and fill every ``None`` field with the preset's default for it."""
    quick = settings.quick
    preset = load_preset(preset_name(settings))
    device = resolve_device(settings.device)

    def pick(value: Any, key: str) -> Any:
        if value is not None:
            return value
        return QUICK_OVERRIDES[key] if quick and key in QUICK_OVERRIDES else preset.default(device.type, key)

    precision = _precision(pick(settings.precision, "precision"), device)
    reps, warmup, batch = (int(pick(getattr(settings, key), key)) for key in ("reps", "warmup", "batch"))
    if settings.compile and settings.warmup is None:
        warmup = max(warmup, COMPILE_WARMUP)
    if reps < 1 or batch < 1:
        raise ValueError(f"reps and batch must be >= 1 (got reps={reps}, batch={batch}).")
    if warmup < 1:
        raise ValueError(
            f"warmup must be >= 1 (got {warmup}): the first warm-up call of every variant counts its FLOPs."
        )
    measure, notes = _measure(settings, tuple(pick(settings.measure, "measure")), warmup)
    if preset.llm is None and any(measurement(name).needs_llm for name in measure):
        encoder_only = ", ".join(repr(name) for name, spec in MEASUREMENTS.items() if not spec.needs_llm)
        raise ValueError(
            f"preset {preset.name!r} has no LLM, so only {encoder_only} can be measured (asked: {list(measure)}); "
            "use an MLLM preset such as llava-ov-0.5b."
        )
    threads = QUICK_THREADS if quick and settings.threads is None else check_threads(settings.threads, usable_cores())
    llm_layers = _llm_layers(pick(settings.llm_layers, "llm_layers"), preset)
    resolved = (settings, preset, device, precision, threads, reps, warmup, batch, llm_layers, measure)
    return ResolvedSettings(*resolved, notes=(*preset.notes, *notes))


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA where there is a GPU), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name} asked for CUDA, but torch {torch.__version__} sees no GPU; use --device cpu."
        )
    return device


def _precision(name: str, device: torch.device) -> Precision:
    if normalize_precision(name) == "fp16" and device.type == "cpu":
        raise ValueError("float16 on CPU is emulated and meaningless for timing; use --precision bf16, fp32 or auto.")
    return choose_precision(name, device)


def _measure(settings: BenchSettings, measure: tuple[str, ...], warmup: int) -> tuple[tuple[str, ...], list[str]]:
    """The measurements to run, checked against the registry and ``--compile``; and the notes that explain
    a measurement left out."""
    for name in measure:
        measurement(name)
    if not settings.compile:
        return measure, []
    if not hasattr(torch.compiler, "set_stance"):
        raise ValueError(f"--compile needs torch >= 2.6 (for torch.compiler.set_stance); this is {torch.__version__}.")
    if warmup < COMPILE_WARMUP:
        raise ValueError(
            f"--compile needs --warmup >= {COMPILE_WARMUP} (got {warmup}): the first warm-up call counts FLOPs "
            "eagerly and the second compiles, which must not land in a timed round."
        )
    eager = [measurement(name) for name in measure if measurement(name).compile_blocker]
    if eager and settings.measure is not None:
        spec = eager[0]
        others = ",".join(name for name in measure if not measurement(name).compile_blocker) or "encoder"
        raise ValueError(
            f"--compile does not time {spec.name}: {spec.compile_blocker}. Leave {spec.name} out of --measure "
            f"(e.g. --measure {others})."
        )
    notes = [f"{spec.name} not timed: {spec.compile_blocker} (see --compile)." for spec in eager]
    return tuple(name for name in measure if not measurement(name).compile_blocker), notes


def _llm_layers(value: Any, preset: BenchPreset) -> int | None:
    """The LLM decoder layers to build, ``None`` for all of them (or for a preset without an LLM)."""
    if preset.llm is None or value is None:
        return None
    layers = int(value)
    if not 1 <= layers <= preset.llm.layers:
        raise ValueError(f"--llm-layers must lie in 1..{preset.llm.layers} for {preset.llm.name}, got {layers}.")
    return None if layers == preset.llm.layers else layers


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``("init=ffn_reuse", "shortcut=true")`` -> ``{"init": "ffn_reuse", "shortcut": True}`` (values as YAML)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--method-options {item!r}: give KEY=VALUE, such as init=ffn_reuse.")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ValueError(f"--method-options {item!r}: the value is not YAML ({error}).") from None
    return options
