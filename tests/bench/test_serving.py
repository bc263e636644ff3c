"""``laco bench --engine vllm``: the FLOP bounds, the request set and the report (fast), and one tiny run end to end
through two real `vllm serve` processes (slow; skipped with the reason where vLLM cannot run)."""

from __future__ import annotations

import json

import pytest

from laco.bench import main as bench_main
from laco.bench.report import serving_table as format_table
from laco.bench.serving import (
    VARIANTS,
    ServingSettings,
    flop_bounds,
    serving_result,
    variant_names,
)
from laco.measure.timing import Samples
from laco.serve.launch import ServeUnavailable, check_serving

TINY_SERVE_PRESET = """
name: tiny-serve
description: tiny SigLIP-like encoder + tiny Qwen2 with 32-wide heads (a size vLLM's CPU attention takes)
encoder: {name: tiny-siglip, family: siglip, width: 64, layers: 8, heads: 4, mlp: 128, patch: 4, image_size: 32}
llm: {name: tiny-qwen2-h32, width: 128, layers: 2, heads: 4, kv_heads: 2, mlp: 256, vocab: 1024, tied: true}
"""


def test_flop_bounds_favour_laco_and_throughput_less_than_ttft():
    bounds = flop_bounds(ServingSettings(), prompt_tokens=20)
    assert 1.0 < bounds["rps@16"] == bounds["rps@1"] < bounds["ttft"] == bounds["prefill"]
    assert bounds["decode"] == pytest.approx(1.0, abs=0.05)  # external gives the LLM as many tokens as LaCo


def test_qwen_bounds_follow_the_mode():
    """keep_llm_tokens saves tower FLOPs only (decode costs the same); compress_more also gives the LLM 4x fewer
    tokens, so the prefill bound grows and decode gets cheaper too."""
    keep = flop_bounds(ServingSettings(preset="qwen2.5-vl-3b-tower", image_size=448), prompt_tokens=20)
    more = flop_bounds(ServingSettings(preset="qwen2.5-vl-3b-tower", image_size=448, mode="compress_more"), 20)
    assert keep["vit"] > 1.5 and keep["decode"] == pytest.approx(1.0) and 1.0 < keep["prefill"] < keep["vit"]
    assert more["prefill"] > keep["prefill"] and more["decode"] > 1.0 and more["vit"] > keep["vit"]
    assert variant_names(ServingSettings(preset="qwen2.5-vl-7b-tower")) == ("laco@1/4", "stock")


def test_bad_qwen_settings_are_refused_by_value():
    with pytest.raises(ValueError, match="--image-size 230"):
        variant_names(ServingSettings(preset="qwen2.5-vl-3b-tower", image_size=230))
    with pytest.raises(ValueError, match="multiple of 56"):
        variant_names(ServingSettings(preset="qwen2.5-vl-3b-tower", image_size=252, mode="compress_more"))
    with pytest.raises(ValueError, match="--mode compress_more is for Qwen-VL"):
        variant_names(ServingSettings(mode="compress_more"))
    with pytest.raises(ValueError, match="--baseline"):
        ServingSettings(baseline="hf")


def test_table_sets_per_round_ratios_next_to_bounds():
    """Speed-ups are medians of per-round ratios (external / LaCo for TTFT, LaCo / external for the rates), not
    ratios of medians: round 1's 3x and round 2's 1x make 2x, where the medians' ratio would be 1.5x."""
    common = {"prefill_s": [1.0, 1.0], "decode_s": [0.1, 0.1]}
    rounds = {
        VARIANTS[0]: {"ttft_s": [2.0, 2.0], "rps@1": [0.5, 0.5], **common},
        VARIANTS[1]: {"ttft_s": [6.0, 2.0], "rps@1": [0.25, 0.25], **common},
    }
    samples = {name: Samples([1.0, 1.0], phases, [0, 1], [i, 1 - i]) for i, (name, phases) in enumerate(rounds.items())}
    settings = ServingSettings(preset="tiny", concurrency=(1,))
    result = serving_result(settings, {}, 196, 20, samples)
    bound = flop_bounds(settings, prompt_tokens=20)["ttft"]
    table = format_table(result)
    assert f"| TTFT (s) | 2.000 | 4.000 | **2.00x** | {bound:.2f}x | {2 / bound:.2f} |" in table
    assert "| requests/s at 1 | 0.500 | 0.250 | **2.00x** |" in table
    assert "| decode (s/token) | 0.100 | 0.100 | **1.00x** |" in table
    assert result.to_dict()["order"] == [list(VARIANTS), list(VARIANTS)[::-1]]


@pytest.mark.slow
def test_tiny_serving_benchmark_end_to_end(tmp_path, capsys):
    try:
        check_serving()
    except ServeUnavailable as reason:
        pytest.skip(str(reason))
    preset = tmp_path / "tiny-serve.yaml"
    preset.write_text(TINY_SERVE_PRESET)
    out = tmp_path / "out"
    argv = ["--engine", "vllm", "--preset", str(preset), "--rounds", "1", "--warmup", "1", "--concurrency", "1,2"]
    assert bench_main([*argv, "--output-tokens", "4", "--out", str(out)]) == 0
    result = json.loads((out / "serving.json").read_text())
    assert set(result["measurements"]["ttft"]) == set(VARIANTS)
    assert next(r for r in result["speedups"] if r["measurement"] == "ttft")["measured"] > 0
    assert result["image_tokens"] == 16 and (out / "serving.png").exists()
    assert "LaCo speed-up" in (out / "serving.md").read_text()
    assert not list((out / "models").glob("*/*.safetensors"))  # the checkpoints are removed after the run


@pytest.mark.slow
def test_tiny_qwen_serving_benchmark_end_to_end(tmp_path):
    """A converted tiny Qwen2.5-VL against its stock model, both served: every measurement of the table, the tower
    timed alone, the stock model served by laco's class with the merge off (no torchvision here)."""
    try:
        check_serving()
    except ServeUnavailable as reason:
        pytest.skip(str(reason))
    out = tmp_path / "out"
    argv = ["--engine", "vllm", "--preset", "tiny-qwen-serve", "--image-size", "112", "--rounds", "1"]
    assert bench_main([*argv, "--concurrency", "1,2", "--output-tokens", "4", "--out", str(out)]) == 0
    result = json.loads((out / "serving.json").read_text())
    assert set(result["measurements"]) == {"vit", "ttft", "prefill", "decode", "rps@1", "rps@2"}
    assert set(result["measurements"]["vit"]) == {"laco@1/4", "stock"}
    assert result["image_tokens"] == 16 and "laco's class" in result["notes"][0]
    assert all(r["measured"] > 0 for r in result["speedups"])
    assert not list((out / "models").glob("*/*.safetensors"))
