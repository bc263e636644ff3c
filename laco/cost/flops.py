"""Analytic FLOP model of a LLaVA-style MLLM whose vision encoder may be compressed at any depth.

Why a cost model next to the benchmark: wall-clock speed-ups depend on the machine, the kernels and the noise of
the moment; FLOPs do not. The FLOP ratio between two placements is the speed-up a purely compute-bound machine
would reach, so ``measured / predicted`` says how much of the theoretical gain a run actually collected.

Counting convention (the one ``torch.utils.flop_counter.FlopCounterMode`` uses, so the two can be compared):

* a multiply-add is 2 FLOPs; only matrix products and convolutions are counted (norms, activations, softmax,
  residual adds and the embedding lookup are free);
* vision encoder layer on ``N`` tokens of width ``C`` with MLP width ``I``: ``2N(4C^2 + 2CI)`` for the
  projections and a GELU MLP (``3CI`` instead of ``2CI`` for SwiGLU), plus ``4N^2 C`` for attention scores and
  mixing; the patch embedding is ``2 N_grid (channels * patch^2) C``;
* the compressor costs what its own :meth:`laco.compressors.TokenCompressor.flops` says (it includes the few
  element-wise FLOPs of average pooling, which ``FlopCounterMode`` does not see: a rounding error);
* projector (LLaVA's 2-layer MLP): ``2 N_img (C_vision C_llm + C_llm^2)``;
* LLM layer on ``n`` new tokens that attend to ``n_ctx`` cached + new tokens, GQA-aware:
  ``2n(2 C d_q + 2 C d_kv) + 2n * 3 C I`` (SwiGLU) ``+ 4 n n_ctx d_q``, with ``d_q = heads * head_dim`` and
  ``d_kv = kv_heads * head_dim``; causal masking is *not* discounted (neither does ``FlopCounterMode``);
* ``lm_head``: ``2 C V`` per token whose logits are computed: the answer tokens when training (the loss projects
  only labelled positions), the last prompt token for the prefill (as ``generate`` does with
  ``logits_to_keep=1``) and one per decoded token;
* training = 3 x forward (backward computes a gradient for the input and one for the weight of every product),
  with two exceptions that ``FlopCounterMode`` and real kernels share: the patch embedding is 2 x forward (pixels
  need no gradient) and attention scores/mixing are 3.5 x forward (FlashAttention-style backward recomputes the
  scores: 5 products against 2). The optimizer step (element-wise, memory-bound) is not counted.

Everything here is arithmetic on geometry; the only use of torch is to build compressors on the ``meta`` device
(no memory, no initialisation) so their own ``.flops``/``.output_size`` are the single source of truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from ..functional import GridSize
from ..placement import LayerSpec, Placement, as_placement
from .geometry import EncoderGeometry, LLMGeometry, MlpKind

Mode = Literal["encoder", "train", "prefill", "decode"]
MODES: tuple[str, ...] = ("encoder", "train", "prefill", "decode")

TRAIN_MULTIPLIER = 3.0
"""Forward + backward of a matrix product: forward, gradient w.r.t. the input, gradient w.r.t. the weight."""
ATTENTION_TRAIN_MULTIPLIER = 3.5
"""Attention scores/mixing: 2 forward products, 5 backward ones (scores recomputed), as FlopCounterMode counts."""
INPUT_LAYER_TRAIN_MULTIPLIER = 2.0
"""Patch embedding: no gradient w.r.t. the pixels, only w.r.t. its weight."""


# ---------------------------------------------------------------------------------------------------------------
# Geometries


# Public configs, as listed in docs/geometries.md.


# ---------------------------------------------------------------------------------------------------------------
# Placements

PlacementLike = Placement | LayerSpec | Sequence[LayerSpec] | None


def _placement(
    spec: PlacementLike, depth: int, method: str, factor: int, options: Mapping[str, Any] | None
) -> Placement:
    """``spec`` (a :class:`~laco.placement.Placement` or a layer spec with the other fields) resolved to ``depth``."""
    return as_placement(spec, method, factor, options).resolve(depth)


@lru_cache(maxsize=512)
def _compressor_cost(
    method: str, dim: int, factor: int, options: tuple, grid: GridSize, images: int
) -> tuple[int, GridSize]:
    import torch

    from ..compressors import build

    with torch.device("meta"):  # shapes only: no allocation, no random init
        compressor = build(method, dim, factor, **dict(options))
    return compressor.flops(grid, batch=images), compressor.output_size(grid)


def compressor_flops(
    method: str, dim: int, grid: GridSize, factor: int = 2, options: Mapping[str, Any] | None = None, images: int = 1
) -> int:
    """Forward FLOPs of one compressor on ``images`` grids, from the compressor's own ``.flops``."""
    return _compressor_cost(method, dim, factor, tuple(sorted((options or {}).items())), tuple(grid), images)[0]


# ---------------------------------------------------------------------------------------------------------------
# FLOP breakdowns


@dataclass
class Cost:
    """A FLOP breakdown by part (``"encoder.layers"``, ``"llm.attention"``, ...), plus the token counts behind it."""

    parts: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    def add(self, part: str, flops: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + float(flops)

    def merge(self, other: "Cost") -> "Cost":
        for part, flops in other.parts.items():
            self.add(part, flops)
        self.info.update(other.info)
        return self

    def scaled(self, factor: float) -> "Cost":
        return Cost({part: flops * factor for part, flops in self.parts.items()}, dict(self.info))

    def training(self) -> "Cost":
        """The cost of forward + backward of the same computation (see the module docstring for the factors)."""
        parts = {}
        for part, flops in self.parts.items():
            if part.endswith(".attention"):
                parts[part] = flops * ATTENTION_TRAIN_MULTIPLIER
            elif part == "encoder.patch_embed":
                parts[part] = flops * INPUT_LAYER_TRAIN_MULTIPLIER
            else:
                parts[part] = flops * TRAIN_MULTIPLIER
        return Cost(parts, dict(self.info))


def encoder_layer_flops(tokens: int, width: int, mlp: int, mlp_kind: MlpKind = "gelu") -> tuple[float, float]:
    """``(projections + MLP, attention)`` forward FLOPs of one encoder layer on ``tokens`` tokens (per image)."""
    mlp_products = 3 if mlp_kind == "swiglu" else 2
    dense = 2 * tokens * (4 * width * width + mlp_products * width * mlp)
    attention = 4 * tokens * tokens * width
    return float(dense), float(attention)


def encoder_flops(
    geometry: EncoderGeometry,
    layers: PlacementLike = None,
    *,
    image_size: int | Sequence[int] | None = None,
    factor: int = 2,
    method: str = "laco",
    options: Mapping[str, Any] | None = None,
    images: int = 1,
) -> Cost:
    """Forward FLOPs of the vision encoder on ``images`` images, compressed after ``layers``.

    ``layers`` is a :class:`Placement` or a layer spec (``None`` = no compression, ``"last"``, ``7``, ``"1/4"``,
    ``[7, 14]``). ``info`` holds ``tokens_per_layer`` (tokens entering each layer, prefix included),
    ``output_grid`` and ``output_tokens`` (per image, prefix included).
    """
    place = _placement(layers, geometry.layers, method, factor, options)
    grid = geometry.grid(image_size)
    cost = Cost()
    cost.add(
        "encoder.patch_embed", images * 2 * grid[0] * grid[1] * geometry.channels * geometry.patch**2 * geometry.width
    )
    stages = set(place.layers)
    tokens_per_layer = []
    for layer in range(1, geometry.layers + 1):
        tokens = grid[0] * grid[1] + geometry.prefix
        tokens_per_layer.append(tokens)
        dense, attention = encoder_layer_flops(tokens, geometry.width, geometry.mlp, geometry.mlp_kind)
        cost.add("encoder.layers", images * dense)
        cost.add("encoder.attention", images * attention)
        if layer in stages:
            flops, grid = _compressor_cost(place.method, geometry.width, place.factor, place.options, grid, images)
            cost.add("encoder.compressor", flops)
    cost.info.update(
        tokens_per_layer=tuple(tokens_per_layer),
        output_grid=grid,
        output_tokens=grid[0] * grid[1] + geometry.prefix,
        placement=place,
    )
    return cost


def llm_flops(geometry: LLMGeometry, new_tokens: int, context: int | None = None, logits: int | None = None) -> Cost:
    """Forward FLOPs of the LLM for ``new_tokens`` tokens that attend to ``context`` tokens (cache + new;
    default ``new_tokens``), with ``logits`` tokens through ``lm_head`` (default: all new tokens)."""
    context = new_tokens if context is None else context
    logits = new_tokens if logits is None else logits
    g = geometry
    mlp_products = 3 if g.mlp_kind == "swiglu" else 2
    projections = 2 * new_tokens * (2 * g.width * g.q_width + 2 * g.width * g.kv_width)
    mlp = 2 * new_tokens * mlp_products * g.width * g.mlp
    cost = Cost()
    cost.add("llm.layers", g.layers * (projections + mlp))
    cost.add("llm.attention", g.layers * 4 * new_tokens * context * g.q_width)
    cost.add("llm.lm_head", 2 * logits * g.width * g.vocab)
    return cost


def image_tokens(encoder_cost: Cost, geometry: EncoderGeometry, drop_prefix: bool | None = None) -> int:
    """Visual tokens one image puts into the LLM; LLaVA's ``default`` strategy drops a single CLS token."""
    drop = geometry.prefix == 1 if drop_prefix is None else drop_prefix
    return int(encoder_cost.info["output_tokens"]) - (geometry.prefix if drop else 0)


def mllm_flops(
    encoder: EncoderGeometry,
    llm: LLMGeometry,
    layers: PlacementLike = None,
    *,
    mode: Mode = "train",
    image_size: int | Sequence[int] | None = None,
    factor: int = 2,
    method: str = "laco",
    options: Mapping[str, Any] | None = None,
    images: int = 1,
    prompt_tokens: int = 32,
    answer_tokens: int = 32,
    drop_prefix: bool | None = None,
) -> Cost:
    """FLOPs of one step of a LLaVA-style MLLM: vision encoder -> projector -> LLM.

    One image per sequence, ``images`` sequences per batch; each sequence is the image's tokens, then
    ``prompt_tokens`` of text, then ``answer_tokens`` of answer.

    * ``"encoder"``: the vision encoder's forward only;
    * ``"train"``: forward + backward over image + prompt + answer, logits on the answer tokens only (the
      positions with a label, as :func:`laco.mllm.loss.answer_loss` computes the loss);
    * ``"prefill"``: forward over image + prompt, logits of the last token (time to first token);
    * ``"decode"``: ``answer_tokens`` single-token steps with the KV cache after the prefill.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}.")
    vision = encoder_flops(
        encoder, layers, image_size=image_size, factor=factor, method=method, options=options, images=images
    )
    visual = image_tokens(vision, encoder, drop_prefix)
    info = dict(vision.info, image_tokens=visual)
    if mode == "encoder":
        return Cost(dict(vision.parts), info)
    prefill_length = visual + prompt_tokens
    if mode == "decode":
        cost = Cost(info=info)
        for step in range(answer_tokens):
            cost.merge(llm_flops(llm, 1, context=prefill_length + step + 1, logits=1).scaled(images))
        cost.info.update(sequence_tokens=prefill_length + answer_tokens)
        return cost
    forward = Cost(dict(vision.parts), info)
    forward.add("projector", images * 2 * visual * (encoder.width * llm.width + llm.width * llm.width))
    if mode == "prefill":
        forward.merge(llm_flops(llm, prefill_length, logits=1).scaled(images))
        forward.info.update(sequence_tokens=prefill_length)
        return forward
    sequence = prefill_length + answer_tokens
    forward.merge(llm_flops(llm, sequence, logits=answer_tokens).scaled(images))
    forward.info.update(sequence_tokens=sequence)
    return forward.training()


def training_activation_bytes(
    encoder: EncoderGeometry,
    llm: LLMGeometry,
    layers: PlacementLike = None,
    *,
    element_bytes: int,
    image_size: int | Sequence[int] | None = None,
    images: int = 1,
    prompt_tokens: int = 32,
    answer_tokens: int = 32,
    drop_prefix: bool | None = None,
) -> int:
    """Rough peak of activation memory in a training step (weights, gradients and optimizer state excluded).

    Why: a step that does not fit is killed by the OS on a CPU (no Python error), so :mod:`laco.bench` must
    refuse it up front. Kept for backward per token: ``9C + 2I`` elements in an encoder layer (``3I`` for
    SwiGLU) and ``9C + 4I`` in an LLM layer (norm inputs and outputs, q/k/v, attention output, MLP
    intermediates); the answer tokens' logits in the step's dtype plus their float32 upcast and log-softmax in
    the loss. How close it comes to measured peaks is recorded in docs/benchmarks.md.
    """
    vision = encoder_flops(encoder, layers, image_size=image_size)
    vision_layer = 9 * encoder.width + (3 if encoder.mlp_kind == "swiglu" else 2) * encoder.mlp
    vision_elements = sum(tokens * vision_layer for tokens in vision.info["tokens_per_layer"])
    sequence = image_tokens(vision, encoder, drop_prefix) + prompt_tokens + answer_tokens
    llm_elements = llm.layers * sequence * (9 * llm.width + 4 * llm.mlp)
    logits = answer_tokens * llm.vocab  # the loss projects only the labelled positions
    logits_bytes = logits * (element_bytes + (4 if element_bytes == 4 else 8))  # float32: no upcast copy
    return int(images * ((vision_elements + llm_elements) * element_bytes + logits_bytes))


def predicted_speedup(
    encoder: EncoderGeometry,
    llm: LLMGeometry | None = None,
    layers: PlacementLike = "1/4",
    baseline: PlacementLike = "external",
    *,
    mode: Mode | None = None,
    **kwargs: Any,
) -> float:
    """The FLOP-bound speed-up of ``layers`` over ``baseline``: ``flops(baseline) / flops(layers)``.

    The default baseline is external compression (the same compressor after the last layer), so the LLM sees
    the same number of visual tokens in both. Without ``llm`` (or with ``mode="encoder"``) only the encoder
    counts. Other keyword arguments go to :func:`mllm_flops`.
    """
    mode = mode or ("encoder" if llm is None else "train")
    if llm is None:
        if mode != "encoder":
            raise ValueError(f"mode={mode!r} needs an LLM geometry; pass llm= or use mode='encoder'.")
        encoder_kwargs = {
            k: v for k, v in kwargs.items() if k in ("image_size", "factor", "method", "options", "images")
        }
        return (
            encoder_flops(encoder, baseline, **encoder_kwargs).total
            / encoder_flops(encoder, layers, **encoder_kwargs).total
        )
    return (
        mllm_flops(encoder, llm, baseline, mode=mode, **kwargs).total
        / mllm_flops(encoder, llm, layers, mode=mode, **kwargs).total
    )
