"""Staged training end to end on tiny models: stages, checkpoints, resume after a kill, 2-process DDP."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killed_runs import assert_same_models, kill_after_first_checkpoint
from safetensors.torch import load_file

from laco.config import load_config
from laco.train import train
from laco.train.trainer import last_complete_checkpoint

from tiny_models import write_run_config as write_config

REPO = Path(__file__).resolve().parents[2]


def test_stages_run_and_write_a_loadable_final_model(parts, tmp_path):
    config = load_config(write_config(tmp_path / "run.yaml", parts, tmp_path / "run"))
    summary = train(config, quiet=True)
    assert summary["precision"]["name"] == "fp32" and summary["precision"]["requested"] == "fp32"
    assert [s["name"] for s in summary["stages"]] == ["stage1", "stage2"]
    assert all(s["steps"] == 3 and s["images_per_second"] > 0 for s in summary["stages"])
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and (final / "laco_processor.json").exists()
    assert not [p for p in final.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    saved = json.loads((final / "config.json").read_text())
    assert saved["vision_config"]["laco"]["layers"] == [2]
    # the full processor, not only its tokenizer (what AutoProcessor gave before processor_config.json)
    from transformers import AutoProcessor

    from laco.mllm import LacoProcessor

    processor = AutoProcessor.from_pretrained(final)
    assert isinstance(processor, LacoProcessor) and processor.num_image_tokens == saved["image_seq_length"]
    # stage 1 changed only the merge and the projector
    before = load_file(tmp_path / "run" / "stage1" / "final" / "model.safetensors")
    after_stage2 = load_file(final / "model.safetensors")
    llm_key = next(k for k in before if "language_model" in k and "layers.0.mlp" in k)
    assert not torch.equal(before[llm_key], after_stage2[llm_key])

    # a finished run is not trained again
    again = train(config, quiet=True)
    assert [s["steps"] for s in again["stages"]] == [3, 3]


def test_the_run_trains_and_saves_the_image_position_it_was_given(parts, tmp_path):
    config = load_config(
        write_config(tmp_path / "run.yaml", parts, tmp_path / "run", steps=(1, 1)),
        ["model.image_position=after_question"],
    )
    train(config, quiet=True)
    from laco.mllm import LacoProcessor

    # eval, generate and lmms-eval read the checkpoint's processor, so they ask questions in the trained layout
    assert LacoProcessor.from_pretrained(tmp_path / "run" / "final").image_position == "after_question"


def test_an_incomplete_checkpoint_is_skipped(tmp_path):
    for step, complete in ((2, True), (4, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        if complete:
            (checkpoint / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "incomplete-checkpoint-4").exists()


def _run_cli(config: Path, *launcher: str) -> subprocess.Popen:
    command = [*launcher, "-m", "laco", "train", "--config", str(config), "--no-eval"]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_exactly(parts, tmp_path):
    steps = (40, 2)
    reference = load_config(write_config(tmp_path / "ref.yaml", parts, tmp_path / "ref", steps=steps, save_steps=2))
    train(reference, quiet=True)

    config = write_config(tmp_path / "run.yaml", parts, tmp_path / "run", steps=steps, save_steps=2)
    stage1 = tmp_path / "run" / "stage1"
    kill_after_first_checkpoint(config, stage1)
    killed_at = int(Path(last_complete_checkpoint(stage1, tidy=False)).name.split("-")[1])
    assert killed_at < steps[0]

    train(load_config(config), quiet=True)
    assert_same_models(tmp_path / "run", tmp_path / "ref", ("final",))


def test_two_process_ddp_on_cpu(parts, tmp_path):
    config = write_config(tmp_path / "ddp.yaml", parts, tmp_path / "ddp", steps=(2, 2), save_steps=100)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531")
    process = _run_cli(config, *launcher)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert [s["steps"] for s in summary["stages"]] == [2, 2]
    # two processes, batch 4 each: 8 images per step reached the model
    assert all(s["world_size"] == 2 and s["images"] == 2 * 4 * 2 for s in summary["stages"])
    assert (tmp_path / "ddp" / "final" / "model.safetensors").exists()


def test_part_learning_rates_make_parameter_groups(parts, tmp_path):
    from laco import Placement
    from laco.mllm import build_mllm
    from laco.train import LacoTrainer, part_parameters, set_trainable
    from laco.train.trainer import _training_arguments

    config = load_config(write_config(tmp_path / "run.yaml", parts, tmp_path / "run"))
    config.stages[1].part_learning_rates = {"projector": 1e-2}
    vision, llm, _, _ = parts
    model, _ = build_mllm(str(vision), str(llm), Placement(2), image_size=32)
    set_trainable(model, config.stages[1].trainable)
    trainer = LacoTrainer(
        model=model,
        args=_training_arguments(config, 1, tmp_path / "out"),
        part_learning_rates=config.stages[1].part_learning_rates,
    )
    optimizer = trainer.create_optimizer()
    projector = {id(p) for p in part_parameters(model, "projector")}
    for group in optimizer.param_groups:
        in_projector = {id(p) in projector for p in group["params"]}
        assert len(in_projector) == 1
        assert group["lr"] == (1e-2 if in_projector.pop() else config.stages[1].learning_rate)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable


def test_answer_balanced_sampling_weights(parts):
    from laco.data import LlavaDataset, answer_balanced_weights
    from laco.mllm.processing import ImageTransform, LacoProcessor

    from tiny_models import tiny_tokenizer

    _, _, data_json, images = parts
    processor = LacoProcessor(tiny_tokenizer(), ImageTransform(32), num_image_tokens=4)
    dataset = LlavaDataset(data_json, images, processor, progress=False, limit=10)  # answers: 3, 3, 2, 2 of 4 colours
    for strength, expected in ((1.0, {3: 1.0, 2: 1.0}), (0.5, {3: 3**0.5, 2: 2**0.5}), (0.0, {3: 3.0, 2: 2.0})):
        weights = answer_balanced_weights(dataset, strength)
        totals, counts = {}, {}
        for record, weight in zip(dataset.records, weights.tolist()):
            totals[record.answers[0]] = totals.get(record.answers[0], 0.0) + weight
            counts[record.answers[0]] = counts.get(record.answers[0], 0) + 1
        assert all(totals[a] == pytest.approx(expected[counts[a]]) for a in totals)


def test_question_balanced_weights_give_each_question_its_share_and_its_answers_equal_shares():
    from types import SimpleNamespace

    from laco.data import answer_balanced_weights

    pairs = (
        [("is it red?", "no")] * 9 + [("is it red?", "yes")] + [("what colour?", "red"), ("what colour?", "blue")] * 2
    )
    records = [SimpleNamespace(questions=(f"<image> {q}",), answers=(a,)) for q, a in pairs]
    weights = answer_balanced_weights(SimpleNamespace(records=records), 1.0, by="question").tolist()
    mass: dict[tuple[str, str], float] = {}
    for (question, answer), weight in zip(pairs, weights):
        mass[question, answer] = mass.get((question, answer), 0.0) + weight
    assert mass["is it red?", "no"] == pytest.approx(5.0) and mass["is it red?", "yes"] == pytest.approx(5.0)
    assert mass["what colour?", "red"] == pytest.approx(2.0) and mass["what colour?", "blue"] == pytest.approx(2.0)
    natural = answer_balanced_weights(SimpleNamespace(records=records), 0.0, by="question")
    assert natural.tolist() == [1.0] * len(pairs)
    with pytest.raises(ValueError, match="balance by 'image' is unknown"):
        answer_balanced_weights(SimpleNamespace(records=records), 1.0, by="image")


def test_sparse_loss_equals_the_full_lm_loss(parts, tmp_path):
    from laco import Placement
    from laco.data import LlavaDataset, MultimodalCollator
    from laco.mllm import LacoProcessor, build_mllm
    from laco.train import LacoTrainer
    from laco.train.trainer import _training_arguments

    vision, llm, data_json, images = parts
    model, processor = build_mllm(str(vision), str(llm), Placement(2), image_size=32)
    assert isinstance(processor, LacoProcessor)
    dataset = LlavaDataset(data_json, images, processor, progress=False, limit=6)
    batch = MultimodalCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(6)])
    config = load_config(write_config(tmp_path / "run.yaml", parts, tmp_path / "run"))
    trainer = LacoTrainer(model=model, args=_training_arguments(config, 0, tmp_path / "out"))
    full = model(**batch).loss
    sparse = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(sparse, full)
