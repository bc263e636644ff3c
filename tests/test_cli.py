"""The laco command: help texts, and train -> eval -> generate on tiny local models (plus the real default, quick)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from laco.cli import build_parser, main

from tiny_models import save_tiny_parts, write_color_dataset, write_run_config

REPO = Path(__file__).resolve().parents[1]


def test_every_subcommand_explains_its_options(capsys):
    for command in ("train", "eval", "generate"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        actions = next(a for a in build_parser()._subparsers._group_actions).choices[command]._actions
        for action in actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{command} {action.option_strings} has no help"
                assert action.option_strings[-1] in text
    for command in ("bench", "study"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--quick" in capsys.readouterr().out


def test_bad_config_key_is_reported(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  visoin: dinov2-small\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['visoin'\] in model"):
        main(["train", "--config", str(config)])


def test_train_eval_generate_on_tiny_models(tmp_path, capsys):
    vision, llm = save_tiny_parts(tmp_path)
    data_json, images = write_color_dataset(tmp_path / "data", count=16)
    config = write_run_config(
        tmp_path / "tiny.yaml", (vision, llm, data_json, images), tmp_path / "run", steps=(2, 2), save_steps=100
    )
    assert main(["train", "--config", str(config), "--layers", "1/2", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "stage1: 2 steps" in out and "stage2: 2 steps" in out
    final = tmp_path / "run" / "final"
    assert json.loads((final / "config.json").read_text())["vision_config"]["laco"]["layers"] == [2]

    result = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(final),
                "--eval-json",
                str(data_json),
                "--image-folder",
                str(images),
                "--limit",
                "8",
                "--output",
                str(result),
            ]
        )
        == 0
    )
    assert "exact match" in capsys.readouterr().out
    scored = json.loads(result.read_text())
    assert scored["total"] == 8 and len(scored["predictions"]) == 8 and 0 <= scored["accuracy"] <= 1

    assert (
        main(
            [
                "generate",
                "--model",
                str(final),
                "--image",
                str(images / "images" / "0.png"),
                "--prompt",
                "what color is the shape?",
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    # one answer line (a tiny random LLM may well answer with nothing printable, but it answers)
    assert capsys.readouterr().out.count("\n") == 1


def test_generate_reports_a_missing_image(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        main(["generate", "--model", str(tmp_path), "--image", str(tmp_path / "nope.png"), "--prompt", "hi"])


@pytest.mark.slow
def test_default_run_quick_with_real_weights(tmp_path):
    """`laco train --quick`: the embedded default (DINOv2-S + SmolLM2-135M on easy-VQA), 4 steps per stage."""
    command = [sys.executable, "-m", "laco", "train", "--quick", "--output-dir", str(tmp_path / "run")]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "eval (test): exact match" in process.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["steps"] for s in summary["stages"]] == [4, 4]
    chosen = summary["precision"]  # what auto chose on this machine, and why, in the log and the summary
    assert chosen["requested"] == "auto" and chosen["name"] in ("bf16", "fp32") and chosen["reason"]
    assert f"precision: {chosen['name']} ({chosen['reason']})" in process.stdout
