"""The depth curriculum (``merge_layer`` on a stage): the merge trains deep first, then where the config puts it,
carrying its weights; every stage's saved model holds its own placement, and a killed run resumes exactly."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from killed_runs import assert_same_models, kill_after_first_checkpoint
from safetensors.torch import load_file

from laco.config import load_config
from laco.train import train

from tiny_models import run_config

REPO = Path(__file__).resolve().parents[2]


def _write(path, parts, output, steps=4, save_steps=2):
    """Distil with the merge after layer 3 of the tiny DINOv2's 4, then after layer 2 (model.compression's), then
    one next-token step."""
    config = run_config(parts, output, steps=(1, 1), save_steps=save_steps)
    config["model"]["compression"] = {"layers": 2, "method": "laco-window"}
    distill = {"objective": "tower_distillation", "trainable": ["compressor"], "batch_size": 4, "learning_rate": 1e-3}
    config["stages"] = [
        {"name": "deep", "merge_layer": 3, "max_steps": steps, **distill},
        {"name": "shallow", "max_steps": steps, **distill},
        config["stages"][0],
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def _layers(model_dir):
    return json.loads((model_dir / "config.json").read_text())["vision_config"]["laco"]["layers"]


def test_each_stage_trains_the_merge_at_its_depth_and_carries_it_on(parts, tmp_path):
    train(load_config(_write(tmp_path / "run.yaml", parts, tmp_path / "run")), quiet=True)
    run = tmp_path / "run"
    assert _layers(run / "deep" / "final") == [3]
    assert _layers(run / "shallow" / "final") == [2] and _layers(run / "final") == [2]
    deep = load_file(run / "deep" / "final" / "model.safetensors")
    shallow = load_file(run / "shallow" / "final" / "model.safetensors")
    merge = [key for key in deep if ".layer.2.laco_compressor." in key]
    assert merge and not any(".layer.2.laco_compressor." in key for key in shallow)


def test_moving_the_merge_keeps_its_weights_and_the_token_count(parts):
    from laco import Placement
    from laco import patch as laco_patch
    from laco.mllm import build_mllm
    from laco.train.curriculum import move_merge

    vision, llm, _, _ = parts
    model, _ = build_mllm(str(vision), str(llm), Placement(2, "laco-window"), image_size=32)
    tower = model.model.vision_tower
    with torch.no_grad():
        for parameter in laco_patch.compressors(tower)[0].parameters():
            parameter.normal_()
    before = {k: v.clone() for k, v in laco_patch.compressors(tower)[0].state_dict().items()}
    tokens = model.config.image_seq_length
    move_merge(model, Placement(3, "laco-window").resolve(4))
    assert laco_patch.placement_of(tower).layers == (3,) and model.config.image_seq_length == tokens
    after = laco_patch.compressors(tower)[0].state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert hasattr(tower.encoder.layer[2], "laco_compressor") and not hasattr(tower.encoder.layer[1], "laco_compressor")


def test_a_killed_curriculum_resumes_exactly(parts, tmp_path):
    train(load_config(_write(tmp_path / "ref.yaml", parts, tmp_path / "ref", steps=30)), quiet=True)
    config = _write(tmp_path / "run.yaml", parts, tmp_path / "run", steps=30)
    kill_after_first_checkpoint(config, tmp_path / "run" / "shallow")
    assert (tmp_path / "run" / "deep" / "final").is_dir()
    train(load_config(config), quiet=True)
    assert_same_models(tmp_path / "run", tmp_path / "ref", ("deep/final", "shallow/final", "final"))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["stages.1.merge_layer=3"], r"stages.1.merge_layer: the last stage trains the merge where model.compression"),
        (
            ["stages.0.merge_layer=6", "model.compression.layers=[3, 6]"],
            r"stages.0.merge_layer moves one merge, and model.compression.layers=\[3, 6\] does not give exactly one",
        ),
        (["stages.0.merge_layer=deep"], r"stages.0.merge_layer: "),
        (["stages.0.merge_layer=3", "model.init_from=dst"], r"stages.0.merge_layer: a run from model.init_from keeps"),
    ],
)
def test_curriculum_config_errors_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)
