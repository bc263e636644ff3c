"""Benchmark presets, one table for every engine: which geometry, how long the prompt and answer, per-device defaults.

Each preset names its ``engine``: ``batched`` (square images as 4-D ``pixel_values`` through an encoder or a LLaVA-style
MLLM; ``--engine vllm`` serves these too) or ``packed`` (a Qwen-VL tower taking packed patches and ``grid_thw``).
Built-in presets are data, in ``presets.yaml`` beside this module; a YAML file with the fields of a batched preset works too (``--preset path.yaml``;
see ``configs/bench/``). Geometries come from :mod:`laco.cost` by name, or inline as a mapping of
:class:`~laco.cost.EncoderGeometry` / :class:`~laco.cost.LLMGeometry` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..cost import EncoderGeometry, LLMGeometry, encoder_geometry, llm_geometry
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
    if isinstance(value, Mapping):  # YAML lists become the tuples a frozen geometry holds
        fields_ = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        return kind(**_known(fields_, kind, f"{kind.__name__} field(s)"))
    raise ValueError(f"a {kind.__name__} is a preset name or a mapping of fields, not {value!r}.")


def preset_from_dict(data: Mapping[str, Any], name: str | None = None) -> BenchPreset:
    """Build a batched preset from a mapping (as read from YAML): ``encoder``/``llm`` are names or field mappings."""
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


def _native_from_dict(data: Mapping[str, Any], name: str) -> NativePreset:
    values = dict(_known(data, NativePreset, "packed preset field(s)"), name=name)
    values["encoder"] = _geometry(values["encoder"], PackedEncoderGeometry, PACKED_ENCODERS.__getitem__)
    values["llm"] = _geometry(values.get("llm") or PACKED_LLMS[values["encoder"].name], LLMGeometry, llm_geometry)
    values["sizes"], values["notes"] = tuple(values.get("sizes", ("448", "1344"))), tuple(values.get("notes", ()))
    return NativePreset(**values)


def _built_in() -> dict[str, BenchPreset | NativePreset]:
    import yaml

    data = yaml.safe_load(Path(__file__).with_name("presets.yaml").read_text())
    presets = {}
    for name, entry in data["presets"].items():
        entry = {**entry, "notes": [data["notes"][note] for note in entry.get("notes", ())]}
        packed = entry.get("engine") == "packed"
        presets[name] = _native_from_dict(entry, name) if packed else preset_from_dict(entry, name)
    return presets


PRESETS: dict[str, BenchPreset | NativePreset] = _built_in()
"""Every built-in preset, of every engine, by name (``presets.yaml`` beside this module)."""
TINY_ENCODER, TINY_LLM = PRESETS["tiny"].encoder, PRESETS["tiny"].llm  # the CI geometry, for tests and --quick


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
