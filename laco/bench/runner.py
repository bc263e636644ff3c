"""Run one batched benchmark: resolve the settings, build the variants and the model, take every measurement.

Each measurement is interleaved over all variants (:mod:`laco.measure.timing`). Every variant's first warm-up
call runs under ``FlopCounterMode`` (FLOPs and memory), so counting never touches a timed call, and its FLOPs
and visual tokens are checked against the cost model's. ``compile=True`` compiles each encoder block and LLM
decoder layer (:func:`~laco.bench.models.compile_blocks`); the compressors and hooks stay eager.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..measure.flop_counting import count_call
from ..measure.machine import BUSY_CORES_WARNING, Machine, RunStart
from ..measure.timing import Samples, run_interleaved
from ..placement import Placement
from . import report
from .anatomy import Anatomy, measure_anatomy
from .measurements import OPTIMIZER_PHASE, Measurement, measurement
from .presets import BenchPreset
from .results import Result, Row, check_tokens, scale_phase, scale_seconds
from .settings import BenchSettings, ResolvedSettings, parse_options, resolve
from .testbed import Testbed
from .variants import BenchVariant, build_variants, fraction_label, headline_variant

RECOMPILE_LIMIT = 64  # graphs per compiled block: token counts x grad modes, far more than a preset needs


def run_benchmark(
    preset: str | BenchPreset | None = None,
    *,
    settings: BenchSettings | None = None,
    out: str | Path | None = None,
    plot: bool = True,
    progress: bool = True,
    echo: bool = True,
    **options: Any,
) -> Result:
    """Run a benchmark, print its tables and summary (``echo``), and write ``bench.json`` and ``bench.png`` to ``out``.

    ``options`` are the fields of :class:`BenchSettings` (or pass ``settings`` whole); ``None`` ones take the
    preset's per-device defaults (see :mod:`laco.bench.presets`). ``quick`` selects the tiny preset (unless
    ``preset`` is given), 3 rounds and 1 thread: seconds, for CI. ``compile`` times compiled models (each encoder
    block and LLM decoder layer under ``torch.compile``; decode is left out).
    """
    if settings is None:
        settings = BenchSettings(preset=preset, **options)
    elif preset is not None or options:
        raise TypeError("run_benchmark takes either settings=BenchSettings(...) or its fields, not both.")
    result = run(settings, progress=progress)
    data = result.to_dict()
    files = report.write_run(data, out, plot=plot) if out is not None else {}
    if echo:
        for kind in result.rows:
            print(report.format_table(result, kind))
            print()
        print(report.format_summary(result, files, data["provenance"]))
    return result


def run(settings: BenchSettings | ResolvedSettings, progress: bool = True) -> Result:
    """Run one benchmark as ``settings`` say and return its results (no files written; see :mod:`report`)."""
    resolved = settings if isinstance(settings, ResolvedSettings) else resolve(settings)
    requested = resolved.requested
    chosen = {key: getattr(requested, key) for key in ("depths", "methods", "method_depth", "two_stage", "factor")}
    variants = build_variants(
        resolved.preset.encoder.layers, method_options=parse_options(requested.method_options), **chosen
    )
    start = RunStart()
    started = time.perf_counter()
    bench = Testbed(resolved)
    build_seconds = time.perf_counter() - started
    if any(spec.training for spec in resolved.measurements):
        bench.check_training_memory()
    # Progress counts predicted GFLOPs, not calls: a training step of the uncompressed model costs many encoder
    # calls of a compressed one, so a per-call bar would give a useless time estimate.
    gflops = {
        (spec.name, variant.name): resolved.predict(spec.flop_mode, variant.placement, full=False).flops / 1e9
        for spec in resolved.measurements
        for variant in variants
    }
    bar = _progress(sum(gflops.values()) * (resolved.warmup + resolved.reps), progress)
    run_started = time.perf_counter()
    measurements: dict[str, dict[str, Row]] = {}
    anatomy = None
    try:
        with _recompile_limit(RECOMPILE_LIMIT) if requested.compile else contextlib.nullcontext():
            for spec in resolved.measurements:
                bar.set_description(spec.name)
                done = lambda name, kind=spec.name: bar.update(gflops[kind, name])  # noqa: E731
                measurements[spec.name] = _measure(bench, spec, variants, done)
            if any(spec.anatomy for spec in resolved.measurements):
                anatomy = _anatomy(bench, variants)
    finally:
        bar.close()
    machine, run_seconds = start.machine(resolved.device), time.perf_counter() - run_started
    payload = {"bound_curves": {spec.name: bound_curve(resolved, spec) for spec in resolved.measurements}}
    payload.update(anatomy=anatomy, build_seconds=build_seconds, run_seconds=run_seconds)
    return batched_result(resolved, machine, variants, measurements, payload, _notes(resolved, machine), start)


def batched_result(
    settings: ResolvedSettings,
    machine: Machine,
    variants: list[BenchVariant],
    rows: dict[str, dict[str, Row]],
    payload: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    start: RunStart | None = None,
) -> Result:
    """A batched run's :class:`Result`: speed-ups also without the AdamW step (``compute``)."""
    titles = {kind: measurement(kind).short for kind in rows}
    return Result(
        "batched", settings.preset, variants, settings, machine, rows, titles,
        headline_variant((v.name, v.group) for v in variants), {"compute": "without_optimizer"},
        {"image_size": settings.preset.resolution}, payload or {}, notes or [], start or RunStart(),
    )  # fmt: skip


def bound_curve(settings: ResolvedSettings, spec: Measurement) -> list[list[float]]:
    """``[fraction, FLOP-bound speed-up]`` of LaCo after every layer k = 1..L over external compression."""
    factor, depth = settings.requested.factor, settings.preset.encoder.layers

    def flops(layer: int) -> float:
        return settings.predict(spec.flop_mode, Placement((layer,), "laco", factor), full=True).flops

    external = flops(depth)
    return [[layer / depth, external / flops(layer)] for layer in range(1, depth + 1)]


def _measure(bench: Testbed, spec: Measurement, variants: Sequence[BenchVariant], done) -> dict[str, Row]:
    """One measurement of every variant: FLOPs counted first, then timed interleaved. ``done(name)`` after
    every call (progress)."""
    settings = bench.settings
    bench.model.train(spec.training)
    prepares, calls, counted = {}, {}, {}
    for variant in variants:
        prepare, call = bench.workload(spec, variant)
        prepares[variant.name], calls[variant.name] = prepare, call
        prepare()
        # Compiled or not, the model computes the same thing; counting it eagerly keeps the memory probe's
        # saved-tensor hooks out of Dynamo, and the first compile out of this call.
        eager = torch.compiler.set_stance("force_eager") if settings.requested.compile else contextlib.nullcontext()
        with eager:
            counted[variant.name] = count_call(
                call, device=bench.device, training=spec.training, parameters=bench.model.parameters()
            )
        done(variant.name)
    samples = run_interleaved(
        calls,
        reps=settings.reps,
        warmup=settings.warmup - 1,
        clock=bench.clock,
        prepare=prepares,
        on_call=lambda name, timed: done(name),
    )
    rows = {}
    for variant in variants:
        flops, memory = counted[variant.name]
        predicted = settings.predict(spec.flop_mode, variant.placement, full=False)
        check_tokens(variant.name, bench.image_tokens(variant), predicted.image_tokens)
        full = settings.predict(spec.flop_mode, variant.placement, full=True).flops
        facts = {"flops_counted": flops, "flops_predicted": predicted.flops, "memory": memory}
        facts["sequence_tokens"] = predicted.sequence_tokens
        rows[variant.name] = Row(
            _scaled(samples[variant.name], spec, settings.llm_scale), full, predicted.image_tokens, facts
        )
    bench.model.zero_grad(set_to_none=True)
    return rows


def _scaled(samples: Samples, spec: Measurement, scale: float) -> Samples:
    """The seconds scaled to the full LLM depth; the phases keep the wall ``seconds`` as timed and, in training,
    the AdamW step scaled like them (``optimizer_scaled``) and the rest of the step (``compute``)."""
    seconds, optimizer = scale_seconds(samples, spec, scale), scale_phase(samples, OPTIMIZER_PHASE, scale)
    phases = {**samples.phases, "wall": list(samples.seconds)}
    if optimizer:
        phases.update(optimizer_scaled=optimizer, compute=[t - o for t, o in zip(seconds, optimizer)])
    return samples.with_seconds(seconds, phases)


def _anatomy(bench: Testbed, variants: Sequence[BenchVariant]) -> Anatomy | None:
    """The parts of the headline one-stage LaCo placement (see :mod:`laco.bench.anatomy`), if it was run."""
    candidates = [v for v in variants if v.group == "depth" and len(v.placement.layers) == 1]
    if not candidates:
        return None
    settings = bench.settings
    wanted = f"laco@{fraction_label(settings.requested.method_depth)}"
    variant = next((v for v in candidates if v.name == wanted), candidates[0])
    timing = {"reps": settings.reps, "warmup": settings.warmup, "clock": bench.clock}
    size = settings.preset.resolution
    return measure_anatomy(
        bench.switch, variant.placement, variant.name, batch=settings.batch, image_size=size, **timing
    )


def _notes(settings: ResolvedSettings, machine: Machine) -> list[str]:
    """The caveats printed with the results and kept in ``bench.json``."""
    notes = list(settings.notes)
    if settings.llm_layers is not None and any(spec.needs_llm for spec in settings.measurements):
        notes.append(
            f"LLM timed with {settings.llm_layers} of {settings.llm_layers_full} decoder layers; the decoder stack's "
            f"time (measured by hooks: forward, and in training backward and its share of the optimizer step) is "
            f"scaled by {settings.llm_scale:g}; embedding, lm_head, projector and vision tower are timed at full "
            "size, not scaled."
        )
    if settings.requested.compile:
        notes.append(
            "compiled: every encoder block and LLM decoder layer ran under torch.compile (inductor, static shapes, "
            "one graph per token count); compressors, hooks, patch embedding, projector, embeddings and lm_head ran "
            "eager. FLOPs and memory come from an eager call of the same model."
        )
    notes.append(
        f"warm-up: {settings.warmup} call(s) per variant and measurement, the first under FlopCounterMode; "
        f"{settings.reps} timed round(s), round-robin over variants with a rotating start."
    )
    if settings.device.type == "cpu":
        notes.append(
            "memory on CPU: bytes of tensors saved for backward in a training step (activations, parameters excluded); "
            "no figure for inference."
        )
    others = machine.other_processes_cores
    if others is not None and others >= BUSY_CORES_WARNING:
        notes.append(
            f"other processes kept {others:.2f} of {machine.logical_cores} cores busy on average during the run: "
            "expect noisy timings (rerun on a quiet machine for figures to publish)."
        )
    return notes


@contextlib.contextmanager
def _recompile_limit(limit: int):
    """Let each compiled block keep a graph per token count (Dynamo's default of 8 would fall back to eager)."""
    import torch._dynamo

    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{name: limit}):
        yield


def _progress(total_gflops: float, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=round(total_gflops, 1),
        unit="GFLOP",
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
        bar_format="{desc}{percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} GFLOP [{elapsed}<{remaining}]",
    )
