"""Which floating-point precision a run computes in, chosen from what the hardware does natively.

bfloat16 halves memory traffic and, where the hardware multiplies bf16 natively (NVIDIA Ampere and later; x86
CPUs with AMX or AVX512-BF16), runs matrix products up to twice as fast. Where it does not, torch emulates it:
on an AVX2-only CPU a bf16 matrix product is tens of times slower than float32. ``auto`` therefore picks
bfloat16 only where it is native and float32 everywhere else, and every run records what it chose and why.

CPU kernels can be restricted below what the chip offers (``ATEN_CPU_CAPABILITY=avx2``, as one does to see what
an AVX2-only machine would do); torch then reports the restricted capability, and so does :func:`native_bf16`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import torch

PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


@dataclass(frozen=True)
class Precision:
    """The precision a run uses: ``name`` (``bf16``, ``fp16`` or ``fp32``), what was asked, and why."""

    name: str
    requested: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        """Whether it computes below float32 (autocast in training, a reduced dtype in inference)."""
        return self.name != "fp32"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.name} ({self.reason})" if self.requested == "auto" else f"{self.name} (asked)"


def normalize(requested: str) -> str:
    """``requested`` as one of :data:`PRECISIONS` (``bfloat16`` -> ``bf16``, ...), or a clear error."""
    text = str(requested).strip().lower()
    text = _ALIASES.get(text, text)
    if text not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}.")
    return text


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 natively, and the evidence, in words."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return True, f"{name} supports bf16"
        return False, f"{name} has no native bf16"
    if device.type != "cpu":
        return False, f"no bf16 detection for {device.type} devices"
    capability = torch.backends.cpu.get_cpu_capability()
    features = [
        name
        for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
        if getattr(torch.cpu, probe, lambda: False)()
    ]
    if not features:
        return False, f"this CPU has neither AMX nor AVX512-BF16 (torch kernels: {capability})"
    if not capability.startswith(("AVX512", "AMX")):
        return False, f"the CPU has {'/'.join(features)} but torch's kernels are restricted to {capability}"
    return True, f"the CPU has {'/'.join(features)} (torch kernels: {capability})"


def choose(requested: str = "auto", device: torch.device | str = "cpu", *, warn: bool = True) -> Precision:
    """The precision for a run on ``device``: ``auto`` is bf16 where it is native, float32 otherwise.

    Asking for bf16 on a CPU without native bf16 is allowed (numerics, not speed, may be the point) but warns with
    the cost measured on this machine; fp16 on a CPU is refused (emulated, with no benefit over bf16).
    """
    requested = normalize(requested)
    device = torch.device(device)
    native, evidence = native_bf16(device)
    if requested == "auto":
        return Precision("bf16" if native else "fp32", requested, evidence)
    if requested == "fp16" and device.type == "cpu":
        raise ValueError("fp16 on a CPU is emulated and slower than float32; use precision bf16, fp32 or auto.")
    if requested == "bf16" and not native and warn:
        slowdown = measured_bf16_slowdown() if device.type == "cpu" else None
        cost = f"; a bf16 matrix product takes {slowdown:.1f}x the float32 time here" if slowdown else ""
        warnings.warn(
            f"precision bf16 was asked for, but {evidence}: bf16 is emulated{cost}. Use precision auto or fp32 "
            "for speed.",
            UserWarning,
            stacklevel=2,
        )
    return Precision(requested, requested, evidence)


def measured_bf16_slowdown(rows: int = 512, inner: int = 576, columns: int = 1536, repeats: int = 3) -> float:
    """bf16 time over float32 time of one ``rows x inner`` by ``inner x columns`` product on this CPU (best of
    ``repeats``): the cost of emulated bf16, measured rather than assumed."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator)
    b = torch.randn(inner, columns, generator=generator)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up: first calls pick kernels
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - started)
        return min(times)

    return best(a.bfloat16(), b.bfloat16()) / max(best(a, b), 1e-9)


__all__ = ["DTYPES", "PRECISIONS", "Precision", "choose", "measured_bf16_slowdown", "native_bf16", "normalize"]
