"""``laco bench --engine vllm``: the FLOP bounds, the request set and the report (fast), and one tiny run end to end
through two real `vllm serve` processes (slow; skipped with the reason where vLLM cannot run)."""

from __future__ import annotations

import json

import pytest

from laco.bench import main as bench_main
from laco.bench.report import serving_table as format_table
from laco.bench.serving import VARIANTS, ServingResult, ServingSettings, flop_bounds, image_url
from laco.serve.launch import ServeUnavailable, check_serving

TINY_SERVE_PRESET = """
name: tiny-serve
description: tiny SigLIP-like encoder + tiny Qwen2 with 32-wide heads (a size vLLM's CPU attention takes)
encoder: {name: tiny-siglip, family: siglip, width: 64, layers: 8, heads: 4, mlp: 128, patch: 4, image_size: 32}
llm: {name: tiny-qwen2-h32, width: 128, layers: 2, heads: 4, kv_heads: 2, mlp: 256, vocab: 1024, tied: true}
"""


def test_flop_bounds_favour_laco_and_throughput_less_than_ttft():
    bounds = flop_bounds(ServingSettings(), prompt_tokens=20)
    assert 1.0 < bounds["requests_per_s"] == bounds["output_tokens_per_s"] < bounds["ttft"]


def test_every_request_gets_its_own_image():
    urls = {image_url(seed, 16) for seed in range(5)}
    assert len(urls) == 5 and all(url.startswith("data:image/png;base64,") for url in urls)
    assert image_url(3, 16) == image_url(3, 16)  # the same images for both models


def test_table_sets_ratios_next_to_bounds():
    medians = {
        VARIANTS[0]: {"ttft_s": 2.0, "requests_per_s": 0.5, "output_tokens_per_s": 8.0},
        VARIANTS[1]: {"ttft_s": 4.0, "requests_per_s": 0.25, "output_tokens_per_s": 4.0},
    }
    result = ServingResult(
        {},
        {},
        196,
        20,
        medians=medians,
        ratios={"ttft": 2.0, "requests_per_s": 2.0, "output_tokens_per_s": 2.0},
        bounds={"ttft": 2.5, "requests_per_s": 2.0, "output_tokens_per_s": 2.0},
    )
    table = format_table(result)
    assert "| TTFT (s) | 2.000 | 4.000 | **2.00x** | 2.50x | 0.80 |" in table


@pytest.mark.slow
def test_tiny_serving_benchmark_end_to_end(tmp_path, capsys):
    try:
        check_serving()
    except ServeUnavailable as reason:
        pytest.skip(str(reason))
    preset = tmp_path / "tiny-serve.yaml"
    preset.write_text(TINY_SERVE_PRESET)
    out = tmp_path / "out"
    argv = ["--engine", "vllm", "--preset", str(preset), "--rounds", "1", "--warmup", "1", "--requests", "2"]
    assert bench_main([*argv, "--output-tokens", "4", "--out", str(out)]) == 0
    result = json.loads((out / "serving.json").read_text())
    assert set(result["medians"]) == set(VARIANTS) and result["ratios"]["ttft"] > 0
    assert result["image_tokens"] == 16 and (out / "serving.png").exists()
    assert "LaCo speed-up" in (out / "serving.md").read_text()
    assert not list((out / "models").glob("*/*.safetensors"))  # the checkpoints are removed after the run
