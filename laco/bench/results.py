"""One result model for every engine: per measurement and variant a :class:`Row` (samples, the cost model's FLOPs,
the LLM's visual tokens, and what only that engine records), speed-ups over the baselines computed once, by
:func:`~laco.measure.timing.paired_speedup` (median and quartiles of the per-round ratios), and one serialiser (:meth:`Result.to_dict`,
the content of ``bench.json``, ``native.json`` and ``serving.json``), which keeps every raw sample (round, slot,
sub-phases), so any statistic can be recomputed without rerunning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from ..measure.machine import RunStart
from ..measure.timing import Samples, SpeedUp, Stats, paired_speedup
from .measurements import STACK_PREFIX, Measurement
from .schema import ENGINES, SCHEMA
from .variants import BenchVariant


def plain(value: Any) -> Any:
    """``value`` in JSON types: its ``to_dict()``, a dataclass's fields, or itself."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return asdict(value) if is_dataclass(value) else value


@dataclass
class Row:
    """One variant under one measurement, as every engine records it.

    ``samples``: the seconds the speed-ups compare (batched runs: scaled to the full LLM depth; vLLM throughput:
    seconds per request or per output token), per round and slot, with their sub-phases (other times that pair
    like them: ``cpu``, ``compute``, ...). ``flops``: the cost model's FLOPs at full size (the FLOP bound is the
    baseline's over the variant's). ``tokens``: visual tokens the LLM receives. ``facts``: what only one engine
    records (FLOPs counted, memory, laco's overhead, ...).
    """

    samples: Samples
    flops: float
    tokens: int | list[int] | None
    facts: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> Stats:
        return self.samples.stats()

    def phase(self, name: str) -> list[float]:
        return self.samples.phases.get(name, [])

    def to_dict(self) -> dict[str, Any]:
        samples = self.samples
        return {
            "seconds": samples.seconds,
            "rounds": samples.rounds,
            "slots": samples.slots,
            "phases_seconds": samples.phases,
            "stats_seconds": samples.stats().to_dict(),
            "phase_stats_seconds": {name: Stats.of(v).to_dict() if v else None for name, v in samples.phases.items()},
            "flops": self.flops,
            "tokens": self.tokens,
            **{key: plain(value) for key, value in self.facts.items()},
        }


@dataclass
class Result:
    """Everything one run of any engine produced; :mod:`laco.bench.report` and :mod:`laco.bench.plots` show it.

    ``rows``: measurement -> variant -> :class:`Row`; ``titles``: each measurement's label; ``alternatives``:
    phase -> key of the speed-ups also computed from that phase (``cpu`` -> ``cpu_time``); ``payload``: the
    engine's own keys of the result file (anatomy, image sets, ...); ``settings`` and ``machine`` the engine's
    objects (serialised by their ``to_dict``)."""

    engine: str
    preset: Any
    variants: list[BenchVariant]
    settings: Any
    machine: Any
    rows: dict[str, dict[str, Row]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    headline: str | None = None
    alternatives: dict[str, str] = field(default_factory=dict)
    preset_fields: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    start: RunStart = field(default_factory=RunStart)

    @property
    def depth(self) -> int:
        return self.preset.encoder.layers

    def variant(self, name: str) -> BenchVariant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(f"no variant {name!r}; variants are {[v.name for v in self.variants]}.")

    def speedup(self, kind: str, name: str, phase: str | None = None) -> SpeedUp | None:
        """``name`` against its baseline under measurement ``kind`` (timed by ``phase``, default the samples'
        seconds); ``None`` for reference variants and phases not timed."""
        variant = self.variant(name)
        if variant.baseline is None:
            return None
        base, this = self.rows[kind][variant.baseline], self.rows[kind][name]
        if phase is not None and not (base.phase(phase) and this.phase(phase)):
            return None
        timed = (r.samples if phase is None else r.samples.with_seconds(r.phase(phase)) for r in (base, this))
        return paired_speedup(*timed, base.flops / this.flops)

    def records(self) -> list[dict[str, Any]]:
        """The ``speedups`` records: one per measurement and compressed variant, in the same keys for every engine."""
        return [
            {
                "measurement": kind,
                "title": self.titles.get(kind, kind),
                "variant": variant.name,
                "baseline": variant.baseline,
                "group": variant.group,
                "method": variant.placement.method,
                "fraction": variant.fraction(self.depth),
                "same_tokens": variant.same_tokens_as_baseline,
                **speed.to_dict(),
            }  # fmt: skip
            for kind in self.rows
            for variant in self.variants
            if (speed := self.speedup(kind, variant.name)) is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        """Everything in the result as plain JSON types (:mod:`laco.bench.schema`): the engine's result file."""
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; engines are {ENGINES}.")
        preset, machine = self.preset, plain(self.machine)
        return {
            "schema": SCHEMA, "engine": self.engine, "provenance": self.start.provenance(machine.get("cpu", "")),
            "headline": self.headline,
            "preset": {"name": preset.name, "description": preset.description, "encoder": plain(preset.encoder),
                       "llm": plain(preset.llm), **self.preset_fields},
            "variants": [variant.to_dict(self.depth) for variant in self.variants],
            "settings": plain(self.settings), "machine": machine,
            "measurements": {kind: self._rows_dict(kind) for kind in self.rows}, "speedups": self.records(),
            "notes": self.notes, **{key: plain(value) for key, value in self.payload.items()},
        }  # fmt: skip

    def _rows_dict(self, kind: str) -> dict[str, Any]:
        rows = {}
        for variant in self.variants:
            row = self.rows[kind][variant.name].to_dict()
            speed = self.speedup(kind, variant.name)
            row["speedup"] = None if speed is None else {"baseline": variant.baseline, **speed.to_dict()}
            for phase, key in self.alternatives.items():
                if speed is not None and (other := self.speedup(kind, variant.name, phase)) is not None:
                    row["speedup"][key] = other.to_dict()
            rows[variant.name] = row
        return rows


def check_tokens(name: str, emitted: int, predicted: int) -> None:
    """Refuse a run whose model feeds the LLM another number of tokens than the cost model predicts."""
    if emitted != predicted:
        raise RuntimeError(
            f"{name}: the model feeds {emitted} tokens to the LLM but laco.cost predicts {predicted}; the cost model "
            "and the model disagree (a bug to report)."
        )


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
