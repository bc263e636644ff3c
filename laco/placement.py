"""Where and how to compress: one frozen value that :func:`laco.apply`, run configs, the cost model, the
benchmark, the study and the MLLM builder all share.

A :class:`Placement` names the layer(s) after which tokens are merged, the compressor, its factor and options,
and a *mode* for models that already compress after their encoder. Layers may be given before the encoder's
depth is known (``"1/4"``, ``"last"``) and resolved against it later (:meth:`Placement.resolve`), so the same
value travels from a YAML file to a built model. This module is plain arithmetic: it imports no torch, no
adapters and no model classes, so anything may depend on it.

Layer vocabulary (one parser, :func:`parse_layers`):

* ``None``, ``"none"``, ``[]``: no compression;
* an int ``k`` (or ``"k"``): after block ``k`` (1-based), ``k = depth`` is external compression;
* a fraction of depth, ``0.25`` or ``"1/4"``, rounded to the nearest layer (1/4 of 27 layers is layer 7);
* ``"last"`` (also ``"external"``, ``1.0``): after the last block;
* a list, or a comma-separated string (``"1/4,1/2"``), for several merges.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

LayerSpec = int | float | str | Fraction
LayerEntry = int | Fraction | str
"""A parsed layer: an int (after that block), a Fraction in (0, 1) of the depth, or ``"last"``."""

NONE = "none"
LAST = "last"
_LAST_ALIASES = (LAST, "external", "ext")

AUTO, KEEP, MORE = "auto", "keep_llm_tokens", "compress_more"
MODES: tuple[str, ...] = (AUTO, KEEP, MORE)
"""How a merge inside the encoder relates to a model's own post-encoder compression (Qwen2-VL's PatchMerger,
InternVL's pixel-shuffle, ...): ``keep_llm_tokens`` moves that compression inside the encoder, so the LLM receives
the same tokens as before; ``compress_more`` adds LaCo's merge to it. For an encoder without one, only
``compress_more`` exists. ``auto`` lets the model's adapter choose (``keep_llm_tokens`` where it can)."""

FORMAT = 1
"""Version of :meth:`Placement.to_dict`'s layout; a saved model with a larger number was written by a newer laco."""


def parse_layers(spec: LayerSpec | Sequence[LayerSpec] | None) -> tuple[LayerEntry, ...]:
    """Parse a layer spec into canonical entries without knowing the encoder's depth."""
    if spec is None:
        return ()
    if isinstance(spec, str) and "," in spec:
        spec = [part for part in spec.split(",") if part.strip()]
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if len(items) == 1 and isinstance(items[0], str) and items[0].strip().lower() == NONE:
        return ()
    return tuple(_parse_one(item) for item in items)


def _parse_one(spec: LayerSpec) -> LayerEntry:
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str, Fraction)):
        raise ValueError(f"cannot read layer {spec!r}; use an int such as 6, a fraction such as '1/4', or 'last'.")
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in _LAST_ALIASES:
            return LAST
        if re.fullmatch(r"[+-]?\d+", text):
            spec = int(text)
        else:
            try:
                spec = Fraction(text)
            except (ValueError, ZeroDivisionError):
                raise ValueError(
                    f"cannot read layer {spec!r}; use an int such as 6, a fraction such as '1/4', or 'last'."
                ) from None
    if isinstance(spec, int):
        return spec  # range-checked by resolve_layer, which knows the depth
    if isinstance(spec, float) and not math.isfinite(spec):
        raise ValueError(f"layer fraction {spec} must be a finite number in (0, 1].")
    fraction = Fraction(spec).limit_denominator(1000)
    if not 0 < fraction <= 1:
        raise ValueError(
            f"layer fraction {spec} must lie in (0, 1]; 0.25 puts the merge after a quarter of the layers."
        )
    return LAST if fraction == 1 else fraction


def resolve_layer(entry: LayerEntry, depth: int) -> int:
    """The 1-based block an entry of :func:`parse_layers` names in an encoder of ``depth`` blocks."""
    if entry == LAST:
        return depth
    if isinstance(entry, int):
        if not 1 <= entry <= depth:
            raise ValueError(
                f"layer {entry} is out of range for an encoder with {depth} layers; use 1..{depth} "
                f"({depth} = after the last layer) or a fraction of depth such as 0.25."
            )
        return entry
    return min(depth, max(1, math.floor(entry * depth + Fraction(1, 2))))


def resolve_layers(spec: LayerSpec | Sequence[LayerSpec] | None, depth: int) -> tuple[int, ...]:
    """Sorted 1-based layers of ``spec`` in an encoder of ``depth`` blocks (``()`` for no compression)."""
    if depth < 1:
        raise ValueError(f"an encoder needs at least one layer, got depth {depth}.")
    layers = sorted(resolve_layer(entry, depth) for entry in parse_layers(spec))
    if len(set(layers)) != len(layers):
        raise ValueError(f"layer spec {spec!r} names the same layer twice ({layers}) for depth {depth}.")
    return tuple(layers)


def format_layer(entry: LayerEntry) -> str | int:
    """An entry as configs write it: ``3``, ``"1/4"``, ``"last"``."""
    return str(entry) if isinstance(entry, Fraction) else entry


@dataclass(frozen=True)
class Placement:
    """Where and how to compress. ``Placement()`` is no compression.

    Args:
        layers: a layer spec (see the module docstring); stored as canonical entries.
        method: a compressor name (``laco.compressors.available()``).
        factor: merge ``factor x factor`` neighbouring tokens into one.
        options: the compressor's keyword options (``shortcut``, ``init``, ``pad``, ...); a mapping or pairs,
            stored as sorted pairs so placements are hashable.
        mode: one of :data:`MODES`.
    """

    layers: tuple[LayerEntry, ...] = ()
    method: str = "laco"
    factor: int = 2
    options: tuple[tuple[str, Any], ...] = field(default=())
    mode: str = AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", parse_layers(self.layers))
        options = self.options.items() if isinstance(self.options, Mapping) else (self.options or ())
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in options)))
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a compressor name such as 'laco', got {self.method!r}.")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"factor must be an integer >= 2 (got {self.factor!r}); use factor=2 for 2x2 merging.")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}.")

    @property
    def compressed(self) -> bool:
        return bool(self.layers)

    @property
    def resolved(self) -> bool:
        """Whether every layer is a block number (as after :meth:`resolve`)."""
        return all(isinstance(entry, int) for entry in self.layers)

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def resolve(self, depth: int) -> Placement:
        """This placement with block numbers for an encoder of ``depth`` blocks (sorted; range-checked)."""
        return replace(self, layers=resolve_layers(self.layers, depth))

    @property
    def block_layers(self) -> tuple[int, ...]:
        """The block numbers of a resolved placement."""
        if not self.resolved:
            raise ValueError(f"placement {self.label()} is not resolved; call .resolve(depth) first.")
        return tuple(int(entry) for entry in self.layers)

    def with_options(self, **options: Any) -> Placement:
        return replace(self, options={**self.option_dict, **options})

    def label(self) -> str:
        """A short name: ``none``, ``laco@1/4``, ``avgpool@3+6``, ``laco x3@last``."""
        if not self.compressed:
            return NONE
        factor = "" if self.factor == 2 else f"x{self.factor}"
        return f"{self.method}{factor}@{'+'.join(str(format_layer(entry)) for entry in self.layers)}"

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON data; :meth:`from_dict` reads it back."""
        return {
            "layers": [format_layer(entry) for entry in self.layers],
            "method": self.method,
            "factor": self.factor,
            "options": self.option_dict,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Placement:
        """Read :meth:`to_dict`'s data (a ``format`` key, as saved models carry, is checked and dropped)."""
        data = dict(data or {})
        saved_format = data.pop("format", FORMAT)
        if not isinstance(saved_format, int) or saved_format > FORMAT:
            raise ValueError(
                f"these LaCo settings were saved in format {saved_format!r}, newer than this laco reads ({FORMAT}); "
                "upgrade laco to load them."
            )
        unknown = sorted(set(data) - {"layers", "method", "factor", "options", "mode"})
        if unknown:
            raise ValueError(f"unknown LaCo setting(s) {unknown}; accepted: layers, method, factor, options, mode.")
        return cls(
            layers=data.get("layers"),
            method=data.get("method", "laco"),
            factor=data.get("factor", 2),
            options=data.get("options") or {},
            mode=data.get("mode", "auto"),
        )


def as_placement(
    spec: Placement | LayerSpec | Sequence[LayerSpec] | None,
    method: str = "laco",
    factor: int = 2,
    options: Mapping[str, Any] | None = None,
) -> Placement:
    """``spec`` itself if it is a :class:`Placement`, else a placement of those layers."""
    if isinstance(spec, Placement):
        return spec
    return Placement(spec, method, factor, options or {})


__all__ = [
    "FORMAT",
    "LAST",
    "AUTO",
    "KEEP",
    "MODES",
    "MORE",
    "NONE",
    "LayerSpec",
    "Placement",
    "as_placement",
    "format_layer",
    "parse_layers",
    "resolve_layer",
    "resolve_layers",
]
