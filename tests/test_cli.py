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


def _conversations(directory: Path) -> tuple[Path, Path]:
    """LLaVA records as users have them: several images, several turns, non-square pictures."""
    from PIL import Image

    (directory / "images").mkdir(parents=True)
    for name, colour, size in (("red", (220, 30, 30), (48, 32)), ("blue", (30, 40, 220), (32, 40))):
        Image.new("RGB", size, colour).save(directory / "images" / f"{name}.png")
    records = [
        {
            "id": f"pair-{i}",
            "image": ["images/red.png", "images/blue.png"],
            "conversations": [
                {"from": "human", "value": "<image>\nwhat color is the shape?"},
                {"from": "gpt", "value": "red"},
                {"from": "human", "value": "and in <image>?"},
                {"from": "gpt", "value": "blue"},
            ],
        }
        for i in range(4)
    ] + [
        {
            "id": f"single-{i}",
            "image": "images/blue.png",
            "conversations": [
                {"from": "human", "value": "<image>\nwhat color is the shape?"},
                {"from": "gpt", "value": "blue"},
            ],
        }
        for i in range(4)
    ]
    (directory / "chat.json").write_text(json.dumps(records))
    return directory / "chat.json", directory


def test_train_eval_generate_with_several_images_and_turns(tmp_path, capsys):
    vision, llm = save_tiny_parts(tmp_path)
    data_json, folder = _conversations(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--vision", str(vision), "--llm", str(llm), "--output-dir", str(run), "--image-size", "32"]
    stage = ["--set", "stages=[{name: stage1, max_steps: 2, batch_size: 4}]", "--set", "data.max_length=128"]
    data = ["--train-json", str(data_json), "--image-folder", str(folder), "--set", f"data.eval_json={data_json}"]
    assert main(["train", *common, *stage, *data, "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "data: 8 of 8 records used, 0 skipped" in out  # multi-image records are no longer skipped as malformed
    assert "(4 multi-turn, 4 multi-image: last answer scored)" in out  # and they are evaluated

    final = str(run / "final")
    red, blue = str(folder / "images" / "red.png"), str(folder / "images" / "blue.png")
    generate = ["generate", "--model", final, "--max-new-tokens", "2"]
    assert main([*generate, "--image", red, "--image", blue, "--prompt", "<image> or <image>: which is red?"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # one question about both images: one answer
    assert main([*generate, "--image", red, "--prompt", "what color?", "--prompt", "is it a circle?"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # two questions about one image
    assert main([*generate, "--image", red, "--image", blue, "--prompt", "what?", "--prompt", "and?"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # paired in order
    with pytest.raises(SystemExit, match="got 3 --prompt and 2 --image; pass one prompt about all the images"):
        main([*generate, "--image", red, "--image", blue, "--prompt", "a", "--prompt", "b", "--prompt", "c"])
    with pytest.raises(SystemExit, match=r"holds 2 <image> tag\(s\) for 1 image"):
        main([*generate, "--image", red, "--prompt", "<image> or <image>?"])
