"""Tower distillation (``objective: tower_distillation``): a stage that teaches the compressed tower the uncompressed
tower's pooled features, on images only; it learns, trains only what it lists, and resumes exactly after a kill."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from killed_runs import assert_same_models, kill_after_first_checkpoint

from laco.config import load_config
from laco.train import train
from laco.train.resume import ConfigMismatch
from laco.train.trainer import last_complete_checkpoint

from tiny_models import run_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parts(parts):
    """The tiny parts, with the solid-colour images replaced by noise: on a solid image every 2x2 window is
    (nearly) constant, so average pooling already matches the uncompressed tower and there is nothing to learn."""
    from PIL import Image

    vision, llm, data_json, images = parts
    generator = torch.Generator().manual_seed(0)
    for path in sorted((images / "images").glob("*.png")):
        noise = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(noise.numpy()).save(path)
    return parts


def _write(path, parts, output, distill_steps=8, save_steps=4, init="zero", **stage):
    """Distillation, then one next-token stage; the merge starts as average pooling (init="zero"), which the
    uncompressed tower's features are far from (init="ffn_reuse" starts within 1e-3 of them on these images)."""
    config = run_config(parts, output, steps=(1, 1), save_steps=save_steps)
    config["model"]["compression"] = {"layers": 2, "method": "laco-window", "options": {"init": init}}
    distill = {
        "name": "distill",
        "objective": "tower_distillation",
        "trainable": ["compressor"],
        "max_steps": distill_steps,
        "batch_size": 4,
        "learning_rate": 3e-4,
        "warmup_ratio": 0.0,
        **stage,
    }
    config["stages"] = [distill, config["stages"][0]]
    path.write_text(yaml.safe_dump(config))
    return path


def _moved(config, tmp_path):
    """Names of the tensors the distillation stage changed, against the model it started from."""
    from transformers import set_seed

    from laco.mllm import LacoLlavaForConditionalGeneration
    from laco.train.trainer import _model_for_next_stage
    from laco.weights import from_pretrained_strict

    set_seed(config.seed)  # as train() does before it assembles the model
    start = _model_for_next_stage(config, tmp_path / "fresh")[0].state_dict()
    after = from_pretrained_strict(
        LacoLlavaForConditionalGeneration, tmp_path / "run" / "distill" / "final"
    ).state_dict()
    return {key for key in after if not torch.equal(after[key], start[key])}


def _losses(stage_dir):
    checkpoint = last_complete_checkpoint(stage_dir, tidy=False)
    history = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.parametrize("distill_loss", ["mse", "cosine"])
def test_distillation_lowers_its_loss_and_moves_only_the_merge(parts, tmp_path, distill_loss):
    config = load_config(_write(tmp_path / "run.yaml", parts, tmp_path / "run", distill_loss=distill_loss))
    summary = train(config, quiet=True)
    assert [s["name"] for s in summary["stages"]] == ["distill", "stage1"]
    losses = _losses(tmp_path / "run" / "distill")
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses

    moved = _moved(config, tmp_path)
    assert moved and all("laco_compressor" in key for key in moved), sorted(moved)[:5]

    changed = load_config(
        tmp_path / "run.yaml", [f"stages.0.distill_loss={'cosine' if distill_loss == 'mse' else 'mse'}"]
    )
    with pytest.raises(ConfigMismatch, match="stages.0.distill_loss"):
        train(changed, quiet=True)


def test_distillation_can_train_the_layers_after_the_merge(parts, tmp_path):
    config = load_config(
        _write(
            tmp_path / "run.yaml",
            parts,
            tmp_path / "run",
            distill_steps=2,
            trainable=["compressor", "vision_after_merge"],
            vision_learning_rate_scale=0.2,
        )
    )
    train(config, quiet=True)
    moved = _moved(config, tmp_path)
    assert any("vision_tower.encoder.layer.3." in key for key in moved)  # a block after the merge (after layer 2)
    assert not any("encoder.layer.0." in key or "language_model" in key for key in moved)


def test_a_killed_distillation_stage_resumes_exactly(parts, tmp_path):
    reference = load_config(_write(tmp_path / "ref.yaml", parts, tmp_path / "ref", distill_steps=30, save_steps=2))
    train(reference, quiet=True)

    config = _write(tmp_path / "run.yaml", parts, tmp_path / "run", distill_steps=30, save_steps=2)
    kill_after_first_checkpoint(config, tmp_path / "run" / "distill")

    train(load_config(config), quiet=True)
    assert_same_models(tmp_path / "run", tmp_path / "ref", ("distill/final", "final"))


def test_the_target_is_the_uncompressed_tower_pooled_through_every_merge():
    import laco
    from laco.train.distill import pooled_target, uncompressed_copy

    from tiny_models import pixels, tiny_encoder

    student = laco.apply(tiny_encoder("dinov2"), [1, 3], method="laco-window")
    teacher = uncompressed_copy(student)
    assert laco.is_patched(student) and not laco.is_patched(teacher)  # the copy's removal left the student alone
    assert not any(p.requires_grad for p in teacher.parameters())
    x = pixels()
    with torch.no_grad():
        full = teacher(x).last_hidden_state
        target = pooled_target(student, full, x)
        merged = student(x).last_hidden_state
    assert target.shape == merged.shape == (2, 1 + 4, full.shape[-1])  # CLS + the 8x8 grid merged twice: 2x2
    torch.testing.assert_close(target[:, 0], full[:, 0])
    torch.testing.assert_close(target[:, 1:], full[:, 1:].reshape(2, 2, 4, 2, 4, -1).mean((2, 4)).reshape(2, 4, -1))
