"""Weights that do not fit their config, and pickle files, are refused by every loader, naming what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import laco
from laco.cli import main
from laco.config import load_config
from laco.digests import DIGESTS_FILE
from laco.train import train

from faults.runs import write_run_config


def _damaged_copy(final: Path, tmp_path: Path, change) -> Path:
    """A copy of a trained model directory whose weights went through ``change(dict) -> dict``, re-saved by hand
    (so without laco's digests, which would refuse the changed file first: tests/faults/test_refusals.py)."""
    copy = tmp_path / "model"
    shutil.copytree(final, copy)
    weights = load_file(copy / "model.safetensors")
    save_file(change(weights), copy / "model.safetensors", metadata={"format": "pt"})
    (copy / DIGESTS_FILE).unlink()
    return copy


def _without(fragment: str):
    return lambda weights: {key: value for key, value in weights.items() if fragment not in key}


def _moved_compressor(weights):  # saved after layer 1 while the config says layer 2
    return {key.replace("layer.1.laco_compressor", "layer.0.laco_compressor"): value for key, value in weights.items()}


def _reshaped_compressor(weights):
    key = next(k for k in weights if "laco_compressor" in k and k.endswith("bias"))
    return {**weights, key: torch.zeros(weights[key].shape[0] + 1)}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_without("laco_compressor"), r"missing: model\.vision_tower\.encoder\.layer\.1\.laco_compressor"),
        (_without("language_model"), r"missing: .*language_model"),
        (_moved_compressor, r"missing: .*layer\.1\.laco_compressor.*unexpected: .*layer\.0\.laco_compressor"),
        (_reshaped_compressor, r"another shape"),
    ],
    ids=["no-compressor", "no-llm", "compressor-of-another-layer", "mis-shaped"],
)
@pytest.mark.parametrize("command", ["eval", "generate"])
def test_weights_that_do_not_fit_the_config_are_refused(
    command: str, change, named: str, reference: Path, parts, tmp_path: Path
) -> None:
    model = _damaged_copy(reference / "final", tmp_path, change)
    _, _, data_json, images = parts
    if command == "eval":
        arguments = ["eval", "--model", str(model), "--eval-json", str(data_json), "--image-folder", str(images)]
    else:
        arguments = ["generate", "--model", str(model), "--image", str(images / "images" / "0.png"), "--prompt", "?"]
    with pytest.raises(SystemExit, match=named):
        main(arguments)


def _pickled(directory: Path) -> Path:
    """``directory`` with its safetensors weights replaced by a (benign, test-made) pickle file."""
    weights = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(weights, directory / "pytorch_model.bin")
    return directory


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything unpickles: refusing must happen before reading the file."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle file was loaded")

    monkeypatch.setattr(torch, "load", refuse)


def test_eval_and_generate_refuse_pickle_weights(reference: Path, parts, tmp_path: Path, no_unpickling) -> None:
    model = _pickled(shutil.copytree(reference / "final", tmp_path / "model"))
    _, _, data_json, images = parts
    with pytest.raises(SystemExit, match=r"pickle file\(s\) \['pytorch_model\.bin'\].*safetensors only"):
        main(["eval", "--model", str(model), "--eval-json", str(data_json), "--image-folder", str(images)])
    with pytest.raises(SystemExit, match="safetensors only"):
        main(["generate", "--model", str(model), "--image", str(images / "images" / "0.png"), "--prompt", "?"])


@pytest.mark.parametrize("part", ["vision", "llm"])
def test_vision_and_llm_refuse_pickle_weights(part: str, parts, tmp_path: Path, no_unpickling) -> None:
    vision, llm, _, _ = parts
    directory = _pickled(shutil.copytree(vision if part == "vision" else llm, tmp_path / part))
    config = write_run_config(tmp_path / "run.yaml", parts, tmp_path / "run", model={part: str(directory)})
    with pytest.raises(ValueError, match="safetensors only"):
        train(load_config(config), quiet=True)


def test_a_vision_encoder_whose_weights_do_not_fit_is_refused(parts, tmp_path: Path) -> None:
    vision, _, _, _ = parts
    directory = shutil.copytree(vision, tmp_path / "vision")
    weights = load_file(directory / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.3." not in k}, directory / "model.safetensors")
    config = write_run_config(tmp_path / "run.yaml", parts, tmp_path / "run", model={"vision": str(directory)})
    with pytest.raises(ValueError, match=r"missing: .*layer\.3\."):
        train(load_config(config), quiet=True)


def test_laco_load_refuses_pickle_weights(tmp_path: Path, no_unpickling) -> None:
    from tiny_models import tiny_encoder

    encoder = laco.apply(tiny_encoder("dinov2"), layer=2)
    encoder.save_pretrained(tmp_path / "encoder")
    with pytest.raises(ValueError, match="safetensors only"):
        laco.load(_pickled(tmp_path / "encoder"))
