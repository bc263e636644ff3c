"""FLOPs of native-resolution vision towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) and of their LLM's prefill.

Same counting convention as :mod:`laco.cost.flops` (``FlopCounterMode``'s: matrix products and convolutions only,
multiply-add = 2). What differs from a batched ViT:

* every image and video frame is its own attention segment (packed sequences): attention costs
  ``4 L^2 C`` per segment of ``L`` tokens, not per batch;
* Qwen2.5-VL's windowed blocks attend within windows of ``window`` pixels (4x4 merge units at 112 px), the blocks
  in ``full_blocks`` across the frame; after LaCo's merge the windows keep their image regions with one token per
  merge unit (see ``docs/native-resolution.md``);
* the post-encoder merger (``LayerNorm -> Linear(4C, 4C) -> GELU -> Linear(4C, D)`` on each 2x2 merge unit) and
  Qwen3-VL's DeepStack mergers are part of the tower; in ``keep_llm_tokens`` mode they are 1x (``Linear(C, 4C)``
  first), in ``compress_more`` they merge the merged grid once more;
* patch embedding is a Conv3d over ``temporal_patch x patch x patch`` pixels of ``channels`` channels.

Images are given in pixels as the processor resized them (multiples of ``patch * merge``), or as ``grid_thw``
rows. Pure arithmetic: the compressor's own ``.flops`` is read through :func:`laco.cost.compressor_flops`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..placement import KEEP, MORE, LayerSpec, Placement, as_placement
from .flops import Cost, compressor_flops, llm_flops
from .geometry import LLMGeometry, MlpKind, llm_geometry


@dataclass(frozen=True)
class PackedEncoderGeometry:
    """Shape of a native-resolution tower. ``window`` (pixels) and ``full_blocks`` (0-based) describe window
    attention (Qwen2.5-VL); ``deepstack`` lists the 0-based blocks whose output a DeepStack merger reads."""

    name: str
    family: str
    width: int
    layers: int
    heads: int
    mlp: int
    out_width: int
    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2
    mlp_kind: MlpKind = "gelu"
    window: int | None = None
    full_blocks: tuple[int, ...] = ()
    deepstack: tuple[int, ...] = ()
    channels: int = 3

    def grid_thw(self, image: Sequence[int]) -> tuple[int, int, int]:
        """``(t, h, w)`` patches of an image given as ``(height, width)`` pixels or as a ``(t, h, w)`` grid."""
        if len(image) == 3:
            return int(image[0]), int(image[1]), int(image[2])
        height, width = int(image[0]), int(image[1])
        unit = self.patch * self.merge
        if height % unit or width % unit:
            raise ValueError(
                f"image {height}x{width} px is not a multiple of {unit} px, which the processor resizes every image to."
            )
        return 1, height // self.patch, width // self.patch


_QWEN25_3B = PackedEncoderGeometry(
    "qwen2.5-vl-3b", "qwen2.5-vl", 1280, 32, 16, 3420, 2048, mlp_kind="swiglu", window=112, full_blocks=(7, 15, 23, 31)
)
PACKED_ENCODERS: dict[str, PackedEncoderGeometry] = {
    g.name: g
    for g in (
        _QWEN25_3B,
        replace(_QWEN25_3B, name="qwen2.5-vl-7b", out_width=3584),
        PackedEncoderGeometry("qwen2-vl-2b", "qwen2-vl", 1280, 32, 16, 5120, 1536),
        PackedEncoderGeometry("qwen3-vl-8b", "qwen3-vl", 1152, 27, 16, 4304, 4096, patch=16, deepstack=(8, 16, 24)),
    )
}
PACKED_LLMS = {"qwen2.5-vl-3b": "qwen2.5-3b", "qwen2.5-vl-7b": "qwen2-7b", "qwen2-vl-2b": "qwen2-1.5b"}
"""The LLM each tower feeds (Qwen2.5-VL-3B's, -7B's and Qwen2-VL-2B's language models have Qwen2.5-3B's, Qwen2-7B's
and Qwen2-1.5B's geometry; the 3B and 7B towers differ only in the merger's output width)."""


def _segments(units_h: int, units_w: int, side: int | None) -> list[int]:
    """Units per attention segment of one frame: the frame, or its windows of ``side`` x ``side`` units."""
    if side is None:
        return [units_h * units_w]
    rows = [min(side, units_h - i) for i in range(0, units_h, side)]
    cols = [min(side, units_w - j) for j in range(0, units_w, side)]
    return [r * c for r in rows for c in cols]


def _frame_segments(g: PackedEncoderGeometry, h: int, w: int, windowed: bool, merged: bool, mode: str) -> list[int]:
    """Tokens per attention segment of one ``h x w``-patch frame, before or after LaCo's merge."""
    units_h, units_w = h // g.merge, w // g.merge
    if not windowed:
        return [units_h * units_w * (1 if merged else g.merge**2)]
    if not merged:  # windows of side x side merge units, merge**2 tokens each
        return [u * g.merge**2 for u in _segments(units_h, units_w, g.window // g.merge // g.patch)]
    if mode == KEEP:  # the same windows, one token per merge unit
        return _segments(units_h, units_w, g.window // g.merge // g.patch)
    # compress_more: windows over 2x2 blocks of merged tokens (merged tokens are merge*patch px patches)
    side = g.window // g.merge // (g.patch * g.merge)
    return [b * g.merge**2 for b in _segments(units_h // g.merge, units_w // g.merge, side)]


def _attention(segments: list[int], width: int) -> float:
    return float(sum(4 * length * length * width for length in segments))


def _merger(tokens_in: int, width: int, out: int, groups: int, one_to_one: bool) -> float:
    """The merger's two Linears: ``(groups*C -> groups*C -> out)`` per output, or ``(C -> groups*C -> out)`` 1x."""
    hidden = groups * width
    if one_to_one:
        return 2.0 * tokens_in * (width * hidden + hidden * out)
    return 2.0 * (tokens_in // groups) * (hidden * hidden + hidden * out)


def packed_encoder_flops(
    geometry: PackedEncoderGeometry,
    layers: Placement | LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    images: Sequence[Sequence[int]],
    mode: str = KEEP,
    method: str = "laco",
    options: Mapping[str, Any] | None = None,
) -> Cost:
    """Forward FLOPs of a packed tower on ``images`` (one call), with LaCo's merge after ``layers`` (one layer).

    ``info``: ``tokens_per_layer`` (packed tokens entering each block), ``llm_tokens`` (per image, what the LLM
    receives), ``placement`` and ``mode``.
    """
    g = geometry
    place = as_placement(layers, method, g.merge, options).resolve(g.layers)
    if len(place.layers) > 1 or (place.compressed and mode not in (KEEP, MORE)):
        raise ValueError(f"a packed tower takes one merge and mode keep_llm_tokens or compress_more; got {place}.")
    merge_after = place.layers[0] if place.compressed else None
    grids = [g.grid_thw(image) for image in images]
    groups = g.merge * g.merge
    cost, tokens_per_layer = Cost(), []
    patches = sum(t * h * w for t, h, w in grids)
    cost.add("encoder.patch_embed", 2 * patches * g.channels * g.temporal_patch * g.patch**2 * g.width)
    mlp_products = 3 if g.mlp_kind == "swiglu" else 2
    for block in range(g.layers):
        merged = merge_after is not None and block >= merge_after
        per_token = 1 if merged else groups  # tokens per merge unit
        tokens = patches // groups * per_token
        tokens_per_layer.append(tokens)
        cost.add("encoder.layers", 2 * tokens * (4 * g.width**2 + mlp_products * g.width * g.mlp))
        windowed = g.window is not None and block not in g.full_blocks
        for t, h, w in grids:
            cost.add("encoder.attention", t * _attention(_frame_segments(g, h, w, windowed, merged, mode), g.width))
        if merge_after is not None and block + 1 == merge_after:
            for t, h, w in grids:
                cost.add(
                    "encoder.compressor", t * compressor_flops(method, g.width, (h, w), g.merge, place.option_dict)
                )
        if block in g.deepstack:  # the tap reads the block's output: merged from the merge's own block on
            merged_here = merge_after is not None and block + 1 >= merge_after
            tapped = patches // groups if merged_here else patches
            cost.add("encoder.deepstack", _merger(tapped, g.width, g.out_width, groups, merged_here and mode == KEEP))
    final = patches // groups if merge_after is not None else patches
    cost.add("encoder.merger", _merger(final, g.width, g.out_width, groups, merge_after is not None and mode == KEEP))
    per_image = groups * (groups if merge_after is not None and mode == MORE else 1)
    cost.info.update(
        tokens_per_layer=tuple(tokens_per_layer),
        llm_tokens=tuple(t * h * w // per_image for t, h, w in grids),
        placement=place,
        mode=mode if merge_after is not None else None,
    )
    return cost


def packed_mllm_flops(
    geometry: PackedEncoderGeometry,
    llm: LLMGeometry | str | None = None,
    layers: Placement | LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    images: Sequence[Sequence[int]],
    mode: str = KEEP,
    prompt_tokens: int = 32,
    **kwargs: Any,
) -> Cost:
    """Tower + LLM prefill (time to first token), one image per sequence, logits of the last token only."""
    llm = llm_geometry(llm or PACKED_LLMS[geometry.name]) if not isinstance(llm, LLMGeometry) else llm
    cost = packed_encoder_flops(geometry, layers, images=images, mode=mode, **kwargs)
    for tokens in cost.info["llm_tokens"]:
        cost.merge(llm_flops(llm, tokens + prompt_tokens, logits=1))
    return cost


__all__ = ["PACKED_ENCODERS", "PACKED_LLMS", "PackedEncoderGeometry", "packed_encoder_flops", "packed_mllm_flops"]
