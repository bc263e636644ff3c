"""The shipped distributed configs, exercised: `laco train` on 2 CPU processes (gloo) with LaCo in the encoder.

FSDP2 (configs/accelerate/fsdp.yaml) always; DeepSpeed ZeRO-2 and ZeRO-3 where deepspeed is installed (it is not in
the test extras; `pip install deepspeed`, which compiles a CPU communication op with the system C++ compiler on
first use). Two processes at batch 4 each draw the same 8 records per step as one process at batch 8 (the same
seeded order, split between ranks), so the weights must match single-process training up to the order of
floating-point sums: within 1e-4 absolute, where stage 2 moves weights by ~1e-3. Each run is killed in stage 2 and
resumed from its sharded checkpoint; its final model reloads strictly and ``laco.remove`` gives back the frozen
encoder exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import laco
from laco.config import load_config
from laco.evaluate import load_model
from laco.train import train

from faults.runs import REPO, run_config
from tiny_models import tiny_encoder

CONFIGS = REPO / "configs" / "accelerate"
SHIM = Path(__file__).with_name("accelerate_cpu.py")
STEPS = (2, 3)
TOLERANCE = 1e-4
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install deepspeed)"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(launch: str, config: Path, environment: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), str(SHIM), str(CONFIGS / launch)]
    command += ["train", "--config", str(config), "--no-eval"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **environment}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


def _write(path: Path, parts, output: Path, batch_size: int) -> Path:
    config = run_config(parts, output, training={"save_steps": 1, "threads": 1})
    for stage, steps in zip(config["stages"], STEPS):
        stage.update(max_steps=steps, batch_size=batch_size)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def single(parts, tmp_path_factory) -> Path:
    """The same training in one process at batch 8."""
    directory = tmp_path_factory.mktemp("single")
    train(load_config(_write(directory / "run.yaml", parts, directory / "run", batch_size=8)), quiet=True)
    return directory / "run"


@pytest.mark.parametrize(
    ("launch", "checkpoint_part"),
    [
        ("fsdp.yaml", "pytorch_model_fsdp_0"),
        pytest.param("deepspeed-zero2.yaml", "global_step1", marks=needs_deepspeed),
        pytest.param("deepspeed-zero3.yaml", "global_step1", marks=needs_deepspeed),
    ],
)
def test_two_cpu_processes_match_one_resume_and_reload(
    launch: str, checkpoint_part: str, parts, single: Path, tmp_path: Path
) -> None:
    config = _write(tmp_path / "run.yaml", parts, tmp_path / "run", batch_size=4)
    kill = {"LACO_KILL_TARGET": "laco.train.hf_trainer:LacoTrainer.training_step", "LACO_KILL_CALL": str(STEPS[0] + 2)}
    killed = _torchrun(launch, config, kill)
    assert killed.returncode != 0 and not (tmp_path / "run" / "stage2" / "final").exists(), killed.stderr[-3000:]
    assert (tmp_path / "run" / "stage2" / "checkpoint-1" / checkpoint_part).is_dir(), "the sharded checkpoint format"

    report = tmp_path / "wrapping.json"
    vision, llm, _, _ = parts
    wrap = {"LACO_WRAP_REPORT": os.pathsep.join([str(vision), str(llm), str(report)])} if "fsdp" in launch else {}
    finished = _torchrun(launch, config, wrap)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stages"][-1]["world_size"] == 2

    got, want = (load_file(run / "final" / "model.safetensors") for run in (tmp_path / "run", single))
    start = load_file(single / "stage1" / "final" / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=TOLERANCE, msg=key)
    moved = max((want[key] - start[key]).abs().max().item() for key in want)
    assert moved > 5 * TOLERANCE, "stage 2 trained: a mismatch would be visible above the tolerance"

    model, _ = load_model(tmp_path / "run" / "final")  # strict: every tensor of the config, nothing else
    tower = model.model.vision_tower
    laco.remove(tower)  # the model trained sharded, unwrapped, gives back the frozen encoder exactly
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(tower(pixels).last_hidden_state, tiny_encoder("dinov2")(pixels).last_hidden_state)
    if "fsdp" in launch:
        _assert_each_compressor_is_sharded_with_its_block(json.loads(report.read_text()))


def _assert_each_compressor_is_sharded_with_its_block(wrapping: dict) -> None:
    assert wrapping["removed"] and wrapping["compressors"]
    for name, unit in wrapping["compressors"].items():
        block = name.rsplit(".laco_compressor", 1)[0]
        assert unit == {"unit": block, "unit_class": "FSDPDinov2Layer"}, (name, unit)


def test_the_fsdp_config_wraps_by_the_models_own_block_classes() -> None:
    settings = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    # a fixed class list fails for every model that lacks one of its classes ("Could not find the transformer
    # layer class SiglipEncoderLayer in the model"); without it accelerate wraps the model's _no_split_modules
    assert "fsdp_transformer_layer_cls_to_wrap" not in settings["fsdp_config"]


def test_zero3_does_not_build_models_partitioned() -> None:
    # laco.apply creates the compressors after the model is built; under zero.Init they cannot be initialised
    settings = yaml.safe_load((CONFIGS / "deepspeed-zero3.yaml").read_text())
    assert settings["deepspeed_config"]["zero3_init_flag"] is False
    assert settings["deepspeed_config"]["zero3_save_16bit_model"] is True  # the final save gathers the weights
