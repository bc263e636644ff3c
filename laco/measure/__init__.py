"""Measuring on shared, noisy machines: interleaved timing with warm-up and medians (:mod:`.timing`), FLOPs counted
by torch's dispatcher (:mod:`.flop_counting`), and what the machine was (:mod:`.machine`: CPU model, usable cores,
load, commit). The benchmark, the study and run records use them; they import no other laco module."""

from .flop_counting import flop_counter_mode
from .machine import CpuLoad, Machine, RunStart, checkout_commit
from .timing import Clock, Samples, Stats, run_interleaved, usable_cores

__all__ = [
    "Clock",
    "CpuLoad",
    "Machine",
    "RunStart",
    "Samples",
    "Stats",
    "checkout_commit",
    "flop_counter_mode",
    "run_interleaved",
    "usable_cores",
]
