"""The study's grid: variants (compressor x placement x shortcut x init x factor), tasks, seeds and budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..placement import Placement
from ..typed import from_dict


@dataclass(frozen=True)
class StudyVariant:
    """One arm of the study grid, named for the tables (``laco@1/4``, ``ldpv2+sc@ext``, ``none``)."""

    method: str | None  # None: no compression
    depth: tuple[str, ...] = ()  # fractions ("1/4") or "ext" (after the last layer)
    factor: int = 2
    shortcut: bool | None = None  # None: the method's default
    init: str | None = None
    branch_scale: float | None = None

    @property
    def name(self) -> str:
        if self.method is None:
            return "none"
        name = self.method
        if self.shortcut is not None and self.method not in ("laco", "avgpool"):
            name += "+sc" if self.shortcut else ""
        if self.method == "laco" and self.shortcut is False:
            name += "-sc"
        if self.init:
            name += f"[{self.init}]"
        if self.branch_scale is not None:
            name += f"[gate={self.branch_scale:g}]"
        if self.factor != 2:
            name += f"x{self.factor}"
        return f"{name}@{'+'.join(self.depth)}"

    @property
    def family(self) -> str:
        """The row label without the depth: one line of the depth plot."""
        return self.name.rsplit("@", 1)[0]

    def placement(self, depth: int) -> Placement:
        """Where this arm compresses in an encoder of ``depth`` layers (``Placement()`` for ``none``)."""
        if self.method is None:
            return Placement()
        return Placement(self.depth, self.method, self.factor, self.options()).resolve(depth)

    def layers(self, depth: int) -> tuple[int, ...]:
        return self.placement(depth).layers

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.shortcut is not None:
            options["shortcut"] = self.shortcut
        if self.init is not None:
            options["init"] = self.init
        if self.branch_scale is not None:
            options["branch_scale"] = self.branch_scale
        return options


@dataclass
class StudyConfig:
    """What ``laco study`` runs. The defaults are the full study; ``configs/study/quick.yaml`` is the CI subset."""

    output_dir: str = "runs/study"
    tasks: list[str] = field(default_factory=lambda: ["easyvqa-shape", "mnist", "easyvqa-color"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    image_size: int = 112
    max_train: int | None = 2000
    max_test: int | None = 800
    steps: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    depths: list[str] = field(default_factory=lambda: ["1/12", "1/6", "1/4", "1/2", "ext"])
    methods: list[str] = field(default_factory=lambda: ["laco", "pixel_shuffle", "avgpool", "ldpv2", "tokenpacker"])
    shortcut_ablation: bool = True
    extra: list[dict[str, Any]] = field(  # more variants, as Variant fields
        default_factory=lambda: [
            {"method": "laco", "depth": ["1/4"], "init": "layer"},
            {"method": "laco", "depth": ["1/4"], "init": "default", "branch_scale": 0.1},
            {"method": "laco", "depth": ["1/4"], "factor": 3},
            {"method": "laco", "depth": ["1/4", "1/2"]},
        ]
    )
    time_encoder: bool = True
    # auto: bf16 autocast for the cells where the CPU multiplies bf16 natively, float32 elsewhere (laco.precision)
    precision: str = "auto"
    threads: int | None = None  # torch threads in all (split among the jobs); None: every usable core
    jobs: int = 2  # worker processes sharing the cells, threads // jobs torch threads each (2: what we timed)

    def variants(self) -> list[StudyVariant]:
        variants = [StudyVariant(None)]
        for depth in self.depths:
            for method in self.methods:
                variants.extend(_method_variants(method, depth, self.shortcut_ablation))
        for extra in self.extra:
            extra = dict(extra)
            extra["depth"] = tuple(extra.get("depth", ()))
            variants.append(StudyVariant(**extra))
        seen, unique = set(), []
        for variant in variants:
            if variant.name not in seen:
                seen.add(variant.name)
                unique.append(variant)
        return unique

    def validate(self) -> StudyConfig:
        """Refuse, before any work, a study that names something unknown or selects nothing to compare."""
        from ..compressors import available
        from ..placement import parse_layers
        from .tasks import TASKS

        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or not self.tasks:
            raise ValueError(f"unknown or no study task(s) {unknown or self.tasks}; choose from {sorted(TASKS)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}.")
        for key in ("steps", "batch_size", "jobs", "image_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}.")
        for key in ("threads", "max_train", "max_test"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1 (or null), got {getattr(self, key)}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        methods = {*self.methods, *(extra.get("method") for extra in self.extra if extra.get("method"))}
        unknown = sorted(methods - set(available()))
        if unknown:
            raise ValueError(f"unknown compressor(s) {unknown}; choose from {available()}.")
        for depth in [*self.depths, *(d for extra in self.extra for d in extra.get("depth", ()))]:
            parse_layers(depth)  # raises naming the depth
        if all(variant.method is None for variant in self.variants()):
            raise ValueError(
                "these settings select no compressed variant (methods, depths and extra are empty): the study would "
                "train only the uncompressed baseline. Name at least one method and depth."
            )
        return self


def _method_variants(method: str, depth: str, shortcut_ablation: bool) -> list[StudyVariant]:
    if method == "avgpool":
        return [StudyVariant("avgpool", (depth,))]
    if method == "laco":
        # LaCo is the patch merge *with* the shortcut; without it, it is pixel_shuffle (listed under that name)
        return [StudyVariant("laco", (depth,))]
    if method == "pixel_shuffle":
        both = [StudyVariant("pixel_shuffle", (depth,), shortcut=False)]
        return both + ([StudyVariant("pixel_shuffle", (depth,), shortcut=True)] if shortcut_ablation else [])
    both = [StudyVariant(method, (depth,), shortcut=False)]
    return both + ([StudyVariant(method, (depth,), shortcut=True)] if shortcut_ablation else [])


def load_study_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StudyConfig:
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
    data.update(overrides or {})
    return from_dict(StudyConfig, data).validate()


# The CI subset: one task, two seeds, few steps, a few variants; minutes on two cores.
QUICK = {
    "output_dir": "runs/study-quick",
    "tasks": ["easyvqa-color"],
    "seeds": [0, 1],
    "max_train": 128,
    "max_test": 64,
    "steps": 5,
    "batch_size": 16,
    "depths": ["1/2", "ext"],
    "methods": ["laco", "pixel_shuffle", "avgpool"],
    "shortcut_ablation": True,
    "extra": [],
    "time_encoder": False,
    "jobs": 1,  # spawning workers costs more than these few tiny cells
}
