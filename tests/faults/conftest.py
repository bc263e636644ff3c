"""Fixtures of the fault suite: tiny model parts, and one uninterrupted reference run every fault is compared with."""

from __future__ import annotations

from pathlib import Path

import pytest

from laco.cli import main

from faults.runs import crash_run, write_run_config
from tiny_models import save_tiny_parts, write_color_dataset

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def parts(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(vision dir, LLM dir, LLaVA JSON, image folder) of tiny random models and a learnable colour dataset."""
    directory = tmp_path_factory.mktemp("tiny-parts")
    vision, llm = save_tiny_parts(directory)
    data_json, images = write_color_dataset(directory / "data", count=32)
    return vision, llm, data_json, images


@pytest.fixture(scope="session")
def reference(parts, tmp_path_factory) -> Path:
    """An uninterrupted `laco train` (+ evaluation) of the fault tests' config: the run every other must equal."""
    directory = tmp_path_factory.mktemp("reference")
    config = write_run_config(directory / "run.yaml", parts, directory / "run")
    assert main(["train", "--config", str(config)]) == 0
    return directory / "run"


@pytest.fixture(scope="session")
def crashed(parts, tmp_path_factory) -> Path:
    """A run stopped in stage 2 after its checkpoint-4 (checkpoints 2 and 4 on disk); copy it before changing it."""
    return crash_run(parts, tmp_path_factory.mktemp("crashed")).parent
