"""A run stopped anywhere (SIGKILL, a full disk), then run again, ends with the model an uninterrupted run saves.

Every case reruns the same command and compares each saved model (both stages' and the published ``final/``)
tensor by tensor with the reference run, bit for bit, and the evaluation's predictions exactly.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from laco.cli import main

from faults.runs import STEPS, assert_same_model, eval_predictions, kill_at, write_run_config

STAGE2_STEP3 = STEPS[0] + 3  # the training step call that is stage 2's third step (stage 2's checkpoint-2 is done)

# point -> (target, which call of it is the kill, what the run directory must show afterwards)
KILL_POINTS = {
    "in stage 2": ("laco.train.hf_trainer:LacoTrainer.training_step", STAGE2_STEP3),
    "between the stages": ("laco.train.trainer:_model_for_next_stage", 2),
    "during the final save": ("laco.mllm.processing:LacoProcessor.save_pretrained", 2),
    "during evaluation": ("laco.evaluate:answer", 2),
}


def _assert_killed_where_intended(point: str, run: Path) -> None:
    stage1_done = (run / "stage1" / "final" / "laco-stage-done.json").exists()
    stage2_done = (run / "stage2" / "final" / "laco-stage-done.json").exists()
    assert stage1_done, "every kill point is after stage 1"
    if point == "in stage 2":
        assert not stage2_done and (run / "stage2" / "checkpoint-2").is_dir()
    elif point == "between the stages":
        assert not (run / "stage2").exists()
    elif point == "during the final save":
        assert (run / "stage2" / "final" / "model.safetensors").exists() and not stage2_done
    else:
        assert (run / "final" / "model.safetensors").exists() and not (run / "eval.json").exists()


def _assert_same_run(run: Path, reference: Path) -> None:
    for model in ("stage1/final", "stage2/final", "final"):
        assert_same_model(run / model, reference / model)
    assert eval_predictions(run) == eval_predictions(reference)


@pytest.mark.parametrize(
    "point",
    [
        "in stage 2",
        "between the stages",
        "during the final save",
        "during evaluation",
    ],
)
def test_a_killed_run_reruns_to_the_same_model(point: str, parts, reference: Path, tmp_path: Path) -> None:
    config = write_run_config(tmp_path / "run.yaml", parts, tmp_path / "run")
    target, call = KILL_POINTS[point]
    kill_at(target, call, "train", "--config", str(config))
    _assert_killed_where_intended(point, tmp_path / "run")

    assert main(["train", "--config", str(config)]) == 0
    _assert_same_run(tmp_path / "run", reference)


def _fill_disk_at(monkeypatch, module, name: str, matches, nth: int) -> None:
    """Make ``module.name`` (a save function taking ``(obj, path)``) write a part and fail with ENOSPC at its
    ``nth`` call whose path ``matches``: what a full disk does to the save in progress."""
    original = getattr(module, name)
    seen = 0

    def save(obj, path, *args, **kwargs):
        nonlocal seen
        if matches(str(path)):
            seen += 1
            if seen == nth:
                Path(path).write_bytes(b"PK\x03\x04" + bytes(64))
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(module, name, save)


@pytest.mark.parametrize("where", ["a stage-2 checkpoint's optimizer", "stage 1's final weights"])
def test_a_full_disk_then_a_rerun_with_space_gives_the_same_model(
    where: str, parts, reference: Path, tmp_path: Path, monkeypatch
) -> None:
    import transformers.modeling_utils

    config = write_run_config(tmp_path / "run.yaml", parts, tmp_path / "run")
    with monkeypatch.context() as patch:
        if where == "a stage-2 checkpoint's optimizer":
            _fill_disk_at(patch, torch, "save", lambda path: "stage2" in path and path.endswith("optimizer.pt"), 2)
        else:
            _fill_disk_at(patch, transformers.modeling_utils, "safe_save_file", lambda p: "stage1/final" in p, 1)
        # one line, not a traceback: it names the file and says to free space and rerun
        with pytest.raises(SystemExit, match=r"laco train: a file could not be written: .*No space left.*free space"):
            main(["train", "--config", str(config)])
    assert main(["train", "--config", str(config)]) == 0
    _assert_same_run(tmp_path / "run", reference)


def test_a_reloaded_stage_trains_like_the_one_in_memory(reference: Path) -> None:
    """The Trainer writes the tokenizer's pad id (EOS) into the saved config; a model loaded from it must not get an
    embedding padding row (which freezes EOS's embedding) that the model assembled in memory never had."""
    from laco.evaluate import load_model

    model, processor = load_model(reference / "stage1" / "final")
    assert model.config.text_config.pad_token_id == processor.tokenizer.eos_token_id
    assert model.get_input_embeddings().padding_idx is None
