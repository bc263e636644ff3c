"""Geometries of vision encoders and LLMs the cost model counts, and the public configs by name (docs/geometries.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from ..functional import GridSize

MlpKind = Literal["gelu", "swiglu"]


def _pair(value: int | Sequence[int]) -> GridSize:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


@dataclass(frozen=True)
class EncoderGeometry:
    """Shape of a ViT vision encoder; enough to count its FLOPs and (in :mod:`laco.bench`) to build it.

    ``family`` names the ``transformers`` implementation (``siglip``, ``clip``, ``dinov2``, ``internvit``,
    ``aimv2``); ``prefix`` counts the CLS/register tokens that lead the sequence and bypass the merge.
    """

    name: str
    family: str
    width: int
    layers: int
    heads: int
    mlp: int
    patch: int
    image_size: int
    prefix: int = 0
    mlp_kind: MlpKind = "gelu"
    channels: int = 3

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"encoder {self.name!r}: width {self.width} is not divisible by {self.heads} heads.")
        if self.mlp_kind not in ("gelu", "swiglu"):
            raise ValueError(f"encoder {self.name!r}: mlp_kind must be 'gelu' or 'swiglu', got {self.mlp_kind!r}.")

    def grid(self, image_size: int | Sequence[int] | None = None) -> GridSize:
        """Patch grid for an image of ``image_size`` (default: the geometry's own); floor division like a conv."""
        height, width = _pair(self.image_size if image_size is None else image_size)
        return height // self.patch, width // self.patch

    def with_layers(self, layers: int) -> "EncoderGeometry":
        return replace(self, layers=layers)


@dataclass(frozen=True)
class LLMGeometry:
    """Shape of a decoder-only LLM (Qwen2/Llama style: GQA attention, gated MLP, optional tied embeddings)."""

    name: str
    width: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    tied: bool = False
    mlp_kind: MlpKind = "swiglu"
    family: str = "qwen2"
    head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None and self.width % self.heads:
            raise ValueError(
                f"LLM {self.name!r}: width {self.width} is not divisible by {self.heads} heads; set head_dim."
            )
        if self.heads % self.kv_heads:
            raise ValueError(
                f"LLM {self.name!r}: {self.heads} query heads are not a multiple of {self.kv_heads} KV heads."
            )

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.width // self.heads

    @property
    def q_width(self) -> int:
        return self.heads * self.dim_per_head

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.dim_per_head

    def with_layers(self, layers: int) -> "LLMGeometry":
        return replace(self, layers=layers)


ENCODERS: dict[str, EncoderGeometry] = {
    g.name: g
    for g in (
        EncoderGeometry("siglip-so400m", "siglip", 1152, 27, 16, 4304, 14, 384),
        EncoderGeometry("siglip-l16", "siglip", 1024, 24, 16, 4096, 16, 384),
        EncoderGeometry("internvit-300m", "internvit", 1024, 24, 16, 4096, 14, 448, prefix=1),
        EncoderGeometry("aimv2-l14", "aimv2", 1024, 24, 8, 2816, 14, 224, mlp_kind="swiglu"),
        EncoderGeometry("clip-l14-336", "clip", 1024, 24, 16, 4096, 14, 336, prefix=1),
        EncoderGeometry("dinov2-s", "dinov2", 384, 12, 6, 1536, 14, 224, prefix=1),
    )
}


LLMS: dict[str, LLMGeometry] = {
    g.name: g
    for g in (
        LLMGeometry("qwen2-0.5b", 896, 24, 14, 2, 4864, 151936, tied=True),
        LLMGeometry("qwen2-1.5b", 1536, 28, 12, 2, 8960, 151936, tied=True),
        LLMGeometry("qwen2.5-3b", 2048, 36, 16, 2, 11008, 151936, tied=True),
        LLMGeometry("qwen2-7b", 3584, 28, 28, 4, 18944, 152064),
        LLMGeometry("smollm2-135m", 576, 30, 9, 3, 1536, 49152, tied=True, family="llama"),
    )
}


def encoder_geometry(name: str) -> EncoderGeometry:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder geometry {name!r}; choose one of {sorted(ENCODERS)}.") from None


def llm_geometry(name: str) -> LLMGeometry:
    try:
        return LLMS[name]
    except KeyError:
        raise ValueError(f"unknown LLM geometry {name!r}; choose one of {sorted(LLMS)}.") from None
