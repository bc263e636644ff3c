"""Tiny training runs for the fault tests: one config shape, exact comparison of saved models, kills at exact points."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from laco.cli import main
from laco.train.hf_trainer import LacoTrainer

from tiny_models import run_config as tiny_run_config

REPO = Path(__file__).resolve().parents[2]
KILL_AT = Path(__file__).with_name("kill_at.py")

# Two stages of 4 and 6 steps, a checkpoint every 2: stage 2 holds checkpoints 2, 4 and 6 over its life, and the
# last two are on disk at any time. Eval: 8 questions in batches of 4 (two generate calls).
STEPS = (4, 6)
SAVE_STEPS = 2


def run_config(parts: tuple[Path, Path, Path, Path], output: Path, **changes: Any) -> dict[str, Any]:
    """The fault tests' run config as plain data; ``changes`` replace top-level sections' keys (``data={...}``)."""
    return tiny_run_config(
        parts, output, name="faults", steps=STEPS, save_steps=SAVE_STEPS, eval_batch_size=4, **changes
    )


def write_run_config(path: Path, parts, output: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump(run_config(parts, output, **changes)))
    return path


def assert_same_model(directory: Path, expected: Path) -> None:
    """Every tensor of ``directory/model.safetensors`` equals ``expected``'s, bit for bit, under the same names."""
    got, want = load_file(directory / "model.safetensors"), load_file(expected / "model.safetensors")
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
    different = [key for key in want if not torch.equal(got[key], want[key])]
    assert not different, f"{len(different)} of {len(want)} tensors differ, e.g. {different[:5]}"


def eval_predictions(run: Path) -> dict[str, Any]:
    """``eval.json`` without its wall time."""
    result = json.loads((run / "eval.json").read_text())
    result.pop("seconds")
    return result


def kill_at(target: str, call: int, *laco_args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m laco ARGS`` and SIGKILL it at the ``call``-th call of ``target`` ("module:Owner.name")."""
    command = [sys.executable, str(KILL_AT), target, str(call), *laco_args]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == -9, (
        f"expected a SIGKILL at call {call} of {target}, got rc {process.returncode}:\n"
        + process.stdout[-2000:]
        + process.stderr[-3000:]
    )
    return process


CRASH_AT_STAGE2_STEP5 = STEPS[0] + 5  # stage 2's checkpoints 2 and 4 are on disk


def crash_run(parts, directory: Path, step_call: int = CRASH_AT_STAGE2_STEP5) -> Path:
    """A run that stopped with an error at training step call ``step_call``; returns its config file."""
    config = write_run_config(directory / "run.yaml", parts, directory / "run")
    original, calls = LacoTrainer.training_step, 0

    def crash(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == step_call:
            raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LacoTrainer, "training_step", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main(["train", "--config", str(config), "--no-eval"])
    return config


def copy_of(crashed: Path, tmp_path: Path) -> Path:
    """A copy of the crashed run (its config pointing at the copy); returns the copy's config file."""
    shutil.copytree(crashed / "run", tmp_path / "run")
    config = tmp_path / "run.yaml"
    config.write_text((crashed / "run.yaml").read_text().replace(str(crashed / "run"), str(tmp_path / "run")))
    return config
