"""Hostile values from the command line, configs and the Python API: refused at once, naming the value and the fix."""

from __future__ import annotations

import time

import pytest

import laco
from laco.cli import main
from laco.config import load_config
from laco.study import load_study_config

from tiny_models import tiny_encoder


def test_a_set_learning_rate_in_exponent_notation_is_a_number() -> None:
    # YAML 1.1 reads 1e-3 (no decimal point) as a string; Adam then failed deep inside torch
    config = load_config(None, ["stages.0.learning_rate=1e-3", "stages.1.part_learning_rates.projector=2e-4"])
    assert config.stages[0].learning_rate == 1e-3 and isinstance(config.stages[0].learning_rate, float)
    assert config.stages[1].part_learning_rates["projector"] == 2e-4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.gradient_checkpointing=maybe", "training.gradient_checkpointing must be true or false, got 'maybe'"),
        ("stages.0.max_steps=2.5", "stages.0.max_steps must be a whole number, got 2.5"),
        ("stages.0.learning_rate=fast", "stages.0.learning_rate must be a number such as 2e-4, got 'fast'"),
        ("stages.0.learning_rate=-1e-3", "stages.0.learning_rate must be a positive learning rate"),
        ("stages.0.warmup_ratio=2", r"stages.0.warmup_ratio must lie in \[0, 1\]"),
        ("stages.0.trainable=llm", "stages.0.trainable must be a list"),
        ("stages.5.max_steps=3", r"'5' is not an index of a list of 2"),
        ("seed=x", "seed must be a whole number"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1"),
        ("training.save_steps=0", "training.save_steps must be >= 1"),
        ("data.max_image_pixels=-5", "data.max_image_pixels must be >= 1"),
        ("model.compression.layers=1/0", "cannot read layer '1/0'"),
    ],
)
def test_a_set_value_of_the_wrong_type_or_range_is_refused(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    "arguments",
    [
        ["train", "--limit", "0"],
        ["train", "--limit", "-3"],
        ["eval", "--model", "m", "--batch-size", "0"],
        ["eval", "--model", "m", "--max-new-tokens", "0"],
        ["eval", "--model", "m", "--limit", "-1"],
        ["generate", "--model", "m", "--image", "i", "--prompt", "p", "--max-new-tokens", "0"],
        ["study", "--seeds", "0"],
        ["study", "--steps", "0"],
        ["study", "--jobs", "0"],
        ["study", "--threads", "0"],
    ],
)
def test_cli_numbers_out_of_range_are_refused(arguments: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert "out of range" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tasks": ["nosuch"]}, r"unknown or no study task\(s\) \['nosuch'\]; choose from"),
        ({"tasks": []}, "unknown or no study task"),
        ({"methods": [], "extra": []}, "select no compressed variant"),
        ({"depths": [], "extra": []}, "select no compressed variant"),
        ({"methods": ["lacoo"]}, r"unknown compressor\(s\) \['lacoo'\]"),
        ({"depths": ["1/0"]}, "cannot read layer '1/0'"),
        ({"seeds": [0, 0]}, "seeds must be distinct"),
    ],
)
def test_a_study_that_names_something_unknown_or_selects_nothing_is_refused(overrides, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_study_config(None, overrides)


def test_laco_study_refuses_an_unknown_task_before_any_work(tmp_path, capsys) -> None:
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--tasks", "nosuch", "--output-dir", str(tmp_path / "study")])
    assert exit_info.value.code == 2 and "unknown or no study task(s) ['nosuch']" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()
    assert time.perf_counter() - started < 10  # it used to train for ~10 minutes before refusing


def test_the_api_refuses_impossible_layers_and_image_sizes() -> None:
    with pytest.raises(ValueError, match="cannot read layer '1/0'"):
        laco.apply(tiny_encoder("dinov2"), layer="1/0")
    encoder = laco.apply(tiny_encoder("dinov2"), layer=2)
    for size in (-32, 0, (32, -4)):
        with pytest.raises(ValueError, match="smaller than one 4x4 patch"):
            laco.num_tokens(encoder, image_size=size)
