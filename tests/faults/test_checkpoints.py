"""Damaged checkpoints, the last-two rule and the run lock: a rerun never crashes on, or trains from, a bad file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from laco.cli import main
from laco.digests import DIGESTS_FILE, verify_digests
from laco.train.checkpoints import MANIFEST, checkpoint_problem, last_complete_checkpoint, prune
from laco.train.resume import RunLock

from faults.runs import STEPS, assert_same_model, copy_of, write_run_config


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damaged", ["trainer_state.json", "optimizer.pt", "model.safetensors", "scheduler.pt"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    damaged: str, crashed: Path, reference: Path, tmp_path: Path
) -> None:
    config = copy_of(crashed, tmp_path)
    stage2 = tmp_path / "run" / "stage2"
    assert sorted(p.name for p in stage2.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    _truncate(stage2 / "checkpoint-4" / damaged)
    assert damaged in checkpoint_problem(stage2 / "checkpoint-4")

    assert main(["train", "--config", str(config), "--no-eval"]) == 0
    assert (stage2 / "incomplete-checkpoint-4" / damaged).exists(), "kept aside for inspection, not deleted"
    assert_same_model(tmp_path / "run" / "final", reference / "final")


def test_a_checkpoint_whose_weights_miss_tensors_is_refused_not_resumed_from(crashed: Path, tmp_path: Path) -> None:
    # The Trainer's own loader warned "missing keys" and went on: stage 2 resumed with the stage-1 LLM.
    config = copy_of(crashed, tmp_path)
    checkpoint = tmp_path / "run" / "stage2" / "checkpoint-4"
    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layers.1." not in k}, checkpoint / "model.safetensors")
    (checkpoint / MANIFEST).unlink()  # as an older laco wrote it: the structure is sound, the content is not
    with pytest.raises(SystemExit, match=r"missing: .*language_model.*layers\.1\."):
        main(["train", "--config", str(config), "--no-eval"])


def test_a_checkpoint_written_before_manifests_is_checked_by_structure(crashed: Path, tmp_path: Path) -> None:
    copy_of(crashed, tmp_path)
    checkpoint = tmp_path / "run" / "stage2" / "checkpoint-4"
    (checkpoint / MANIFEST).unlink()
    assert checkpoint_problem(checkpoint) is None
    _truncate(checkpoint / "optimizer.pt")
    assert "optimizer.pt" in checkpoint_problem(checkpoint)
    (checkpoint / "rng_state.pth").write_bytes(b"")
    assert checkpoint_problem(checkpoint)


def test_with_every_checkpoint_damaged_the_stage_restarts_and_ends_the_same(
    crashed: Path, reference: Path, tmp_path: Path
) -> None:
    config = copy_of(crashed, tmp_path)
    for checkpoint in (tmp_path / "run" / "stage2").glob("checkpoint-*"):
        (checkpoint / "trainer_state.json").write_text('{"global_step": ')
    assert last_complete_checkpoint(tmp_path / "run" / "stage2", tidy=False) is None
    assert main(["train", "--config", str(config), "--no-eval"]) == 0
    assert_same_model(tmp_path / "run" / "final", reference / "final")


def test_the_last_two_complete_checkpoints_are_kept(reference: Path) -> None:
    for stage, steps in (("stage1", STEPS[0]), ("stage2", STEPS[1])):
        kept = sorted(reference.joinpath(stage).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        assert [p.name for p in kept] == [f"checkpoint-{steps - 2}", f"checkpoint-{steps}"]
        assert all(checkpoint_problem(p) is None and (p / MANIFEST).exists() for p in kept)


def test_a_predecessor_is_deleted_only_after_the_newest_passes_its_check(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text("{")  # the newest is bad: keep everything
    prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]


def test_a_second_run_in_the_same_directory_is_refused_with_the_holders_pid(parts, tmp_path: Path) -> None:
    config = write_run_config(tmp_path / "run.yaml", parts, tmp_path / "run")
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run"):
        with pytest.raises(SystemExit, match=rf"in use by pid {os.getpid()} .*another --output-dir"):
            main(["train", "--config", str(config)])
    assert not (tmp_path / "run" / "config.yaml").exists(), "the refused run wrote nothing"
    with RunLock(tmp_path / "run"):  # released when the holder ends
        pass


def test_eval_output_into_a_missing_directory_is_written(reference: Path, parts, tmp_path: Path) -> None:
    _, _, data_json, images = parts
    output = tmp_path / "not" / "yet" / "there.json"
    args = ["eval", "--model", str(reference / "final"), "--eval-json", str(data_json), "--image-folder", str(images)]
    assert main([*args, "--limit", "4", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["total"] == 4
    with pytest.raises(SystemExit, match="is a directory"):
        main([*args, "--output", str(tmp_path)])  # refused before the evaluation, not after it


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor (safetensors) or the archive's data: the size stays right
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_checkpoint_is_caught_by_its_digest_and_not_resumed_from(
    crashed: Path, reference: Path, tmp_path: Path, caplog
) -> None:
    config = copy_of(crashed, tmp_path)
    stage2 = tmp_path / "run" / "stage2"
    _flip_a_bit(stage2 / "checkpoint-4" / "model.safetensors")
    assert checkpoint_problem(stage2 / "checkpoint-4", content=False) is None  # the structure is intact
    assert "model.safetensors does not match the sha256" in checkpoint_problem(stage2 / "checkpoint-4")

    with caplog.at_level("WARNING"):
        assert main(["train", "--config", str(config), "--no-eval"]) == 0
    assert "model.safetensors does not match the sha256" in caplog.text
    assert (stage2 / "incomplete-checkpoint-4").exists(), "kept aside for inspection"
    assert_same_model(tmp_path / "run" / "final", reference / "final")  # resumed from checkpoint-2


def test_a_finished_stage_whose_final_changed_is_refused_on_resume(crashed: Path, tmp_path: Path) -> None:
    config = copy_of(crashed, tmp_path)
    stage1_final = tmp_path / "run" / "stage1" / "final"
    assert json.loads((stage1_final / DIGESTS_FILE).read_text())["files"]["model.safetensors"]
    _flip_a_bit(stage1_final / "model.safetensors")
    with pytest.raises(SystemExit, match=r"stage1/final: model\.safetensors does not match .* delete .*stage1/final"):
        main(["train", "--config", str(config), "--no-eval"])


def test_the_run_final_carries_digests_that_verify(reference: Path) -> None:
    assert verify_digests(reference / "final")
    recorded = json.loads((reference / "final" / DIGESTS_FILE).read_text())["files"]
    assert {"model.safetensors", "config.json", "laco_processor.json"} <= set(recorded)
