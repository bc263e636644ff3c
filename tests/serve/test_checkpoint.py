"""What a server reads from a laco checkpoint before loading weights: placeholder counts and refusals (no vLLM)."""

from __future__ import annotations

import json

import pytest

import laco.serve.launch
from laco.placement import FORMAT
from laco.serve import CheckpointError, read_checkpoint
from laco.serve.launch import cpu_problem, serve_python

from serve.conftest import save_tiny_laco

PLACEMENTS = [None, "last", "1/4"]


@pytest.mark.parametrize("family", ["siglip", "clip", "dinov2", "aimv2", "internvit"])
@pytest.mark.parametrize("layers", PLACEMENTS)
def test_placeholder_count_comes_from_the_saved_settings(tmp_path, family, layers):
    directory = save_tiny_laco(tmp_path / "model", family, layers)
    spec = read_checkpoint(directory)
    saved = json.loads((directory / "laco_processor.json").read_text())
    assert spec.num_image_tokens == saved["num_image_tokens"]
    # The 8x8 grid (CLS, where there is one, is dropped by LLaVA's "default" strategy), or its 2x2 merge.
    assert spec.num_image_tokens == (64 if layers is None else 16)
    assert (spec.settings is None) == (layers is None)
    assert spec.image_size == 32 and spec.image_token == "<image>" and spec.system_prompt == ""


def _edit_config(directory, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny_laco(tmp_path / "model", "dinov2", "1/4")


def test_refuses_a_checkpoint_without_laco_settings(checkpoint):
    _edit_config(checkpoint, lambda config: config["vision_config"].pop("laco"))
    with pytest.raises(CheckpointError, match=r"no LaCo settings: vision_config.laco is missing"):
        read_checkpoint(checkpoint)


def test_refuses_settings_from_a_newer_laco(checkpoint):
    _edit_config(checkpoint, lambda config: config["vision_config"]["laco"].update(format=FORMAT + 1))
    with pytest.raises(CheckpointError, match=r"saved in format 2, newer than this laco reads \(1\); upgrade laco"):
        read_checkpoint(checkpoint)


def test_reads_settings_saved_before_the_format_was_recorded(checkpoint):
    _edit_config(checkpoint, lambda config: config["vision_config"]["laco"].pop("format"))
    assert read_checkpoint(checkpoint).settings.layers == (1,)


def test_refuses_disagreeing_placeholder_counts(checkpoint):
    _edit_config(checkpoint, lambda config: config.update(image_seq_length=99))
    with pytest.raises(CheckpointError, match=r"give 16 image tokens .* image_seq_length = 99"):
        read_checkpoint(checkpoint)


def test_refuses_a_missing_processor_file_and_a_foreign_model(checkpoint):
    (checkpoint / "laco_processor.json").unlink()
    with pytest.raises(CheckpointError, match=r"no laco_processor.json"):
        read_checkpoint(checkpoint)
    _edit_config(checkpoint, lambda config: config.update(model_type="llava"))
    with pytest.raises(CheckpointError, match=r"'llava' checkpoint, not a laco one"):
        read_checkpoint(checkpoint)


def test_serving_environment_problems_are_explained(tmp_path):
    with pytest.raises(laco.serve.launch.ServeUnavailable, match=r"scripts/install-serve.sh"):
        serve_python(tmp_path / "nope" / "python")
    assert cpu_problem() is None or "AVX" in cpu_problem() or "x86-64" in cpu_problem()


def test_the_server_refuses_a_changed_file_by_name_and_serves_one_without_digests(checkpoint):
    from laco.digests import DIGESTS_FILE, write_digests

    assert read_checkpoint(checkpoint, verify_files=True).num_image_tokens == 16  # saved by hand: no digests
    write_digests(checkpoint)
    assert read_checkpoint(checkpoint, verify_files=True).num_image_tokens == 16
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the sha256"):
        read_checkpoint(checkpoint, verify_files=True)
    (checkpoint / DIGESTS_FILE).unlink()
    weights.write_bytes(bytes(data[:100]))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is cut short"):
        read_checkpoint(checkpoint, verify_files=True)
