"""Interleaved timing with warm-up, robust statistics and CUDA events, shared by every engine.

Why interleave: a shared or throttling machine drifts; timing A for a while and then B puts the drift into the
A/B ratio. Every round runs each workload once, its start rotating (no variant always follows the same
neighbour), and the samples of two variants from one round form a pair whose ratios give the error bar.
Why median and IQR: timing noise is one-sided and heavy-tailed, and these are not dragged by outliers.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Mark = Any  # a float (host clock) or a torch.cuda.Event


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), the default thread count for timing and workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


class Clock:
    """Time marks on the host clock, or CUDA events on the current stream when timing a GPU (kernels run
    asynchronously: a host clock would measure the launch); :meth:`seconds` waits for the later event."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def mark(self) -> Mark:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Mark, end: Mark) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class Stats:
    """Order statistics of a sample: median, quartiles (linear interpolation), extremes."""

    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        data = sorted(float(v) for v in values)
        if not data:
            raise ValueError("cannot summarise an empty sample; run at least one repetition (reps >= 1).")
        q1, median, q3 = (quantile(data, q) for q in (0.25, 0.5, 0.75))
        return cls(len(data), median, q1, q3, data[0], data[-1], statistics.fmean(data))

    def to_dict(self) -> dict[str, float]:
        return {
            "n": self.n, "median": self.median, "q1": self.q1, "q3": self.q3, "iqr": self.iqr,
            "min": self.min, "max": self.max, "mean": self.mean,
        }  # fmt: skip


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between order statistics (numpy's default)."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile q must lie in [0, 1], got {q}.")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@dataclass
class Samples:
    """Every timed call of one workload: wall seconds, sub-phases, and the round and slot it ran in."""

    seconds: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)

    def stats(self) -> Stats:
        return Stats.of(self.seconds)

    def phase_stats(self) -> dict[str, Stats]:
        return {name: Stats.of(values) for name, values in self.phases.items()}

    def stack_scaled(self, values: Sequence[float], stack_phases: Sequence[str], scale: float) -> list[float]:
        """``values`` (these seconds, or a phase's) plus their share spent in a layer stack (the sum of the
        ``stack_phases``, as :class:`StackTimer` times it) times ``scale - 1``: the time with ``scale`` times the
        layers, from a run that timed fewer."""
        stack = [0.0] * len(values)
        for phase in stack_phases:
            for index, value in enumerate(self.phases.get(phase, [])[: len(values)]):
                stack[index] += value
        return [value + (scale - 1.0) * extra for value, extra in zip(values, stack)]

    def with_seconds(self, seconds: Sequence[float], phases: Mapping[str, list[float]] | None = None) -> Samples:
        """Other seconds (a derived time; ``phases`` its sub-phases) in these rounds and slots, so they pair like
        the originals."""
        return Samples(list(seconds), dict(phases or {}), list(self.rounds), list(self.slots))


def run_interleaved(
    workloads: Mapping[str, Callable[[], Mapping[str, float] | None]],
    *,
    reps: int,
    warmup: int = 1,
    clock: Clock | None = None,
    prepare: Mapping[str, Callable[[], None]] | None = None,
    rotate: bool = True,
    on_call: Callable[[str, bool], None] | None = None,
) -> dict[str, Samples]:
    """Time ``workloads`` round-robin: ``warmup`` untimed rounds, then ``reps`` timed rounds.

    Round ``r`` runs the workloads in their given order rotated by ``r`` (``rotate=False`` keeps it fixed).
    ``prepare[name]`` runs untimed before each call of ``name``; ``on_call(name, timed)`` after it (progress).
    Returns the samples per workload name, in timed-round order.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}; one timed round is the minimum for a median.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")
    clock = clock or Clock()
    prepare = prepare or {}
    unknown = sorted(set(prepare) - set(workloads))
    if unknown:
        raise ValueError(f"prepare names {unknown} that are not workloads ({sorted(workloads)}).")
    names = list(workloads)
    samples = {name: Samples() for name in names}
    for round_index in range(warmup + reps):
        shift = round_index % len(names) if rotate and names else 0
        for slot, name in enumerate(names[shift:] + names[:shift]):
            if name in prepare:
                prepare[name]()
            clock.sync()  # nothing queued from before may leak into this sample
            start = clock.mark()
            phases = workloads[name]()
            end = clock.mark()
            elapsed = clock.seconds(start, end)
            timed = round_index >= warmup
            if timed:
                record = samples[name]
                record.seconds.append(elapsed)
                record.rounds.append(round_index - warmup)
                record.slots.append(slot)
                for phase, value in (phases or {}).items():
                    record.phases.setdefault(phase, []).append(float(value))
            if on_call is not None:
                on_call(name, timed)
    return samples


def paired_ratios(baseline: Samples, variant: Samples) -> list[float]:
    """Per-round speed-ups ``baseline / variant`` from samples taken in the same rounds."""
    by_round = dict(zip(baseline.rounds, baseline.seconds))
    return [by_round[r] / s for r, s in zip(variant.rounds, variant.seconds) if r in by_round and s > 0]


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
        return {"measured": self.measured, "q1": self.q1, "q3": self.q3, "bound": self.bound,
                "efficiency": self.efficiency}  # fmt: skip


def paired_speedup(baseline: Samples, variant: Samples, bound: float) -> SpeedUp:
    """Median and quartiles of the per-round ratios ``baseline / variant`` (the medians' ratio where no rounds
    pair), next to the FLOP ``bound``: how every engine states a speed-up."""
    pairs = paired_ratios(baseline, variant)
    if not pairs:
        measured = baseline.stats().median / variant.stats().median
        return SpeedUp(measured, measured, measured, bound)
    spread = Stats.of(pairs)
    return SpeedUp(spread.median, spread.q1, spread.q3, bound)


class StackTimer:
    """Time spent inside a contiguous stack of layers, forward and backward, from hooks: what ``--llm-layers``
    scales from ``N`` timed layers to ``L``, without the embedding, ``lm_head``, loss or vision tower around them.

    Forward: hooks on the first layer's entry and the last one's exit. Backward: tensor hooks on the last layer's
    output (backward enters the stack) and the first layer's input (it is done). Durations accumulate until
    :meth:`reset`, so a decode loop sums its steps.
    """

    def __init__(self, layers: nn.ModuleList, clock: Clock) -> None:
        if len(layers) == 0:
            raise ValueError("StackTimer needs at least one layer.")
        self.layers, self.clock = layers, clock
        self._handles: list[Any] = []
        self._forward: list[tuple[Mark, Mark]] = []
        self._backward: list[tuple[Mark, Mark]] = []
        self._pending_forward: Mark | None = None
        self._pending_backward: Mark | None = None

    def attach(self) -> "StackTimer":
        if not self._handles:
            self._handles = [
                self.layers[0].register_forward_pre_hook(self._enter, with_kwargs=True),
                self.layers[-1].register_forward_hook(self._exit),
            ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> None:
        self._forward, self._backward = [], []
        self._pending_forward = self._pending_backward = None

    def _enter(self, module, args, kwargs):
        self._pending_forward = self.clock.mark()
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad and torch.is_grad_enabled():
            hidden.register_hook(self._backward_done)
        return None

    def _exit(self, module, args, output):
        if self._pending_forward is not None:
            self._forward.append((self._pending_forward, self.clock.mark()))
            self._pending_forward = None
        hidden = output[0] if isinstance(output, tuple) else output
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad and torch.is_grad_enabled():
            hidden.register_hook(self._backward_enters)
        return None

    def _backward_enters(self, grad):
        self._pending_backward = self.clock.mark()

    def _backward_done(self, grad):
        if self._pending_backward is not None:
            self._backward.append((self._pending_backward, self.clock.mark()))
            self._pending_backward = None

    def forward_seconds(self) -> float:
        return sum(self.clock.seconds(a, b) for a, b in self._forward)

    def backward_seconds(self) -> float:
        return sum(self.clock.seconds(a, b) for a, b in self._backward)
