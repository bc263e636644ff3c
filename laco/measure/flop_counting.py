"""Counting what a run does besides taking time: FLOPs (``FlopCounterMode``) and memory.

``FlopCounterMode`` knows the CUDA attention kernels but not the fused CPU one
(``_scaled_dot_product_flash_attention_for_cpu``), so on CPU every SDPA call would count 0 FLOPs; and before
torch 2.13 its CUDA formulas reject grouped-query attention. Every fused SDPA kernel and its backward are
registered here with torch's formulas, key/value heads broadcast to the query's.

Memory: on CUDA the allocator's peak is exact. On CPU there is no equivalent (RSS deltas mix in the allocator's
caching and other processes), so for training steps the bytes of the tensors autograd saves for the backward
pass are counted instead (unique storages, parameters excluded): the activation memory a step needs, stated as
such. Inference on CPU reports no memory figure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import flop_counter


def _broadcast_kv_heads(query_shape, *shapes) -> list[tuple[int, ...]]:
    """Key/value shapes with the query's head count: grouped-query attention costs what the repeated heads cost."""
    heads = query_shape[1]
    return [(shape[0], heads, *shape[2:]) for shape in shapes]


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    key_shape, value_shape = _broadcast_kv_heads(query_shape, key_shape, value_shape)
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    key_shape, value_shape = _broadcast_kv_heads(query_shape, key_shape, value_shape)
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# Every fused SDPA kernel takes (query, key, value, ...) and its backward (grad_out, query, key, value, ...).
# The CPU kernels are missing from torch's table; the CUDA ones are there, but before torch 2.13 their formula
# rejects grouped-query shapes (Qwen2's 14 query / 2 key-value heads, passed with enable_gqa on CUDA).
_SDPA_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_flop,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward_flop,
    "_scaled_dot_product_flash_attention": _sdpa_flop,
    "_scaled_dot_product_flash_attention_backward": _sdpa_backward_flop,
    "_scaled_dot_product_efficient_attention": _sdpa_flop,
    "_scaled_dot_product_efficient_attention_backward": _sdpa_backward_flop,
    "_scaled_dot_product_cudnn_attention": _sdpa_flop,
    "_scaled_dot_product_cudnn_attention_backward": _sdpa_backward_flop,
}


def _custom_mapping() -> dict[Any, Any]:
    return {
        getattr(torch.ops.aten, name): formula for name, formula in _SDPA_OPS.items() if hasattr(torch.ops.aten, name)
    }


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts CPU fused attention and grouped-query attention."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=_custom_mapping())


@dataclass
class SavedTensorBytes:
    """Bytes of distinct storages autograd saves for backward, excluding the given parameters' storages."""

    exclude: set[int] = field(default_factory=set)
    bytes: int = 0
    _seen: set[int] = field(default_factory=set)

    @classmethod
    def excluding(cls, parameters: Iterable[torch.Tensor]) -> "SavedTensorBytes":
        return cls(exclude={p.untyped_storage().data_ptr() for p in parameters})

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some subclasses)
            return tensor
        key = storage.data_ptr()
        if key not in self.exclude and key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    @contextmanager
    def counting(self) -> Iterator["SavedTensorBytes"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


@dataclass(frozen=True)
class PeakMemory:
    """CUDA: the allocator's peak during a call, and what was allocated before it (weights, optimizer state)."""

    peak_bytes: int
    baseline_bytes: int
    footnote = None

    def label(self) -> str:
        return f"{self.peak_bytes / 2**30:.2f} GiB"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cuda_peak_allocated",
            "baseline_bytes": self.baseline_bytes,
            "peak_bytes": self.peak_bytes,
            "step_bytes": self.peak_bytes - self.baseline_bytes,
        }


@dataclass(frozen=True)
class SavedMemory:
    """CPU, training: bytes of the tensors autograd saved for backward (activations), not a peak."""

    bytes: int
    footnote = "*: bytes saved for backward (activations), not a peak."

    def label(self) -> str:
        return f"{self.bytes / 2**20:.0f} MiB*"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "saved_for_backward", "bytes": self.bytes}


Memory = PeakMemory | SavedMemory | None
"""A call's memory figure; ``None`` where there is none (inference on a CPU)."""


def count_call(
    call: Callable[[], Any], *, device: torch.device, training: bool, parameters: Iterable[torch.Tensor]
) -> tuple[float, Memory]:
    """Run ``call`` once under ``FlopCounterMode`` and the device's memory probe: ``(FLOPs, memory)``.

    ``training``: on a CPU, count the bytes saved for backward, ``parameters`` excluded.
    """
    counter = flop_counter_mode()
    memory: Memory = None
    if device.type == "cuda":
        with cuda_peak(device) as peak, counter:
            call()
        memory = PeakMemory(peak["peak_bytes"], peak["baseline_bytes"])
    elif training:
        saved = SavedTensorBytes.excluding(parameters)
        with saved.counting(), counter:
            call()
        memory = SavedMemory(saved.bytes)
    else:
        with counter:
            call()
    return float(counter.get_total_flops()), memory


@contextmanager
def cuda_peak(device: torch.device) -> Iterator[dict[str, int]]:
    """Peak allocated CUDA memory during the block: ``{"peak_bytes", "baseline_bytes"}`` (filled on exit)."""
    result: dict[str, int] = {}
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    result["baseline_bytes"] = torch.cuda.memory_allocated(device)
    try:
        yield result
    finally:
        torch.cuda.synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device)
