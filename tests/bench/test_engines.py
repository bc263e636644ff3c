"""What the engines share: the command line's refusals (threads, preset files, options of another engine), the
versioned result schema, and plots and ``--compare`` over runs of any engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from laco.bench import SCHEMA, main
from laco.bench import serving as serving_module
from laco.bench.plots import write_run_plot
from laco.bench.presets import PRESETS, any_preset, load_preset, preset_from_dict
from laco.bench.results import Result
from laco.bench.schema import write_result
from laco.bench.serving import ServingSettings, build_checkpoints, flop_bounds, serving_result, variant_names
from laco.bench.sweep import load_runs
from laco.measure.timing import Samples

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--quick", "--no-progress", "--no-plot", "--measure", "encoder", "--methods", "laco", "--two-stage", "none"]
PNG = b"\x89PNG\r\n\x1a\n"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen-tower"])
def test_threads_zero_and_more_than_the_usable_cores_are_refused(preset, tmp_path, capsys):
    usable = len(os.sched_getaffinity(0))
    for threads, message in (("0", "--threads 0: give 1.."), (str(usable + 1), f"--threads {usable + 1} exceeds")):
        argv = ["--preset", preset, "--threads", threads, "--no-progress", "--out", str(tmp_path)]
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert message in err and f"{usable}" in err
    assert not list(tmp_path.iterdir())


def test_a_preset_file_with_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nencoder: {name: siglip-so400m\nllm: qwen2-0.5b\n")
    assert main(["--preset", str(broken), "--no-progress", "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert f"preset file {broken} line" in err and "YAML syntax error" in err


def test_a_preset_file_names_its_engine(tmp_path):
    assert load_preset(REPO / "configs" / "bench" / "internvl-0.5b.yaml").engine == "batched"
    assert any_preset("tiny-qwen-tower").engine == "packed" and PRESETS["tiny"].engine == "batched"
    with pytest.raises(ValueError, match="engine 'packed'; a preset with these fields is 'batched'"):
        preset_from_dict({"encoder": "siglip-so400m", "engine": "packed"})


def test_engine_torch_keeps_meaning_the_presets_own(tmp_path):
    assert main(["--engine", "torch", *QUICK, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "bench.json").read_text())["engine"] == "batched"


def test_options_of_another_engine_name_theirs(capsys):
    assert main(["--quick", "--concurrency", "2", "--no-progress", "--out", "unused"]) == 2
    assert "--concurrency is for --engine vllm" in one_line_error(capsys)
    assert main(["--engine", "vllm", "--batch", "2", "--out", "unused"]) == 2
    assert "--batch is for batched presets" in one_line_error(capsys)


def test_a_result_of_a_newer_schema_is_refused_in_one_line(quick_run, tmp_path, capsys):
    out, _ = quick_run
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**json.loads((out / "bench.json").read_text()), "schema": SCHEMA + 1}))
    with pytest.raises(ValueError, match=f"has result schema {SCHEMA + 1}, newer than this laco reads"):
        load_runs([out, newer])
    assert main(["--compare", str(out), str(newer)]) == 2
    assert "update laco" in one_line_error(capsys)


def test_packed_runs_plot_and_compare_like_batched_ones(tmp_path, capsys):
    tower = ["--preset", "tiny-qwen-tower", "--sizes", "448", "--threads", "1", "--precision", "fp32", "--no-progress"]
    for reps in ("1", "2"):
        assert main([*tower, "--reps", reps, "--out", str(tmp_path / reps)]) == 0
    assert (tmp_path / "1" / "native.png").read_bytes()[:8] == PNG
    capsys.readouterr()
    assert main(["--compare", str(tmp_path / "1"), str(tmp_path / "2"), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "speed-up against reps" in text and text.count("keep_llm_tokens") == 2
    assert (tmp_path / "cmp" / "sweep.png").read_bytes()[:8] == PNG


def a_serving_result(output_tokens: int) -> Result:
    settings = ServingSettings(preset="tiny", concurrency=(1, 2), output_tokens=output_tokens)
    laco, external = variant_names(settings)
    common = {"prefill_s": [1.0], "decode_s": [0.1], "rps@1": [0.2]}
    rounds = {
        laco: {"ttft_s": [2.0], "rps@2": [0.5], **common},
        external: {"ttft_s": [4.0], "rps@2": [0.25], **common},
    }
    samples = {name: Samples([1.0], phases, [0], [slot]) for slot, (name, phases) in enumerate(rounds.items())}
    return serving_result(settings, {"cpu": "test CPU", "torch_threads": 1, "gpu": None}, 49, 20, samples)


def test_serving_results_write_the_shared_schema_plot_and_compare(tmp_path, capsys):
    paths = [write_result(a_serving_result(n).to_dict(), tmp_path / str(n)) for n in (2, 4)]
    data = json.loads(paths[0].read_text())
    assert paths[0].name == "serving.json" and data["schema"] == SCHEMA and data["engine"] == "vllm"
    assert data["headline"] == "laco@1/4" and {r["measurement"] for r in data["speedups"]} == {
        "ttft", "prefill", "decode", "rps@1", "rps@2"
    }  # fmt: skip
    assert write_run_plot(data, tmp_path / "serving.png").read_bytes()[:8] == PNG
    assert main(["--compare", *map(str, paths), "--out", str(tmp_path / "cmp")]) == 0
    assert "speed-up against output_tokens" in capsys.readouterr().out


def test_the_serving_label_follows_the_depth():
    assert variant_names(ServingSettings(depth="1/2")) == ("laco@1/2", "external")
    assert variant_names(ServingSettings(depth="0.25")) == ("laco@1/4", "external")
    assert a_serving_result(2).to_dict()["headline"] == "laco@1/4"
    shallow, deep = (flop_bounds(ServingSettings(depth=d), prompt_tokens=20)["ttft"] for d in ("1/4", "1/2"))
    assert shallow > deep > 1


def test_kept_checkpoints_are_keyed_by_variant_and_depth(tmp_path, monkeypatch):
    built = []

    def fake_build(job: dict, name: str) -> None:
        path = job["path"]
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "model.safetensors"), "w").close()
        built.append(name)

    monkeypatch.setattr(serving_module, "build_in_child", fake_build)
    models = tmp_path / "models"
    first = build_checkpoints(ServingSettings(keep_models=True), models)
    assert built == ["laco@1/4", "external"]
    again = build_checkpoints(ServingSettings(keep_models=True), models)
    assert again == first and built == ["laco@1/4", "external"]  # the same depth: reused
    other = build_checkpoints(ServingSettings(depth="1/2", keep_models=True), models)
    assert built[2:] == ["laco@1/2"] and other["laco@1/2"] != first["laco@1/4"]  # another depth: its own
    build_checkpoints(ServingSettings(llm_layers=1, keep_models=True), models)
    assert built[3:] == ["laco@1/4", "external"]  # another model under the same names: rebuilt, not reused
