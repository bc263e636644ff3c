"""A rerun over an interrupted run must ask for the same result: result-changing differences are refused, named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from laco.cli import main
from laco.train.resume import FORCED_LOG, HARMLESS, config_differences, is_harmless

from faults.runs import assert_same_model, copy_of, run_config, write_run_config


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--layers", "1"], "model.compression.layers: [2] -> [1]"),
        (["--method", "avgpool"], 'model.compression.method: "laco" -> "avgpool"'),
        (["--set", "stages.1.learning_rate=5e-4"], "stages.1.learning_rate: 0.001 -> 0.0005"),
        (["--set", "stages.1.max_steps=8"], "stages.1.max_steps: 6 -> 8"),
        (
            ["--set", "seed=1", "--set", "training.precision=bf16"],
            'seed: 0 -> 1\n  training.precision: "fp32" -> "bf16"',
        ),
    ],
)
def test_a_result_changing_rerun_is_refused_naming_each_difference(
    arguments: list[str], named: str, crashed: Path, tmp_path: Path
) -> None:
    config = copy_of(crashed, tmp_path)
    run = tmp_path / "run"
    recorded = (run / "config.yaml").read_bytes()
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(SystemExit) as refused:
        main(["train", "--config", str(config), *arguments])
    message = str(refused.value)
    assert named in message and "--output-dir" in message and "--force-config" in message
    assert (run / "config.yaml").read_bytes() == recorded, "config.yaml is written only once a config is accepted"
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before, "refused before any work"


@pytest.mark.parametrize(
    "harmless",
    [
        ["training.logging_steps=3", "training.save_steps=3", "eval.limit=4", "name=x", "data.strict=true"],
        ["training.threads=2"],
    ],
    ids=["logging-saving-eval-name", "threads"],
)
def test_harmless_changes_resume_to_the_same_model(
    harmless: list[str], crashed: Path, reference: Path, tmp_path: Path
) -> None:
    config = copy_of(crashed, tmp_path)
    assert main(["train", "--config", str(config), "--no-eval", *[f"--set={item}" for item in harmless]]) == 0
    if harmless != ["training.threads=2"]:
        assert_same_model(tmp_path / "run" / "final", reference / "final")
    else:  # another thread count sums matrix products in another order: the same training, up to rounding
        got, want = (load_file(run / "final" / "model.safetensors") for run in (tmp_path / "run", reference))
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["training"]["threads"] == (2 if harmless == ["training.threads=2"] else 1)


def test_force_config_continues_and_logs_the_override(crashed: Path, tmp_path: Path) -> None:
    config = copy_of(crashed, tmp_path)
    assert (
        main(["train", "--config", str(config), "--no-eval", "--set=stages.1.learning_rate=5e-4", "--force-config"])
        == 0
    )
    log = (tmp_path / "run" / FORCED_LOG).read_text()
    assert "stages.1.learning_rate: 0.001 -> 0.0005" in log
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["stages"][1]["learning_rate"] == 5e-4


def test_a_run_that_failed_before_any_state_takes_a_new_config(parts, tmp_path: Path) -> None:
    missing = write_run_config(tmp_path / "bad.yaml", parts, tmp_path / "run", data={"train_json": "/nonexistent"})
    with pytest.raises(SystemExit, match="LLaVA JSON file /nonexistent not found"):
        main(["train", "--config", str(missing), "--no-eval"])
    fixed = write_run_config(tmp_path / "run.yaml", parts, tmp_path / "run", seed=3)
    assert main(["train", "--config", str(fixed), "--no-eval", "--set", "stages.0.max_steps=1"]) == 0


def test_harmless_keys_are_what_a_rerun_may_change() -> None:
    plain = run_config(("v", "l", "d", "i"), Path("out"))
    changed = {**plain, "training": {**plain["training"], "threads": 4, "save_steps": 9}, "eval": {"limit": 1}}
    assert all(is_harmless(key) for key, _ in config_differences(plain, changed))
    for key in ("seed", "model.compression.layers", "data.train_json", "stages.0.learning_rate", "training.precision"):
        assert not is_harmless(key), key
    assert "eval" in HARMLESS


def test_force_config_cannot_change_the_model_of_a_finished_stage(crashed: Path, tmp_path: Path) -> None:
    # before, --layers 1 after a kill dropped the trained compressor and trained a new one with the old optimizer
    config = copy_of(crashed, tmp_path)
    with pytest.raises(SystemExit, match=r"trained with compression laco@2 .*asks for laco@1.*new --output-dir"):
        main(["train", "--config", str(config), "--layers", "1", "--force-config"])
