"""Precision chosen by the hardware: the CPU capability is mocked, so these hold on any machine."""

import warnings

import pytest
import torch

from laco import precision
from laco.config import load_config


def _cpu(monkeypatch, capability: str, amx: bool = False, avx512_bf16: bool = False) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(
    "capability,amx,avx512_bf16,expected,evidence",
    [
        ("AVX512", True, True, "bf16", "AMX/AVX512-BF16"),
        ("AVX512", False, True, "bf16", "AVX512-BF16"),
        ("AVX512", False, False, "fp32", "neither AMX nor AVX512-BF16"),
        ("AVX2", False, False, "fp32", "neither AMX nor AVX512-BF16"),
        ("AVX2", True, True, "fp32", "restricted to AVX2"),  # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU
    ],
)
def test_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch, capability, amx, avx512_bf16, expected, evidence):
    _cpu(monkeypatch, capability, amx, avx512_bf16)
    chosen = precision.choose("auto", "cpu")
    assert chosen.name == expected and chosen.requested == "auto" and evidence in chosen.reason
    assert chosen.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    assert chosen.to_dict() == {"name": expected, "requested": "auto", "reason": chosen.reason}


def test_forcing_bf16_without_native_support_warns_with_the_measured_cost(monkeypatch):
    _cpu(monkeypatch, "AVX2")
    monkeypatch.setattr(precision, "measured_bf16_slowdown", lambda: 58.0)
    with pytest.warns(UserWarning, match=r"bf16 is emulated; a bf16 matrix product takes 58\.0x the float32 time"):
        chosen = precision.choose("bf16", "cpu")
    assert chosen.name == "bf16"
    _cpu(monkeypatch, "AVX512", avx512_bf16=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.choose("bfloat16", "cpu").name == "bf16"  # native: no warning; aliases accepted


def test_the_slowdown_is_measured_not_assumed():
    assert precision.measured_bf16_slowdown(rows=32, inner=32, columns=32, repeats=1) > 0


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="unknown precision 'maybe'"):
        precision.choose("maybe")
    with pytest.raises(ValueError, match="fp16 on a CPU is emulated"):
        precision.choose("fp16", "cpu")
    with pytest.raises(ValueError, match="training.precision: unknown precision 'maybe'"):
        load_config(None, ["training.precision=maybe"])
    with pytest.raises(ValueError, match="bf16 is now precision"):
        load_config(None, ["training.bf16=true"])


def test_fp32_is_taken_as_asked(monkeypatch):
    _cpu(monkeypatch, "AVX512", amx=True, avx512_bf16=True)
    chosen = precision.choose("fp32", "cpu")
    assert chosen.name == "fp32" and chosen.describe() == "fp32 (asked)"
