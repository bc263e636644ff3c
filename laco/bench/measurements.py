"""The measurements ``laco bench`` can take, registered once each: what to time, what to compare it with, how to
show it.

A :class:`Measurement` names its workload (a factory that returns the untimed ``prepare`` and the timed
``call`` for one variant on the run's :class:`~laco.bench.testbed.Testbed`), the :mod:`laco.cost` mode whose
FLOPs it is compared with, its titles, the sub-phases its call reports, and what it needs (an LLM, gradients)
or cannot do (compile). The settings, the runner, the report and ``--compare`` all read this registry, so a
new measurement is one :func:`register` call::

    register(Measurement("tower", "vision tower, no grad", "tower", my_workload, flop_mode="encoder",
                         needs_llm=False, default=False))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..cost import MODES

Prepare = Callable[[], None]
Call = Callable[[], Mapping[str, float] | None]
Workload = tuple[Prepare, Call]
"""``(prepare, call)``: ``prepare`` runs untimed before every call; a call may return sub-phase seconds."""

STACK_PREFIX = "stack_"
"""Sub-phases named ``stack_*`` are the LLM decoder stack's share of a call, scaled with ``--llm-layers``."""
OPTIMIZER_PHASE = "optimizer"
"""The optimizer step's share of a training call, shown apart: compression cannot shorten it."""


@dataclass(frozen=True)
class Rate:
    """A throughput column: ``per_call(settings)`` items per call, shown as ``unit`` (``tok/s``)."""

    unit: str
    per_call: Callable[[Any], float]  # of the ResolvedSettings


@dataclass(frozen=True)
class Measurement:
    """One kind of measurement.

    Args:
        name: what ``--measure`` and ``bench.json`` call it.
        title: the table's title; short: its label in the summary, plots and ``--compare``.
        workload: ``workload(testbed, variant) -> (prepare, call)``, or the name of a
            :class:`~laco.bench.testbed.Testbed` method taking ``variant`` (the built-in measurements).
        flop_mode: the :data:`laco.cost.MODES` entry whose FLOPs predict the call's.
        detail: what one call processes, for the table's subtitle; formatted with ``s``, the resolved settings.
        phases: the sub-phases a call reports (``stack_*``: the LLM decoder stack's share).
        needs_llm: only MLLM presets can run it. training: the model runs in train mode, and on a CPU the
            memory figure is the bytes saved for backward.
        compile_blocker: why ``--compile`` cannot time it (``None``: it can).
        rate: a throughput column, if any. target: the ">= 1.5x" goal speaks of it (the summary says so).
        anatomy: the merge's parts are timed alongside it. default: run when ``--measure`` is not given.
    """

    name: str
    title: str
    short: str
    workload: Callable[[Any, Any], Workload] | str
    flop_mode: str
    detail: str = ""
    phases: tuple[str, ...] = ()
    needs_llm: bool = True
    training: bool = False
    compile_blocker: str | None = None
    rate: Rate | None = None
    target: bool = False
    anatomy: bool = False
    default: bool = True

    def __post_init__(self) -> None:
        if self.flop_mode not in MODES:
            raise ValueError(
                f"measurement {self.name!r}: flop_mode {self.flop_mode!r} is not a laco.cost mode; choose one of {MODES}."
            )

    @property
    def stack_phases(self) -> tuple[str, ...]:
        return tuple(phase for phase in self.phases if phase.startswith(STACK_PREFIX))


MEASUREMENTS: dict[str, Measurement] = {}
"""Every registered measurement by name, in registration order (the order of tables and plots)."""


def register(spec: Measurement) -> Measurement:
    """Make ``spec`` available to ``--measure`` (and, with ``default=True``, to every run that does not choose)."""
    if spec.name in MEASUREMENTS:
        raise ValueError(f"a measurement named {spec.name!r} is already registered; pick another name.")
    MEASUREMENTS[spec.name] = spec
    return spec


def measurement(name: str) -> Measurement:
    try:
        return MEASUREMENTS[name]
    except KeyError:
        raise ValueError(f"unknown measurement {name!r}; choose from {list(MEASUREMENTS)}.") from None


def default_measurements(with_llm: bool) -> tuple[str, ...]:
    """What a preset measures unless it says otherwise: every default measurement it can run."""
    return tuple(name for name, spec in MEASUREMENTS.items() if spec.default and (with_llm or not spec.needs_llm))


# ---------------------------------------------------------------------------------------------------------------
# The built-in measurements

for _spec in (
    Measurement(
        "encoder",
        "vision encoder forward (inference)",
        "encoder",
        "encoder_forward",
        flop_mode="encoder",
        needs_llm=False,
        anatomy=True,
    ),
    Measurement(
        "train",
        "training step: forward + answer loss + backward + AdamW step, everything trainable",
        "train step",
        "train_step",
        flop_mode="train",
        detail="sequence = image + {s.preset.prompt_tokens} prompt + {s.preset.answer_tokens} answer tokens",
        phases=("forward", "backward", OPTIMIZER_PHASE, "stack_forward", "stack_backward", "stack_optimizer"),
        training=True,
        target=True,
    ),
    Measurement(
        "prefill",
        "time to first token: prefill of image + prompt, first token",
        "TTFT",
        "prefill",
        flop_mode="prefill",
        detail="prompt = image + {s.preset.prompt_tokens} text tokens",
        phases=("stack_forward",),
        target=True,
    ),
    Measurement(
        "decode",
        "decode: greedy tokens with the KV cache",
        "decode",
        "decode",
        flop_mode="decode",
        detail="{s.preset.answer_tokens} tokens after the prefill",
        phases=("stack_forward",),
        compile_blocker="every step grows the KV cache, so static-shape graphs would recompile at every token",
        rate=Rate("tok/s", lambda s: s.preset.answer_tokens * s.batch),
    ),
):
    register(_spec)
