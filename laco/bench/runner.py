"""Build the variants of a preset, run every measurement interleaved, and collect the results.

Variants are placements of the compressor in the vision encoder. Each has a *baseline*: the variant whose LLM
sees the same number of visual tokens, so a speed-up isolates where the compression happens. LaCo at any
depth and the other compressors are compared with external compression (LaCo's merge after the last layer);
two-stage 16x compression is compared with external 16x (a 4x4 merge after the last layer). "No compression"
is shown against external too, but its LLM sees 4x more tokens: it says what external compression buys, not
what placement buys.

Measurements (each interleaved over all variants, round-robin, see :mod:`laco.bench.timing`):

* ``encoder``: the vision tower's forward (inference mode);
* ``train``: a stage-2 training step of the MLLM, everything trainable: forward, the loss ``laco train`` uses
  (:func:`laco.mllm.loss.answer_loss`: the LM head projects the answer tokens only), backward, AdamW step, zero grad;
* ``prefill``: time to first token: forward over image + prompt with an empty KV cache, logits of the last
  token, greedy first token;
* ``decode``: ``answer_tokens`` greedy single-token steps with the KV cache left by the prefill.

``compile=True`` times compiled models: each encoder block and LLM decoder layer runs under ``torch.compile``
(:func:`~laco.bench.models.compile_blocks`), while the compressors and hooks stay eager.

Every variant's first warm-up call runs under ``FlopCounterMode`` (FLOPs counted, plus memory), so counting
never touches a timed call.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from .. import patch as laco_patch
from ..compressors import available as available_methods
from ..cost import encoder_flops, mllm_flops, training_activation_bytes
from ..cost import image_tokens as visual_tokens
from ..mllm.loss import answer_loss
from ..placement import Placement
from .anatomy import Anatomy, measure_anatomy
from .counting import SavedTensorBytes, cuda_peak, flop_counter_mode
from .models import CompressionSwitch, build_encoder, build_mllm, compile_blocks, decoder_layers
from .presets import MEASUREMENTS, BenchPreset, load_preset
from .timing import Clock, Samples, StackTimer, Stats, paired_ratios, run_interleaved, usable_cores

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip
DEFAULT_DEPTHS: tuple[str, ...] = ("1/12", "1/6", "1/4", "1/2")
DEFAULT_METHODS: tuple[str, ...] = ("laco", "pixel_shuffle", "ldpv2", "tokenpacker", "avgpool")
DEFAULT_TWO_STAGE: tuple[str, ...] = ("1/4", "1/2")
DEFAULT_PRESET = "llava-ov-0.5b"
QUICK_PRESET = "tiny"
QUICK_OVERRIDES: dict[str, Any] = {"reps": 3, "warmup": 1}  # few rounds, whatever the preset
COMPILE_WARMUP = 2  # the first warm-up call counts FLOPs eagerly; the second compiles
RECOMPILE_LIMIT = 64  # graphs per compiled block: token counts x grad modes, far more than a preset needs
OPTIMIZER_LR = 1e-6  # tiny, so repeated steps on random weights stay finite; the cost does not depend on it


# ---------------------------------------------------------------------------------------------------------------
# Settings and variants


@dataclass
class BenchSettings:
    """Everything a run depends on; ``None`` fields take the preset's per-device defaults."""

    preset: str | BenchPreset | None = None  # None: "llava-ov-0.5b", or "tiny" with quick=True
    quick: bool = False
    device: str = "auto"
    dtype: str | None = None
    threads: int | None = None
    reps: int | None = None
    warmup: int | None = None
    llm_layers: int | None = None
    measure: Sequence[str] | None = None
    methods: Sequence[str] = DEFAULT_METHODS
    depths: Sequence[str] = DEFAULT_DEPTHS
    method_depth: str = "1/4"
    two_stage: Sequence[str] | None = DEFAULT_TWO_STAGE
    factor: int = 2
    batch: int | None = None
    seed: int = 0
    compile: bool = False
    progress: bool = True


@dataclass(frozen=True)
class BenchVariant:
    """One placement to time. ``baseline`` names the variant it is compared with (``None``: a reference)."""

    name: str
    placement: Placement
    baseline: str | None
    group: str  # "reference", "depth", "two-stage" or "method"
    same_tokens_as_baseline: bool = True

    def fraction(self, depth: int) -> float | None:
        """Where the (first) compression sits as a fraction of depth; ``None`` when uncompressed."""
        return self.placement.layers[0] / depth if self.placement.layers else None

    def to_dict(self, depth: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.placement.method if self.placement.compressed else None,
            "layers": list(self.placement.layers),
            "factor": self.placement.factor if self.placement.compressed else None,
            "options": dict(self.placement.options),
            "fraction": self.fraction(depth),
            "baseline": self.baseline,
            "group": self.group,
            "same_tokens_as_baseline": self.same_tokens_as_baseline,
        }


def _fraction_label(spec: str) -> str:
    try:
        value = Fraction(spec)
    except ValueError:
        return spec
    return str(value)


def build_variants(
    depth: int,
    *,
    depths: Sequence[str] = DEFAULT_DEPTHS,
    methods: Sequence[str] = DEFAULT_METHODS,
    method_depth: str = "1/4",
    two_stage: Sequence[str] | None = DEFAULT_TWO_STAGE,
    factor: int = 2,
) -> list[BenchVariant]:
    """The variants of one run, for an encoder of ``depth`` layers.

    No compression; external (LaCo's merge after layer ``depth``); LaCo at each of ``depths``; LaCo at the
    ``two_stage`` depths together with external ``factor**2`` compression as its baseline; every other method
    of ``methods`` at ``method_depth``. Placements that resolve to the same layers (shallow encoders) are kept
    once, under the first name.
    """
    unknown = sorted(set(methods) - set(available_methods()))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {available_methods()}.")
    variants = [
        BenchVariant("none", Placement(), "external", "reference", same_tokens_as_baseline=False),
        BenchVariant("external", Placement((depth,), "laco", factor), None, "reference"),
    ]
    if "laco" in methods:
        for spec in depths:
            variants.append(
                BenchVariant(
                    f"laco@{_fraction_label(spec)}", Placement(spec, "laco", factor).resolve(depth), "external", "depth"
                )
            )
    if two_stage:
        if len(two_stage) < 2:
            raise ValueError(f"two_stage needs at least two depths (e.g. 1/4,1/2), got {list(two_stage)}.")
        stages = Placement(list(two_stage), "laco", factor).resolve(depth)
        if max(stages.layers) == depth:
            raise ValueError(f"two-stage depths {list(two_stage)} reach the last layer; pick depths before it.")
        external = BenchVariant(
            f"external-{factor ** (2 * len(stages.layers))}x",
            Placement((depth,), "laco", factor ** len(stages.layers)),
            None,
            "reference",
        )
        variants.append(external)
        label = "+".join(_fraction_label(s) for s in two_stage)
        variants.append(BenchVariant(f"laco@{label}", stages, external.name, "two-stage"))
    for method in methods:
        if method != "laco":
            placement = Placement(method_depth, method, factor).resolve(depth)
            variants.append(BenchVariant(f"{method}@{_fraction_label(method_depth)}", placement, "external", "method"))
    unique: dict[Placement, BenchVariant] = {}
    for variant in variants:
        unique.setdefault(variant.placement, variant)
    kept = list(unique.values())
    names = {v.name for v in kept}
    for variant in kept:
        if variant.baseline is not None and variant.baseline not in names:
            raise ValueError(f"variant {variant.name} lost its baseline {variant.baseline} to a duplicate placement.")
    return kept


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Measurement:
    """One variant under one measurement: raw samples, scaled samples (reduced LLM depth), FLOPs, memory."""

    samples: Samples
    scaled_seconds: list[float]
    flops_counted: float
    flops_predicted: float
    flops_predicted_full: float
    image_tokens: int
    sequence_tokens: int | None
    memory: dict[str, Any] = field(default_factory=dict)
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


@dataclass
class BenchResult:
    """Everything one run produced; :mod:`laco.bench.report` turns it into a table, JSON and a plot."""

    preset: BenchPreset
    settings: dict[str, Any]
    machine: dict[str, Any]
    variants: list[BenchVariant]
    measurements: dict[str, dict[str, Measurement]]
    notes: list[str]
    build_seconds: float
    run_seconds: float
    anatomy: Anatomy | None = None  # the headline merge's parts, timed alone (with the encoder measurement)

    @property
    def depth(self) -> int:
        return self.preset.encoder.layers

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
        pairs = paired_ratios(_scaled_samples(base, without_optimizer), _scaled_samples(this, without_optimizer))
        if not pairs:
            measured = base.stats().median / this.stats().median
            return SpeedUp(measured, measured, measured, bound)
        spread = Stats.of(pairs)
        return SpeedUp(spread.median, spread.q1, spread.q3, bound)


def _scaled_samples(measurement: Measurement, without_optimizer: bool = False) -> Samples:
    seconds = measurement.compute_seconds if without_optimizer else measurement.scaled_seconds
    return Samples(list(seconds), {}, list(measurement.samples.rounds), list(measurement.samples.slots))


# ---------------------------------------------------------------------------------------------------------------
# Machine


def describe_machine(device: torch.device) -> dict[str, Any]:
    """CPU, cores, threads, library versions and GPU: what a reader needs to weigh the numbers."""
    import transformers

    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = usable_cores()
    info: dict[str, Any] = {
        "cpu": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "memory_gib": _memory_gib("MemTotal"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


def _memory_gib(field_name: str) -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------------------------
# Workloads


class _Inputs:
    """Fixed random pixels and token ids; image placeholders first, then prompt, then answer."""

    def __init__(self, preset: BenchPreset, batch: int, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        size = preset.resolution
        self.pixel_values = torch.randn(batch, preset.encoder.channels, size, size, generator=generator).to(
            device, dtype
        )
        self.batch, self.device = batch, device
        vocab = preset.llm.vocab if preset.llm is not None else 2
        self.image_token = vocab - 1
        text = preset.prompt_tokens + preset.answer_tokens
        self.text = torch.randint(0, vocab - 1, (batch, text), generator=generator)
        self.prompt_tokens, self.answer_tokens = preset.prompt_tokens, preset.answer_tokens

    def ids(self, image_tokens: int, with_answer: bool) -> torch.Tensor:
        text = self.text if with_answer else self.text[:, : self.prompt_tokens]
        image = torch.full((self.batch, image_tokens), self.image_token, dtype=torch.long)
        return torch.cat([image, text], dim=1).to(self.device)

    def labels(self, ids: torch.Tensor) -> torch.Tensor:
        labels = ids.clone()
        labels[:, : ids.shape[1] - self.answer_tokens] = -100  # only the answer is learned, as in LLaVA's SFT
        return labels


class _Runner:
    """State shared by the workloads of one run: model, switch, clock, inputs, optimizers."""

    def __init__(self, settings: BenchSettings) -> None:
        self.settings = settings
        default_preset = QUICK_PRESET if settings.quick else DEFAULT_PRESET
        self.preset = load_preset(settings.preset if settings.preset is not None else default_preset)
        self.device = _device(settings.device)
        device_type = self.device.type
        quick = QUICK_OVERRIDES if settings.quick else {}

        def pick(value: Any, key: str) -> Any:
            if value is not None:
                return value
            return quick[key] if key in quick else self.preset.default(device_type, key)

        dtype_name = pick(settings.dtype, "dtype")
        if dtype_name not in DTYPES:
            raise ValueError(f"unknown dtype {dtype_name!r}; choose one of {sorted(DTYPES)}.")
        self.dtype = DTYPES[dtype_name]
        if self.dtype == torch.float16 and device_type == "cpu":
            raise ValueError("float16 on CPU is emulated and meaningless for timing; use --dtype bfloat16 or float32.")
        self.reps = int(pick(settings.reps, "reps"))
        self.warmup = int(pick(settings.warmup, "warmup"))
        if settings.compile and settings.warmup is None:
            self.warmup = max(self.warmup, COMPILE_WARMUP)
        self.batch = int(pick(settings.batch, "batch"))
        if self.reps < 1 or self.batch < 1:
            raise ValueError(f"reps and batch must be >= 1 (got reps={self.reps}, batch={self.batch}).")
        if self.warmup < 1:
            raise ValueError(
                f"warmup must be >= 1 (got {self.warmup}): the first warm-up call of every variant counts its FLOPs."
            )
        self.measure = tuple(pick(settings.measure, "measure"))
        unknown = sorted(set(self.measure) - set(MEASUREMENTS))
        if unknown:
            raise ValueError(f"unknown measurement(s) {unknown}; choose from {list(MEASUREMENTS)}.")
        self.notes: list[str] = list(self.preset.notes)
        if settings.compile:
            self._check_compile(settings)
        if self.preset.llm is None and set(self.measure) - {"encoder"}:
            raise ValueError(
                f"preset {self.preset.name!r} has no LLM, so only 'encoder' can be measured (asked: {list(self.measure)}); "
                "use an MLLM preset such as llava-ov-0.5b."
            )
        llm_layers = pick(settings.llm_layers, "llm_layers")
        if self.preset.llm is not None and llm_layers is not None:
            llm_layers = int(llm_layers)
            if not 1 <= llm_layers <= self.preset.llm.layers:
                raise ValueError(
                    f"--llm-layers must lie in 1..{self.preset.llm.layers} for {self.preset.llm.name}, got {llm_layers}."
                )
            if llm_layers == self.preset.llm.layers:
                llm_layers = None
        self.llm_layers: int | None = llm_layers if self.preset.llm is not None else None
        self.threads = int(settings.threads) if settings.threads else usable_cores()
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}.")
        self.variants = build_variants(
            self.preset.encoder.layers,
            depths=settings.depths,
            methods=settings.methods,
            method_depth=settings.method_depth,
            two_stage=settings.two_stage,
            factor=settings.factor,
        )
        self.clock = Clock(self.device)

    def _check_compile(self, settings: BenchSettings) -> None:
        if not hasattr(torch.compiler, "set_stance"):
            raise ValueError(
                f"--compile needs torch >= 2.6 (for torch.compiler.set_stance); this is {torch.__version__}."
            )
        if self.warmup < COMPILE_WARMUP:
            raise ValueError(
                f"--compile needs --warmup >= {COMPILE_WARMUP} (got {self.warmup}): the first warm-up call counts FLOPs "
                "eagerly and the second compiles, which must not land in a timed round."
            )
        if "decode" in self.measure:
            if settings.measure is not None:
                raise ValueError(
                    "--compile does not time decode: every step grows the KV cache, so static-shape graphs would "
                    "recompile at every token. Leave decode out of --measure (e.g. --measure encoder,train,prefill)."
                )
            self.measure = tuple(kind for kind in self.measure if kind != "decode")
            self.notes.append("decode not timed: compiled decoding would need a static KV cache (see --compile).")

    # -- model ---------------------------------------------------------------------------------------------

    def build(self) -> None:
        torch.set_num_threads(self.threads)
        preset = self.preset
        self.inputs = _Inputs(preset, self.batch, self.device, self.dtype, self.settings.seed)
        if preset.llm is None:
            self.model = build_encoder(preset.encoder, dtype=self.dtype, device=self.device, seed=self.settings.seed)
            self.tower = self.model
        else:
            self.model = build_mllm(
                preset.encoder,
                preset.llm,
                llm_layers=self.llm_layers,
                dtype=self.dtype,
                device=self.device,
                seed=self.settings.seed,
            )
            self.tower = self.model.model.vision_tower
            self.stack = StackTimer(decoder_layers(self.model), self.clock).attach()
        self.switch = CompressionSwitch(self.tower)
        if self.settings.compile:
            blocks = list(self.switch.adapter.blocks(self.switch.encoder))
            compile_blocks(blocks + (list(decoder_layers(self.model)) if preset.llm is not None else []))
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        if "train" in self.measure:
            # Before any placement is active, so no compressor lands in the shared optimizers.
            stack_params = list(decoder_layers(self.model).parameters())
            stack_ids = {id(p) for p in stack_params}
            rest = [p for p in self.model.parameters() if id(p) not in stack_ids]
            self._optimizers = {"rest": self._optimizer(rest), "stack": self._optimizer(stack_params)}
        self._variant_optimizers: dict[Placement, torch.optim.Optimizer | None] = {}
        self._prefill_cache: dict[str, Any] = {}

    @property
    def llm_scale(self) -> float:
        if self.preset.llm is None or self.llm_layers is None:
            return 1.0
        return self.preset.llm.layers / self.llm_layers

    def image_tokens(self, variant: BenchVariant) -> int:
        self.switch.activate(variant.placement)
        if self.preset.llm is None:
            return laco_patch.num_tokens(self.tower, self.preset.resolution)
        return self.model.num_image_tokens(self.preset.resolution)

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW(params, lr=OPTIMIZER_LR, weight_decay=0.0, fused=fused)

    def optimizers(
        self, variant: BenchVariant
    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.Optimizer | None]:
        """(rest of the model, LLM decoder stack, this placement's compressors), so the stack's share of the
        optimizer step can be scaled with ``--llm-layers``."""
        if variant.placement not in self._variant_optimizers:
            params = [p for module in self.switch.activate(variant.placement) for p in module.parameters()]
            self._variant_optimizers[variant.placement] = self._optimizer(params) if params else None
        return self._optimizers["rest"], self._optimizers["stack"], self._variant_optimizers[variant.placement]

    def check_training_memory(self) -> None:
        """Refuse a training step that cannot fit, before spending minutes to find out (on a CPU the OS would
        kill the process without a Python error)."""
        params = sum(p.numel() for p in self.model.parameters())
        element = torch.tensor([], dtype=self.dtype).element_size()
        state = params * element * 4  # weights, gradients, AdamW's two moments
        preset = self.preset
        built_llm = preset.llm.with_layers(self.llm_layers) if self.llm_layers is not None else preset.llm
        activations = training_activation_bytes(  # the uncompressed variant: the largest
            preset.encoder,
            built_llm,
            None,
            element_bytes=element,
            image_size=preset.resolution,
            images=self.batch,
            prompt_tokens=preset.prompt_tokens,
            answer_tokens=preset.answer_tokens,
        )
        if self.device.type == "cuda":
            available = torch.cuda.mem_get_info(self.device)[0] + params * element
        else:
            gib = _memory_gib("MemAvailable")
            available = None if gib is None else gib * 2**30 + params * element
        if available is not None and state + activations > 0.9 * available:
            raise MemoryError(
                f"a training step of {params / 1e9:.2f}B parameters in {self.dtype} at batch {self.batch} needs "
                f"~{(state + activations) / 2**30:.1f} GiB ({state / 2**30:.1f} for weights, gradients and AdamW "
                f"state, ~{activations / 2**30:.1f} for the uncompressed model's activations), but "
                f"~{available / 2**30:.1f} GiB is available. Use a smaller --batch, time fewer LLM layers "
                "(--llm-layers), use --dtype bfloat16, or leave train out of --measure."
            )

    # -- workloads -------------------------------------------------------------------------------------------

    def workload(
        self, kind: str, variant: BenchVariant
    ) -> tuple[Callable[[], None], Callable[[], Mapping[str, float] | None]]:
        """``(prepare, call)`` for one measurement of one variant."""
        return getattr(self, f"_{kind}")(variant)

    def _encoder(self, variant: BenchVariant):
        pixel_values = self.inputs.pixel_values

        def prepare() -> None:
            self.switch.activate(variant.placement)

        def call() -> None:
            with torch.inference_mode():
                self.tower(pixel_values=pixel_values)

        return prepare, call

    def _train(self, variant: BenchVariant):
        ids = self.inputs.ids(self.image_tokens(variant), with_answer=True)
        batch = {"input_ids": ids, "pixel_values": self.inputs.pixel_values, "labels": self.inputs.labels(ids)}
        model, clock, stack = self.model, self.clock, self.stack

        def prepare() -> None:
            self.switch.activate(variant.placement)

        def call() -> dict[str, float]:
            rest, stack_optimizer, own = self.optimizers(variant)
            stack.reset()
            t0 = clock.mark()
            loss, _ = answer_loss(model, batch)
            t1 = clock.mark()
            loss.backward()
            t2 = clock.mark()
            rest.step()
            if own is not None:
                own.step()
            t3 = clock.mark()
            stack_optimizer.step()
            t4 = clock.mark()
            model.zero_grad(set_to_none=True)
            t5 = clock.mark()
            return {
                "forward": clock.seconds(t0, t1),
                "backward": clock.seconds(t1, t2),
                "optimizer": clock.seconds(t2, t5),
                "stack_forward": stack.forward_seconds(),
                "stack_backward": stack.backward_seconds(),
                "stack_optimizer": clock.seconds(t3, t4),
            }

        return prepare, call

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config.text_config)

    def _prefill_once(self, variant: BenchVariant):
        ids = self.inputs.ids(self.image_tokens(variant), with_answer=False)
        cache = self._new_cache()
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, pixel_values=self.inputs.pixel_values, cache=cache, use_cache=True, logits_to_keep=1
            )
        return out.logits[:, -1:].argmax(-1), cache

    def _prefill(self, variant: BenchVariant):
        ids = self.inputs.ids(self.image_tokens(variant), with_answer=False)
        state: dict[str, Any] = {}

        def prepare() -> None:
            self.switch.activate(variant.placement)
            state["cache"] = self._new_cache()

        def call() -> dict[str, float]:
            self.stack.reset()
            with torch.inference_mode():
                out = self.model(
                    input_ids=ids,
                    pixel_values=self.inputs.pixel_values,
                    cache=state["cache"],
                    use_cache=True,
                    logits_to_keep=1,
                )
                out.logits[:, -1:].argmax(-1)
            return {"stack_forward": self.stack.forward_seconds()}

        return prepare, call

    def _decode(self, variant: BenchVariant):
        steps = self.inputs.answer_tokens
        state: dict[str, Any] = {}

        def prepare() -> None:
            self.switch.activate(variant.placement)
            if variant.name not in self._prefill_cache:
                self._prefill_cache[variant.name] = self._prefill_once(variant)
            token, cache = self._prefill_cache[variant.name]
            state["token"], state["cache"] = token, copy.deepcopy(cache)  # every round decodes from the same prefix

        def call() -> dict[str, float]:
            self.stack.reset()
            token, cache = state["token"], state["cache"]
            with torch.inference_mode():
                for _ in range(steps):
                    out = self.model(input_ids=token, cache=cache, use_cache=True)
                    token = out.logits[:, -1:].argmax(-1)
            return {"stack_forward": self.stack.forward_seconds()}

        return prepare, call

    def anatomy(self) -> Anatomy | None:
        """The parts of the headline one-stage LaCo placement (see :mod:`laco.bench.anatomy`), if it was run."""
        candidates = [v for v in self.variants if v.group == "depth" and len(v.placement.layers) == 1]
        if not candidates:
            return None
        wanted = f"laco@{_fraction_label(self.settings.method_depth)}"
        variant = next((v for v in candidates if v.name == wanted), candidates[0])
        encoder = self.preset.encoder
        return measure_anatomy(
            self.switch,
            variant.placement,
            variant.name,
            grid=encoder.grid(self.preset.resolution),
            prefix=encoder.prefix,
            width=encoder.width,
            batch=self.batch,
            dtype=self.dtype,
            device=self.device,
            reps=self.reps,
            warmup=self.warmup,
            clock=self.clock,
        )

    # -- counting ---------------------------------------------------------------------------------------------

    def counted_call(self, kind: str, prepare, call) -> tuple[float, dict[str, Any]]:
        """Run one untimed call under ``FlopCounterMode`` (and a memory probe); returns (FLOPs, memory)."""
        prepare()
        # Compiled or not, the model computes the same thing; counting it eagerly keeps the memory probe's
        # saved-tensor hooks out of Dynamo, and the first compile out of this call.
        with torch.compiler.set_stance("force_eager") if self.settings.compile else contextlib.nullcontext():
            return self._count(kind, call)

    def _count(self, kind: str, call) -> tuple[float, dict[str, Any]]:
        memory: dict[str, Any] = {}
        counter = flop_counter_mode()
        if self.device.type == "cuda":
            with cuda_peak(self.device) as peak, counter:
                call()
            memory = {"kind": "cuda_peak_allocated", **peak, "step_bytes": peak["peak_bytes"] - peak["baseline_bytes"]}
        elif kind == "train":
            saved = SavedTensorBytes.excluding(self.model.parameters())
            with saved.counting(), counter:
                call()
            memory = {"kind": "saved_for_backward", "bytes": saved.bytes}
        else:
            with counter:
                call()
        return float(counter.get_total_flops()), memory

    def predicted(self, kind: str, variant: BenchVariant, full: bool) -> tuple[float, int, int | None]:
        """Analytic FLOPs of ``kind`` for ``variant`` (as built, or at the LLM's full depth) and token counts."""
        preset = self.preset
        llm = preset.llm
        if llm is not None and not full and self.llm_layers is not None:
            llm = llm.with_layers(self.llm_layers)
        if llm is None:
            cost = encoder_flops(preset.encoder, variant.placement, image_size=preset.resolution, images=self.batch)
            return cost.total, visual_tokens(cost, preset.encoder, drop_prefix=False), None
        cost = mllm_flops(
            preset.encoder,
            llm,
            variant.placement,
            mode=kind,
            image_size=preset.resolution,
            images=self.batch,
            prompt_tokens=preset.prompt_tokens,
            answer_tokens=preset.answer_tokens,
        )
        return cost.total, int(cost.info["image_tokens"]), cost.info.get("sequence_tokens")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name} asked for CUDA, but torch {torch.__version__} sees no GPU; use --device cpu."
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}.")
    return device


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process, wall time), from ``/proc`` (Linux)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        with open("/proc/self/stat") as handle:
            own = handle.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, AttributeError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / ticks, (int(own[11]) + int(own[12])) / ticks, time.perf_counter()


def _other_processes_cores(before, after) -> float | None:
    """Average number of cores that processes other than this one kept busy between two snapshots."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / (after[2] - before[2]))


# ---------------------------------------------------------------------------------------------------------------
# The run


def run(settings: BenchSettings) -> BenchResult:
    """Run one benchmark as ``settings`` say and return its results (no files written; see :mod:`report`)."""
    runner = _Runner(settings)
    cpu_before = _cpu_snapshot()
    started = time.perf_counter()
    runner.build()
    build_seconds = time.perf_counter() - started
    if "train" in runner.measure:
        runner.check_training_memory()
    # Progress counts predicted GFLOPs, not calls: a training step of the uncompressed model costs 30 encoder
    # calls of a compressed one, so a per-call bar would give a useless time estimate.
    gflops = {
        (kind, variant.name): runner.predicted(kind, variant, full=False)[0] / 1e9
        for kind in runner.measure
        for variant in runner.variants
    }
    progress = _progress(sum(gflops.values()) * (runner.warmup + runner.reps), settings.progress)
    run_started = time.perf_counter()
    try:
        with _recompile_limit(RECOMPILE_LIMIT) if settings.compile else contextlib.nullcontext():
            measurements, anatomy = _measure_all(runner, gflops, progress)
    finally:
        progress.close()
    notes = list(runner.notes)
    if runner.llm_layers is not None and set(runner.measure) - {"encoder"}:
        notes.append(
            f"LLM timed with {runner.llm_layers} of {runner.preset.llm.layers} decoder layers; the decoder stack's time "
            f"(measured by hooks: forward, and in training backward and its share of the optimizer step) is scaled by "
            f"{runner.llm_scale:g}; embedding, lm_head, projector and vision tower are timed at full size, not scaled."
        )
    if settings.compile:
        notes.append(
            "compiled: every encoder block and LLM decoder layer ran under torch.compile (inductor, static shapes, "
            "one graph per token count); compressors, hooks, patch embedding, projector, embeddings and lm_head ran "
            "eager. FLOPs and memory come from an eager call of the same model."
        )
    notes.append(
        f"warm-up: {runner.warmup} call(s) per variant and measurement, the first under FlopCounterMode; "
        f"{runner.reps} timed round(s), round-robin over variants with a rotating start."
    )
    if runner.device.type == "cpu":
        notes.append(
            "memory on CPU: bytes of tensors saved for backward in a training step (activations, parameters excluded); "
            "no figure for inference."
        )
    result_settings = {
        "preset": runner.preset.name,
        "quick": settings.quick,
        "device": str(runner.device),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "threads": runner.threads,
        "reps": runner.reps,
        "warmup": runner.warmup,
        "batch": runner.batch,
        "llm_layers": runner.llm_layers,
        "llm_layers_full": runner.preset.llm.layers if runner.preset.llm else None,
        "measure": list(runner.measure),
        "methods": list(settings.methods),
        "depths": list(settings.depths),
        "method_depth": settings.method_depth,
        "two_stage": list(settings.two_stage) if settings.two_stage else None,
        "factor": settings.factor,
        "image_size": runner.preset.resolution,
        "prompt_tokens": runner.preset.prompt_tokens,
        "answer_tokens": runner.preset.answer_tokens,
        "seed": settings.seed,
        "compile": settings.compile,
        "optimizer": f"AdamW(lr={OPTIMIZER_LR}, fused)",
    }
    machine = describe_machine(runner.device)
    # Other processes are the main source of noise on a CPU: record how many cores they kept busy meanwhile.
    others = _other_processes_cores(cpu_before, _cpu_snapshot())
    machine["other_processes_cores"] = None if others is None else round(others, 2)
    if others is not None and others >= 0.25:
        notes.append(
            f"other processes kept {others:.2f} of {machine['logical_cores']} cores busy on average during the run: "
            "expect noisy timings (rerun on a quiet machine for figures to publish)."
        )
    return BenchResult(
        preset=runner.preset,
        settings=result_settings,
        machine=machine,
        variants=runner.variants,
        measurements=measurements,
        notes=notes,
        build_seconds=build_seconds,
        run_seconds=time.perf_counter() - run_started,
        anatomy=anatomy,
    )


def _measure_all(
    runner: _Runner, gflops: dict[tuple[str, str], float], progress
) -> tuple[dict[str, dict[str, Measurement]], Anatomy | None]:
    """Every measurement of every variant (FLOPs counted first, then timed interleaved), and the anatomy."""
    measurements: dict[str, dict[str, Measurement]] = {}
    for kind in runner.measure:
        progress.set_description(kind)
        if kind == "train":
            runner.model.train()
        else:
            runner.model.eval()
        prepares, calls, counted = {}, {}, {}
        for variant in runner.variants:
            prepare, call = runner.workload(kind, variant)
            prepares[variant.name], calls[variant.name] = prepare, call
            counted[variant.name] = runner.counted_call(kind, prepare, call)
            progress.update(gflops[kind, variant.name])
        samples = run_interleaved(
            calls,
            reps=runner.reps,
            warmup=runner.warmup - 1,
            clock=runner.clock,
            prepare=prepares,
            on_call=lambda name, timed, kind=kind: progress.update(gflops[kind, name]),
        )
        measurements[kind] = {}
        for variant in runner.variants:
            flops, memory = counted[variant.name]
            predicted, image_tokens, sequence = runner.predicted(kind, variant, full=False)
            predicted_full, _, _ = runner.predicted(kind, variant, full=True)
            actual_tokens = runner.image_tokens(variant)
            if actual_tokens != image_tokens:
                raise RuntimeError(
                    f"{variant.name}: the model feeds {actual_tokens} visual tokens to the LLM but the cost model "
                    f"predicts {image_tokens}; laco.cost and the model disagree (a bug to report)."
                )
            measurements[kind][variant.name] = Measurement(
                samples=samples[variant.name],
                scaled_seconds=_scale(samples[variant.name], kind, runner.llm_scale),
                flops_counted=flops,
                flops_predicted=predicted,
                flops_predicted_full=predicted_full,
                image_tokens=image_tokens,
                sequence_tokens=sequence,
                memory=memory,
                optimizer_seconds=_scale_phase(samples[variant.name], "optimizer", "stack_optimizer", runner.llm_scale),
            )
        runner.model.zero_grad(set_to_none=True)
    anatomy = runner.anatomy() if "encoder" in runner.measure else None
    return measurements, anatomy


@contextlib.contextmanager
def _recompile_limit(limit: int):
    """Let each compiled block keep a graph per token count (Dynamo's default of 8 would fall back to eager)."""
    import torch._dynamo

    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{name: limit}):
        yield


def _with_stack_scaled(values: list[float], samples: Samples, stack_phases: Sequence[str], scale: float) -> list[float]:
    """``values`` plus the decoder stack's share of them (the sum of ``stack_phases``) times ``scale - 1``: the
    time of the full depth from a run that timed fewer LLM layers."""
    stack = [0.0] * len(values)
    for phase in stack_phases:
        for index, value in enumerate(samples.phases.get(phase, [])[: len(values)]):
            stack[index] += value
    return [value + (scale - 1.0) * extra for value, extra in zip(values, stack)]


def _scale(samples: Samples, kind: str, scale: float) -> list[float]:
    """Wall seconds with the LLM decoder stack's time scaled from the timed to the full number of layers."""
    if scale == 1.0 or kind == "encoder":
        return list(samples.seconds)
    return _with_stack_scaled(samples.seconds, samples, ("stack_forward", "stack_backward", "stack_optimizer"), scale)


def _scale_phase(samples: Samples, phase: str, stack_phase: str, scale: float) -> list[float]:
    """One phase's seconds with its decoder-stack part scaled to the full depth; ``[]`` if it was not timed."""
    return _with_stack_scaled(samples.phases.get(phase, []), samples, (stack_phase,), scale)


class _NoProgress:
    def update(self, n: float = 1) -> None: ...
    def set_description(self, text: str) -> None: ...
    def close(self) -> None: ...


def _progress(total_gflops: float, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(
        total=round(total_gflops, 1),
        unit="GFLOP",
        dynamic_ncols=True,
        leave=False,
        bar_format="{desc}{percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} GFLOP [{elapsed}<{remaining}]",
    )
