"""The variants of a run: placements of the compressor in the vision encoder, each with the baseline it is
compared with.

A variant's *baseline* is the variant whose LLM sees the same number of visual tokens, so a speed-up isolates
where the compression happens. LaCo at any depth and the other compressors are compared with external
compression (LaCo's merge after the last layer); two-stage compression is compared with external compression by
the same total factor (one merge after the last layer). "No compression" is shown against external too, but its
LLM sees more tokens: it says what external compression buys, not what placement buys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..compressors import available as available_methods
from ..placement import KEEP, MORE, Placement

DEFAULT_DEPTHS: tuple[str, ...] = ("1/12", "1/6", "1/4", "1/2")
DEFAULT_METHODS: tuple[str, ...] = ("laco", "pixel_shuffle", "ldpv2", "tokenpacker", "avgpool")
DEFAULT_TWO_STAGE: tuple[str, ...] = ("1/4", "1/2")
HEADLINE = "laco@1/4"


@dataclass(frozen=True)
class BenchVariant:
    """One placement to time. ``baseline`` names the variant it is compared with (``None``: a reference)."""

    name: str
    placement: Placement
    baseline: str | None
    group: str  # "reference", "depth", "two-stage", "method" or (packed towers) "mode"
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


def fraction_label(spec: str) -> str:
    """``"0.25"`` and ``"1/4"`` both read ``1/4``; a layer number stays as given."""
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
    method_options: Mapping[str, Any] | None = None,
) -> list[BenchVariant]:
    """The variants of one run, for an encoder of ``depth`` layers.

    No compression; external (LaCo's merge after layer ``depth``); LaCo at each of ``depths``; LaCo at the
    ``two_stage`` depths together with external ``factor**2`` compression as its baseline; every other method
    of ``methods`` at ``method_depth``, built with ``method_options``. Placements that resolve to the same layers (shallow encoders) are kept
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
            placement = Placement(spec, "laco", factor).resolve(depth)
            variants.append(BenchVariant(f"laco@{fraction_label(spec)}", placement, "external", "depth"))
    if two_stage:
        variants += _two_stage(depth, two_stage, factor)
    for method in methods:
        if method != "laco":
            placement = Placement(method_depth, method, factor, dict(method_options or {})).resolve(depth)
            variants.append(BenchVariant(f"{method}@{fraction_label(method_depth)}", placement, "external", "method"))
    return _unique(variants)


def packed_tower_variants(depth: int, layer: str = "1/4", factor: int = 2) -> list[BenchVariant]:
    """The variants of a packed native-resolution tower (:mod:`laco.bench.native`): the original tower, and LaCo at
    ``layer`` in each mode, both compared with the original. ``keep_llm_tokens`` gives the LLM the original's
    tokens; ``compress_more`` gives it ``factor**2`` times fewer (its speed-up is not the placement's alone)."""
    variants = [BenchVariant("original", Placement(), None, "reference")]
    for mode in (KEEP, MORE):
        placement = Placement(layer, "laco", factor, mode=mode).resolve(depth)
        variants.append(BenchVariant(mode, placement, "original", "mode", mode == KEEP))
    return variants


def _two_stage(depth: int, two_stage: Sequence[str], factor: int) -> list[BenchVariant]:
    """LaCo merging at every ``two_stage`` depth, and external compression by the same total factor."""
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
    label = "+".join(fraction_label(s) for s in two_stage)
    return [external, BenchVariant(f"laco@{label}", stages, external.name, "two-stage")]


def _unique(variants: list[BenchVariant]) -> list[BenchVariant]:
    """The first variant of every placement; refuses a set where a kept variant's baseline was dropped."""
    unique: dict[Placement, BenchVariant] = {}
    for variant in variants:
        unique.setdefault(variant.placement, variant)
    kept = list(unique.values())
    names = {v.name for v in kept}
    for variant in kept:
        if variant.baseline is not None and variant.baseline not in names:
            raise ValueError(f"variant {variant.name} lost its baseline {variant.baseline} to a duplicate placement.")
    return kept


def headline_variant(variants: Iterable[tuple[str, str]]) -> str | None:
    """The headline of a run, from its variants' ``(name, group)``: LaCo at 1/4 depth if it was run, else the
    first single-stage LaCo placement. Shared by the summary and ``--compare`` (which reads JSON)."""
    depth_names = [name for name, group in variants if group == "depth"]
    if HEADLINE in depth_names:
        return HEADLINE
    return depth_names[0] if depth_names else None
