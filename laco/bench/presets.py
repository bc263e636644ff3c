"""Benchmark presets, one table for every engine: which geometry, how long the prompt and answer, per-device defaults.

Each preset names its ``engine``: ``batched`` (square images as 4-D ``pixel_values`` through an encoder or a LLaVA-style
MLLM; ``--engine vllm`` serves these too) or ``packed`` (a Qwen-VL tower taking packed patches and ``grid_thw``).
Built-in presets live here as data; a YAML file with the fields of a batched preset works too (``--preset path.yaml``;
see ``configs/bench/``). Geometries come from :mod:`laco.cost` by name, or inline as a mapping of
:class:`~laco.cost.EncoderGeometry` / :class:`~laco.cost.LLMGeometry` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..cost import ENCODERS, LLMS, EncoderGeometry, LLMGeometry, encoder_geometry, llm_geometry
from ..cost.native import PACKED_ENCODERS, PACKED_LLMS, PackedEncoderGeometry
from .measurements import default_measurements
from .options import csv

# Per-device defaults every preset starts from. A CPU has little compute, so few repetitions; GPUs get more
# rounds and bf16 (what MLLMs are trained and served in).
BASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"reps": 3, "warmup": 1, "precision": "auto"},
    "cuda": {"reps": 10, "warmup": 3, "precision": "auto"},
}
DEFAULT_KEYS = ("reps", "warmup", "precision", "llm_layers", "measure", "batch")


@dataclass(frozen=True)
class _Preset:
    """What every preset names: ``name`` and ``description`` (shown in the report), the encoder geometry, the LLM
    geometry (``None``: an encoder alone), caveats printed with the results, and the engine that runs it."""

    name: str
    description: str
    encoder: Any
    llm: LLMGeometry | None = None
    notes: tuple[str, ...] = ()
    engine: str = "batched"


@dataclass(frozen=True)
class BenchPreset(_Preset):
    """What ``laco bench --preset NAME`` measures (besides the fields of every preset).

    Args:
        image_size: input resolution (default: the encoder's).
        prompt_tokens, answer_tokens: text tokens after the image, and answer tokens (decoded at inference,
            labelled in training). A training sequence is image + prompt + answer.
        defaults: per device type (``"cpu"``, ``"cuda"``), defaults for ``reps``, ``warmup``, ``precision``,
            ``llm_layers`` (time that many LLM layers and scale to the full depth), ``measure`` and ``batch``.
    """

    encoder: EncoderGeometry
    image_size: int | None = None
    prompt_tokens: int = 32
    answer_tokens: int = 32
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine != "batched":
            raise ValueError(f"preset {self.name!r}: engine {self.engine!r}; a preset with these fields is 'batched'.")
        for device, values in self.defaults.items():
            if device not in BASE_DEFAULTS:
                raise ValueError(f"preset {self.name!r}: defaults for unknown device {device!r}; use 'cpu' or 'cuda'.")
            unknown = sorted(set(values) - set(DEFAULT_KEYS))
            if unknown:
                raise ValueError(f"preset {self.name!r}: unknown default(s) {unknown}; allowed: {list(DEFAULT_KEYS)}.")
        if self.prompt_tokens < 1 or self.answer_tokens < 1:
            raise ValueError(f"preset {self.name!r}: prompt_tokens and answer_tokens must be >= 1.")

    @property
    def resolution(self) -> int:
        return self.image_size or self.encoder.image_size

    def default(self, device_type: str, key: str) -> Any:
        """The preset's default for ``key`` on ``device_type``, falling back to :data:`BASE_DEFAULTS`."""
        device_type = "cuda" if device_type == "cuda" else "cpu"
        if key in self.defaults.get(device_type, {}):
            return self.defaults[device_type][key]
        if key == "measure":
            return default_measurements(with_llm=self.llm is not None)
        if key == "batch":
            return 1
        return BASE_DEFAULTS[device_type].get(key)


TINY_ENCODER = EncoderGeometry("tiny-siglip", "siglip", 64, 12, 4, 128, 4, 52)  # 13x13: odd, like so400m@384
TINY_LLM = LLMGeometry("tiny-qwen2", 64, 2, 4, 2, 176, 1024, tied=True)

_SO400M_NOTE = (
    "SigLIP-so400m is benchmarked with all 27 layers as geometries.md lists it; LLaVA-OneVision's own tower "
    "drops the last layer (26 used), which changes the FLOP ratios by ~1%."
)


@dataclass(frozen=True)
class NativePreset(_Preset):
    """A packed tower to time (``engine = "packed"``). ``llm`` is the LLM it feeds (for the time-to-first-token
    bound); ``cpu_reps`` the timed rounds per image set on a CPU; image sets of more than ``warmup_max_patches``
    patches skip the warm-up on a CPU (a call of a large tower costs as much as a timed one)."""

    encoder: PackedEncoderGeometry
    sizes: tuple[str, ...] = ("448", "1344")
    cpu_reps: Mapping[str, int] = field(default_factory=lambda: {"448": 3})
    warmup_max_patches: int = 4096
    layer: str = "1/4"
    engine: str = "packed"

    def reps(self, size: str, device: torch.device) -> int:
        return self.cpu_reps.get(size, 2) if device.type == "cpu" else 10

    def warmup(self, patches: int, device: torch.device) -> int:
        return 3 if device.type == "cuda" else int(patches <= self.warmup_max_patches)


_TINY_NOTE = "tiny geometry: timings are dominated by Python overhead and say nothing about real models."
_RANDOM = "random weights: the time of a call does not depend on them; speed-ups are what this measures, not quality."
_ENCODER_ONLY = (
    ("siglip-so400m", "SigLIP-so400m/14 @384 (27 layers, 27x27 grid), encoder only"),
    ("siglip-l16", "SigLIP-L/16 @384 (24 layers, 24x24 grid), encoder only"),
    ("internvit-300m", "InternViT-300M @448 (24 layers, 32x32 grid + CLS), encoder only"),
    ("dinov2-s", "DINOv2-S/14 @224 (12 layers, 16x16 grid + CLS), encoder only"),
    ("aimv2-l14", "AIMv2-L/14 @224 (24 layers, SwiGLU, 16x16 grid), encoder only"),
    ("clip-l14-336", "CLIP ViT-L/14 @336 (24 layers, 24x24 grid + CLS), encoder only"),
)
PRESETS: dict[str, BenchPreset | NativePreset] = {
    preset.name: preset
    for preset in (
        BenchPreset(
            "llava-ov-0.5b",
            "LLaVA-OneVision-0.5B geometry: SigLIP-so400m/14 @384 + 2-layer MLP projector + Qwen2-0.5B",
            ENCODERS["siglip-so400m"],
            LLMS["qwen2-0.5b"],
            # On a CPU the full 24-layer LLM would dominate the run time: time 6 layers, scale to 24.
            defaults={"cpu": {"llm_layers": 6}},
            notes=(_SO400M_NOTE,),
        ),
        BenchPreset(
            "llava-ov-7b",
            "LLaVA-OneVision-7B geometry: SigLIP-so400m/14 @384 + 2-layer MLP projector + Qwen2-7B",
            ENCODERS["siglip-so400m"],
            LLMS["qwen2-7b"],
            # A full 7B does not fit a training step with AdamW on one 80 GB GPU without sharding, nor any
            # step in CPU RAM: time a few layers (embedding and lm_head included at full size) and scale.
            defaults={
                "cpu": {"llm_layers": 1, "measure": ("encoder", "prefill", "decode")},
                "cuda": {"llm_layers": 4},
            },
            notes=(_SO400M_NOTE,),
        ),
        *(BenchPreset(name, description, ENCODERS[name]) for name, description in _ENCODER_ONLY),
        BenchPreset(
            "tiny",
            "tiny random geometry for CI (--quick): 12-layer SigLIP-like encoder on an odd 13x13 grid + 2-layer Qwen2",
            TINY_ENCODER,
            TINY_LLM,
            prompt_tokens=8,
            answer_tokens=4,
            defaults={"cpu": {"reps": 3, "warmup": 1}, "cuda": {"reps": 3, "warmup": 1, "precision": "fp32"}},
            notes=(_TINY_NOTE,),
        ),
        NativePreset(
            "qwen2.5-vl-7b-tower",
            "Qwen2.5-VL-7B vision tower (32 blocks, width 1280, 112 px windows, full attention in 7/15/23/31), "
            "feeding Qwen2-7B",
            PACKED_ENCODERS["qwen2.5-vl-7b"],
            llm_geometry(PACKED_LLMS["qwen2.5-vl-7b"]),
            notes=(_RANDOM,),
        ),
        NativePreset(
            "qwen2-vl-2b-tower",
            "Qwen2-VL-2B vision tower (32 blocks, width 1280, full attention), feeding Qwen2-1.5B",
            PACKED_ENCODERS["qwen2-vl-2b"],
            llm_geometry(PACKED_LLMS["qwen2-vl-2b"]),
            notes=(_RANDOM,),
        ),
        NativePreset(
            "tiny-qwen-tower",
            "tiny Qwen2.5-VL-like tower for CI: 4 blocks, width 32, 112 px windows, full attention in 1/3",
            PackedEncoderGeometry(
                "tiny-qwen2.5-vl", "qwen2.5-vl", 32, 4, 4, 48, 32, mlp_kind="swiglu", window=112, full_blocks=(1, 3)
            ),
            TINY_LLM,
            sizes=("448", "mixed"),
            cpu_reps={},
            warmup_max_patches=10**6,
            notes=(_TINY_NOTE,),
        ),
    )
}
"""Every built-in preset, of every engine, by name."""


def _known(values: Mapping[str, Any], kind: type, what: str) -> Mapping[str, Any]:
    """``values``, refused where a key is not a field of the dataclass ``kind``."""
    names = {f.name for f in fields(kind)}
    if unknown := sorted(set(values) - names):
        raise ValueError(f"unknown {what} {unknown}; allowed: {sorted(names)}.")
    return values


def _geometry(value: Any, kind: type, lookup) -> Any:
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, str):
        return lookup(value)
    if isinstance(value, Mapping):
        return kind(**_known(value, kind, f"{kind.__name__} field(s)"))
    raise ValueError(f"a {kind.__name__} is a preset name or a mapping of fields, not {value!r}.")


def preset_from_dict(data: Mapping[str, Any], name: str | None = None) -> BenchPreset:
    """Build a preset from a mapping (as read from YAML): ``encoder``/``llm`` are names or field mappings."""
    _known(data, BenchPreset, "preset field(s)")
    if "encoder" not in data:
        raise ValueError("a preset needs an 'encoder' (a name such as 'siglip-so400m' or a mapping of fields).")
    values = dict(data)
    values["name"] = values.get("name") or name or "custom"
    values.setdefault("description", values["name"])
    values["encoder"] = _geometry(values["encoder"], EncoderGeometry, encoder_geometry)
    values["llm"] = _geometry(values.get("llm"), LLMGeometry, llm_geometry)
    defaults = values.get("defaults") or {}
    values["defaults"] = {
        device: {k: tuple(csv(v)) if k == "measure" else v for k, v in (entries or {}).items()}
        for device, entries in defaults.items()
    }
    values["notes"] = tuple(values.get("notes") or ())
    return BenchPreset(**values)


def load_preset(name_or_path: str | Path | BenchPreset) -> BenchPreset:
    """A built-in batched preset by name, or one read from a YAML file."""
    preset = any_preset(name_or_path)
    if preset.engine == "packed":
        raise ValueError(
            f"{preset.name} is a packed native-resolution tower: run it with `laco bench --preset {preset.name}` or "
            "laco.bench.native.run_native(NativeSettings(preset=...)), not as a batched-encoder preset."
        )
    return preset


def any_preset(name_or_path: str | Path | BenchPreset | NativePreset) -> BenchPreset | NativePreset:
    """A built-in preset of any engine by name, or a batched one read from a YAML file."""
    if isinstance(name_or_path, BenchPreset | NativePreset):
        return name_or_path
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"unknown preset {text!r}; choose one of {sorted(PRESETS)} or pass a .yaml file.")
    if not path.exists():
        raise FileNotFoundError(f"preset file {path} does not exist.")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"preset file {path}{where}: YAML syntax error ({problem}); fix the file.") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"preset file {path} must hold a mapping of preset fields, not {type(data).__name__}.")
    return preset_from_dict(data, name=path.stem)
