"""What a batched run produced, typed: every variant's samples, FLOPs, tokens and memory under every measurement,
the speed-ups over the baselines, and ``bench.json`` (:meth:`BenchResult.to_dict`), which keeps every raw sample
(round, slot, sub-phases), so any statistic can be recomputed without rerunning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..measure.flop_counting import Memory
from ..measure.machine import Machine, RunStart
from ..measure.timing import Samples, Stats, paired_ratios
from ..placement import Placement
from .anatomy import Anatomy
from .measurements import STACK_PREFIX, Measurement, measurement
from .presets import BenchPreset
from .schema import envelope, speedup_record
from .settings import ResolvedSettings
from .variants import BenchVariant, headline_variant


@dataclass
class VariantResult:
    """One variant under one measurement: raw samples, scaled samples (reduced LLM depth), FLOPs, memory."""

    samples: Samples
    scaled_seconds: list[float]
    flops_counted: float
    flops_predicted: float
    flops_predicted_full: float
    image_tokens: int
    sequence_tokens: int | None
    memory: Memory = None
    # Training only: the AdamW step's share of ``scaled_seconds`` (scaled like it). It streams every parameter
    # whatever the token count, so it is the part of a step that compression cannot shorten.
    optimizer_seconds: list[float] = field(default_factory=list)

    def stats(self) -> Stats:
        return Stats.of(self.scaled_seconds)

    @property
    def compute_seconds(self) -> list[float]:
        """Scaled seconds without the optimizer step (forward + backward in training; all of it otherwise)."""
        if not self.optimizer_seconds:
            return list(self.scaled_seconds)
        return [total - optimizer for total, optimizer in zip(self.scaled_seconds, self.optimizer_seconds)]

    def to_dict(self) -> dict[str, Any]:
        data = {
            "seconds": self.samples.seconds,
            "scaled_seconds": self.scaled_seconds,
            "rounds": self.samples.rounds,
            "slots": self.samples.slots,
            "phases_seconds": self.samples.phases,
            "stats_seconds": self.stats().to_dict(),
            "phase_stats_seconds": {
                name: Stats.of(values).to_dict() if values else None for name, values in self.samples.phases.items()
            },
            "image_tokens": self.image_tokens,
            "sequence_tokens": self.sequence_tokens,
            "flops_counted": self.flops_counted,
            "flops_predicted": self.flops_predicted,
            "flops_predicted_full": self.flops_predicted_full,
            "memory": self.memory.to_dict() if self.memory is not None else {},
        }
        if self.optimizer_seconds:
            data["optimizer_scaled_seconds"] = self.optimizer_seconds
        return data


@dataclass(frozen=True)
class SpeedUp:
    """Speed-up of a variant over its baseline: median and quartiles of the per-round ratios (each round times
    both, back to back), and the FLOP bound."""

    measured: float
    q1: float
    q3: float
    bound: float

    @property
    def efficiency(self) -> float:
        """Measured over predicted: 1.0 collects the whole FLOP reduction as time."""
        return self.measured / self.bound if self.bound else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {
            "measured": self.measured,
            "paired_q1": self.q1,
            "paired_q3": self.q3,
            "flop_bound": self.bound,
            "measured_over_bound": self.efficiency,
        }


@dataclass
class BenchResult:
    """Everything one run produced; :mod:`laco.bench.report` and :mod:`laco.bench.plots` show it."""

    settings: ResolvedSettings
    machine: Machine
    variants: list[BenchVariant]
    measurements: dict[str, dict[str, VariantResult]]
    notes: list[str] = field(default_factory=list)
    build_seconds: float = 0.0
    run_seconds: float = 0.0
    anatomy: Anatomy | None = None  # the headline merge's parts, timed alone (with the encoder measurement)
    start: RunStart = field(default_factory=RunStart)

    @property
    def preset(self) -> BenchPreset:
        return self.settings.preset

    @property
    def depth(self) -> int:
        return self.preset.encoder.layers

    def kinds(self) -> list[Measurement]:
        """The measurements this run took, in order."""
        return [measurement(kind) for kind in self.measurements]

    def variant(self, name: str) -> BenchVariant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(f"no variant {name!r}; variants are {[v.name for v in self.variants]}.")

    def speedup(self, kind: str, name: str, without_optimizer: bool = False) -> SpeedUp | None:
        """``name`` against its baseline under measurement ``kind``; ``None`` for reference variants.

        ``without_optimizer``: compare training steps less their AdamW step (forward + backward), against the
        same FLOP bound, to tell the optimizer's fixed cost from how well the smaller matmuls run.
        """
        variant = self.variant(name)
        if variant.baseline is None:
            return None
        rows = self.measurements[kind]
        base, this = rows[variant.baseline], rows[name]
        bound = base.flops_predicted_full / this.flops_predicted_full
        timed = (
            r.samples.with_seconds(r.compute_seconds if without_optimizer else r.scaled_seconds) for r in (base, this)
        )
        return paired_speedup(*timed, bound)

    def to_dict(self) -> dict[str, Any]:
        """Everything in the result as plain JSON types: the content of ``bench.json``."""
        return envelope(
            "batched",
            self.start,
            self.machine.cpu,
            self.preset,
            self.variants,
            headline_variant((v.name, v.group) for v in self.variants),
            {"image_size": self.preset.resolution},
            settings=self.settings.to_dict(),
            machine=self.machine.to_dict(),
            measurements={kind: self._rows_dict(kind) for kind in self.measurements},
            speedups=[
                speedup_record(spec.name, variant, self.depth, speed, spec.short)
                for spec in self.kinds()
                for variant in self.variants
                if (speed := self.speedup(spec.name, variant.name)) is not None
            ],
            bound_curves={spec.name: self.bound_curve(spec) for spec in self.kinds()},
            notes=self.notes,
            anatomy=self.anatomy.to_dict() if self.anatomy is not None else None,
            build_seconds=self.build_seconds,
            run_seconds=self.run_seconds,
        )

    def bound_curve(self, spec: Measurement) -> list[list[float]]:
        """``[fraction, FLOP-bound speed-up]`` of LaCo after every layer k = 1..L over external compression."""
        factor, depth = self.settings.requested.factor, self.depth

        def flops(layer: int) -> float:
            return self.settings.predict(spec.flop_mode, Placement((layer,), "laco", factor), full=True).flops

        external = flops(depth)
        return [[layer / depth, external / flops(layer)] for layer in range(1, depth + 1)]

    def _rows_dict(self, kind: str) -> dict[str, Any]:
        rows = {}
        for variant in self.variants:
            row = self.measurements[kind][variant.name].to_dict()
            speed = self.speedup(kind, variant.name)
            row["speedup"] = None if speed is None else {"baseline": variant.baseline, **speed.to_dict()}
            if speed is not None and "optimizer_scaled_seconds" in row:
                row["speedup"]["without_optimizer"] = self.speedup(kind, variant.name, without_optimizer=True).to_dict()
            rows[variant.name] = row
        return rows


def check_tokens(name: str, emitted: int, predicted: int) -> None:
    """Refuse a run whose model feeds the LLM another number of tokens than the cost model predicts."""
    if emitted != predicted:
        raise RuntimeError(
            f"{name}: the model feeds {emitted} tokens to the LLM but laco.cost predicts {predicted}; the cost model "
            "and the model disagree (a bug to report)."
        )


def paired_speedup(baseline: Samples, variant: Samples, bound: float) -> SpeedUp:
    """Median and quartiles of the per-round ratios ``baseline / variant`` (the medians' ratio where no rounds
    pair), next to the FLOP ``bound``: how every engine states a speed-up."""
    pairs = paired_ratios(baseline, variant)
    if not pairs:
        measured = baseline.stats().median / variant.stats().median
        return SpeedUp(measured, measured, measured, bound)
    spread = Stats.of(pairs)
    return SpeedUp(spread.median, spread.q1, spread.q3, bound)


# ---------------------------------------------------------------------------------------------------------------
# Scaling a run that timed fewer LLM layers to the full depth


def scale_seconds(samples: Samples, spec: Measurement, scale: float) -> list[float]:
    """Wall seconds with the LLM decoder stack's time (``spec``'s ``stack_*`` phases) scaled from the timed to
    the full number of layers."""
    if scale == 1.0 or not spec.stack_phases:
        return list(samples.seconds)
    return samples.stack_scaled(samples.seconds, spec.stack_phases, scale)


def scale_phase(samples: Samples, phase: str, scale: float) -> list[float]:
    """One phase's seconds with its decoder-stack part (``stack_<phase>``) scaled to the full depth; ``[]`` if
    it was not timed."""
    return samples.stack_scaled(samples.phases.get(phase, []), (STACK_PREFIX + phase,), scale)
