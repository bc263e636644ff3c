"""Bench settings: written once, read by run_benchmark and the command line, resolved per device."""

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from laco.bench import run_benchmark
from laco.bench.cli import build_parser
from laco.bench.settings import BenchSettings, resolve

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> BenchSettings:
    return BenchSettings.from_namespace(build_parser().parse_args(list(argv)))


def test_every_setting_is_an_option_with_the_same_default():
    options = {action.dest for action in build_parser()._actions}
    assert {f.name for f in fields(BenchSettings)} <= options
    assert parse() == BenchSettings()


def test_the_command_line_spells_lists_and_switches():
    settings = parse(
        "--measure", "encoder, prefill", "--two-stage", "none", "--llm-layers", "3", "--compile", "--depths", "1/4"
    )
    assert settings == BenchSettings(
        measure=("encoder", "prefill"), two_stage=None, llm_layers=3, compile=True, depths=("1/4",)
    )
    assert parse("--two-stage", "1/6,1/3").two_stage == ("1/6", "1/3")
    assert BenchSettings(methods=["laco"], two_stage=[]) == BenchSettings(methods=("laco",), two_stage=None)


def test_quick_settings_resolve_to_the_tiny_preset_on_one_thread():
    settings = resolve(BenchSettings(quick=True, device="cpu"))
    assert settings.preset.name == "tiny" and settings.device == torch.device("cpu")
    assert (settings.dtype, settings.threads, settings.reps, settings.warmup, settings.batch) == (
        torch.float32, 1, 3, 1, 1
    )  # fmt: skip
    assert settings.measure == ("encoder", "train", "prefill", "decode") and settings.llm_layers is None
    assert settings.llm_scale == 1.0 and settings.execution == "float32"
    assert resolve(BenchSettings(preset="dinov2-s", device="cpu")).measure == ("encoder",)
    scaled = resolve(BenchSettings(preset="llava-ov-0.5b", device="cpu"))
    assert scaled.llm_layers == 6 and scaled.llm_scale == 4.0 and scaled.built_llm.layers == 6


def test_resolved_settings_keep_the_keys_of_the_committed_runs():
    written = resolve(BenchSettings(quick=True, device="cpu")).to_dict()
    committed = json.loads((REPO / "docs" / "bench-cpu" / "llava-ov-0.5b-batch2-answerloss.json").read_text())
    # runs recorded before the precision choice and before --method-options lack those two keys
    assert set(written) == set(committed["settings"]) | {"precision", "method_options"}
    assert written["precision"] == {"name": "fp32", "requested": "fp32", "reason": written["precision"]["reason"]}
    assert written["two_stage"] == ["1/4", "1/2"] and written["dtype"] == "float32" and written["preset"] == "tiny"


def test_settings_errors_name_the_fix():
    with pytest.raises(ValueError, match="float16 on CPU"):
        resolve(BenchSettings(quick=True, device="cpu", precision="fp16"))
    with pytest.raises(ValueError, match="--device must be"):
        resolve(BenchSettings(quick=True, device="tpu"))
    with pytest.raises(ValueError, match=r"--llm-layers must lie in 1\.\.2"):
        resolve(BenchSettings(quick=True, device="cpu", llm_layers=3))
    with pytest.raises(ValueError, match="reps and batch must be >= 1"):
        resolve(BenchSettings(quick=True, device="cpu", reps=0))
    with pytest.raises(TypeError, match="either settings"):
        run_benchmark(settings=BenchSettings(quick=True), quick=True)
    with pytest.raises(TypeError, match="rounds"):
        run_benchmark(quick=True, rounds=3)
