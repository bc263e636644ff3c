"""laco bench: the --quick path end to end, through run_benchmark and the command line."""

import json

import pytest

from laco.bench import SCHEMA, main, run_benchmark
from laco.bench.presets import PRESETS, TINY_ENCODER, TINY_LLM
from laco.cost import training_activation_bytes
from laco.measure import machine as machine_module

MEASURES = ["encoder", "train", "prefill", "decode"]


def test_quick_run_writes_json_and_png(quick_run, capsys):
    out, status = quick_run
    assert status == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == SCHEMA and data["engine"] == "batched" and data["headline"] == "laco@1/4"
    assert set(data["provenance"]) == {"commit", "date", "cpu", "load_average_start", "load_average_end"}
    assert data["preset"]["name"] == "tiny"
    assert set(data["machine"]) >= {"cpu", "logical_cores", "torch_threads", "torch", "transformers", "gpu"}
    assert data["settings"]["threads"] == 1 and data["settings"]["reps"] == 3
    assert list(data["measurements"]) == MEASURES
    names = [v["name"] for v in data["variants"]]
    assert names[:2] == ["none", "external"] and "laco@1/4" in names and "external-16x" in names
    for _kind, rows in data["measurements"].items():
        assert list(rows) == names
        for name, row in rows.items():
            assert len(row["seconds"]) == 3 and all(s > 0 for s in row["seconds"])
            assert row["rounds"] == [0, 1, 2]
            assert row["stats_seconds"]["q1"] <= row["stats_seconds"]["median"] <= row["stats_seconds"]["q3"]
            assert row["flops_counted"] == pytest.approx(row["flops_predicted"], rel=0.02)
            variant = next(v for v in data["variants"] if v["name"] == name)
            if variant["baseline"] is None:
                assert row["speedup"] is None
            else:
                assert row["speedup"]["baseline"] == variant["baseline"]
                assert row["speedup"]["bound"] > 0
    train = data["measurements"]["train"]["laco@1/4"]
    assert set(train["phases_seconds"]) >= {"forward", "backward", "optimizer", "stack_forward", "stack_backward"}
    assert train["memory"]["kind"] == "saved_for_backward" and train["memory"]["bytes"] > 0
    # LaCo at 1/4 and external feed the LLM the same number of tokens; no compression 4x more (odd 13x13 grid).
    prefill = data["measurements"]["prefill"]
    assert prefill["laco@1/4"]["tokens"] == prefill["external"]["tokens"] == 49
    assert prefill["none"]["tokens"] == 169
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# What --quick counts and predicts, pinned: a refactor of the bench must not move these. FLOPs per call
# (counted by FlopCounterMode / predicted by laco.cost at the LLM's full depth) and visual tokens, batch 1.
QUICK_PINNED = {
    ("encoder", "none"): (221684736.0, 221684736.0, 169),
    ("encoder", "laco@1/4"): (92640256.0, 92651072.0, 49),
    ("encoder", "laco@1/4+1/2"): (77024768.0, 77038720.0, 16),
    ("train", "external"): (758286592.0, 758319040.0, 49),
    ("train", "laco@1/4"): (334995712.0, 335028160.0, 49),
    ("prefill", "none"): (273249792.0, 273249792.0, 169),
    ("prefill", "tokenpacker@1/4"): (108603904.0, 108603904.0, 49),
    ("decode", "laco@1/4"): (1383424.0, 1383424.0, 49),
}


def test_quick_run_counts_and_predicts_what_it_always_did(quick_run):
    out, _ = quick_run
    data = json.loads((out / "bench.json").read_text())
    for (kind, name), (counted, predicted, tokens) in QUICK_PINNED.items():
        row = data["measurements"][kind][name]
        assert (row["flops_counted"], row["flops"], row["tokens"]) == (counted, predicted, tokens)


def test_quick_run_prints_tables_and_summary(tmp_path, capsys):
    run_benchmark(
        quick=True,
        measure=["encoder", "prefill"],
        methods=["laco", "avgpool"],
        two_stage=None,
        progress=False,
        out=tmp_path,
        plot=False,
    )
    text = capsys.readouterr().out
    assert "== encoder" in text and "== prefill" in text and "== train" not in text
    assert "== summary" in text and "laco@1/4 (after layer 3 of 12) vs external" in text
    assert "FLOP bound" in text and "avgpool@1/4" in text
    assert (tmp_path / "bench.json").exists() and not (tmp_path / "bench.png").exists()


def test_llm_layer_scaling_is_stated(tmp_path, capsys):
    result = run_benchmark(
        quick=True, llm_layers=1, measure=["prefill"], methods=["laco"], depths=["1/4"], two_stage=None, progress=False
    )
    assert result.settings.llm_layers == 1 and result.settings.llm_layers_full == TINY_LLM.layers
    assert result.settings.to_dict()["llm_layers"] == 1
    row = result.rows["prefill"]["laco@1/4"]
    assert all(scaled > raw for scaled, raw in zip(row.samples.seconds, row.phase("wall")))
    assert row.facts["flops_predicted"] < row.flops
    assert "LLM timed with 1 of 2" in capsys.readouterr().out


def test_errors_name_the_fix():
    assert main(["--quick", "--no-progress", "--measure", "encoder,inference", "--out", "/nonexistent/x"]) == 2
    with pytest.raises(ValueError, match="only 'encoder'"):
        run_benchmark("dinov2-s", measure=["train"], progress=False, echo=False)
    with pytest.raises(ValueError, match="unknown preset"):
        run_benchmark("llava-ov-13b", progress=False, echo=False)
    with pytest.raises(ValueError, match="unknown measurement 'inference'"):
        run_benchmark(quick=True, measure=["inference"], progress=False, echo=False)


def test_activation_estimate_covers_what_a_training_step_saves(quick_run):
    out, _ = quick_run
    saved = json.loads((out / "bench.json").read_text())["measurements"]["train"]["none"]["memory"]["bytes"]
    tiny = PRESETS["tiny"]
    estimate = training_activation_bytes(
        TINY_ENCODER, TINY_LLM, element_bytes=4, prompt_tokens=tiny.prompt_tokens, answer_tokens=tiny.answer_tokens
    )
    assert saved <= estimate <= 1.5 * saved  # covers it, with the loss's transients, and not wildly more


def test_a_training_step_that_cannot_fit_is_refused_before_it_starts(monkeypatch, capsys):
    monkeypatch.setattr(machine_module, "memory_gib", lambda field: 0.001)
    with pytest.raises(MemoryError, match=r"at batch 3 needs .*--batch"):
        run_benchmark(quick=True, batch=3, measure=["train"], two_stage=None, progress=False, echo=False)
    assert main(["--quick", "--no-progress", "--no-plot", "--measure", "train", "--out", "/nonexistent/x"]) == 2
    assert "activations" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Compiled models


def test_compiled_quick_run(tmp_path, capsys):
    options = ["--quick", "--no-progress", "--no-plot", "--methods", "laco", "--depths", "1/4", "--two-stage", "none"]
    assert main([*options, "--compile", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "cpu float32, compiled" in text and "decode not timed" in text
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["settings"]["compile"] is True and data["settings"]["warmup"] == 2
    assert list(data["measurements"]) == ["encoder", "train", "prefill"]  # decode left out of the defaults
    for rows in data["measurements"].values():
        for row in rows.values():
            assert row["flops_counted"] == pytest.approx(row["flops_predicted"], rel=0.02)
            assert len(row["seconds"]) == 3 and all(s > 0 for s in row["seconds"])
    assert data["measurements"]["train"]["none"]["memory"]["bytes"] > 0  # counted eagerly, saved-tensor hooks work


def test_compile_errors_name_the_fix():
    with pytest.raises(ValueError, match="does not time decode"):
        run_benchmark(quick=True, compile=True, measure=["decode"], progress=False, echo=False)
    with pytest.raises(ValueError, match="--warmup >= 2"):
        run_benchmark(quick=True, compile=True, warmup=1, measure=["encoder"], progress=False, echo=False)
