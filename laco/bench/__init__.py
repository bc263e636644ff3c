"""``laco bench``: time LaCo's in-encoder compression against external compression at real model geometries.

Random-weight models at the geometries of public models (nothing is downloaded); every measurement interleaves
all placements, reports medians and spreads, and sets the speed-ups against the FLOP bound of :mod:`laco.cost`.

>>> from laco.bench import run_benchmark
>>> result = run_benchmark(quick=True, out="runs/bench-quick")          # tiny geometry, seconds

Three engines, batched (:mod:`~laco.bench.runner`), packed Qwen-VL towers (:mod:`~laco.bench.native`) and vLLM
serving (:mod:`~laco.bench.serving`), share the presets, options, variants, timing, result schema
(:mod:`~laco.bench.schema`), report, plot and ``--compare``; :mod:`~laco.bench.cli` is ``laco bench``.
"""

from ..measure.timing import Clock, Samples, SpeedUp, Stats, run_interleaved
from .cli import main
from .measurements import MEASUREMENTS, Measurement, register
from .presets import PRESETS, BenchPreset, load_preset
from .results import Result, Row
from .runner import run, run_benchmark
from .schema import SCHEMA
from .settings import BenchSettings, ResolvedSettings, resolve
from .variants import BenchVariant, build_variants

__all__ = [
    "MEASUREMENTS",
    "PRESETS",
    "SCHEMA",
    "BenchPreset",
    "BenchSettings",
    "BenchVariant",
    "Clock",
    "Measurement",
    "ResolvedSettings",
    "Result",
    "Row",
    "Samples",
    "SpeedUp",
    "Stats",
    "build_variants",
    "load_preset",
    "main",
    "register",
    "resolve",
    "run",
    "run_benchmark",
    "run_interleaved",
]
