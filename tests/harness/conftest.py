"""Fixtures for the lmms-eval tests: a tiny checkpoint trained on easy-VQA, and lmms-eval that finds `--model laco`.

lmms-eval finds the plugin through the ``lmms_eval.models`` entry point in laco's installed metadata. A checkout
installed by ``scripts/install.sh`` (CI) has it. A shared environment whose editable laco points at another
checkout may not; then these fixtures add a throwaway ``.dist-info`` declaring the same entry point (read from
this checkout's pyproject.toml), so the tests still exercise lmms-eval's real discovery path.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from pathlib import Path

import pytest
import yaml

from laco.cli import main

from harness.lmms_setup import ENTRY_GROUP, REPO, declared_entry_point
from tiny_models import save_tiny_parts


def _installed() -> bool:
    return any(ep.name == "laco" for ep in importlib.metadata.entry_points(group=ENTRY_GROUP))


@pytest.fixture(scope="session")
def lmms_env(tmp_path_factory) -> dict[str, str]:
    """Environment for an lmms-eval subprocess that imports this checkout's laco and finds its entry point;
    in-process, lmms-eval's registry knows ``laco`` once this fixture ran."""
    paths = [str(REPO)]
    if not _installed():
        site = tmp_path_factory.mktemp("entry-point")
        info = site / "laco_lmms_entry_point-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: laco-lmms-entry-point\nVersion: 0.0\n")
        (info / "entry_points.txt").write_text(f"[{ENTRY_GROUP}]\nlaco = {declared_entry_point()}\n")
        sys.path.append(str(site))
        importlib.invalidate_caches()
        paths.append(str(site))
        from lmms_eval.models import MODEL_REGISTRY_V2

        MODEL_REGISTRY_V2.load_entrypoint_manifests(overwrite=True)  # lmms-eval's own loader, on the new path
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["HF_DATASETS_OFFLINE"] = "1"  # no hub here; local json datasets need none
    return env


@pytest.fixture(scope="session")
def easyvqa_checkpoint(tmp_path_factory) -> Path:
    """A tiny LaCo model (4-layer ViT, merge after layer 2, 2-layer Llama) trained briefly on easy-VQA."""
    root = tmp_path_factory.mktemp("tiny-easyvqa")
    vision, llm = save_tiny_parts(root)
    config = root / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(root / "run"),
                "model": {"vision": str(vision), "llm": str(llm), "image_size": 32, "system_prompt": None},
                "data": {"dataset": "easy-vqa", "limit": 256, "max_length": 64},
                "stages": [
                    {
                        "name": "all",
                        "trainable": ["compressor", "projector", "llm"],
                        "max_steps": 60,
                        "batch_size": 16,
                        "learning_rate": 1.0e-2,
                    }
                ],
                "training": {"precision": "fp32", "save_steps": 1000, "logging_steps": 8},
            }
        )
    )
    assert main(["train", "--config", str(config), "--layers", "1/2", "--no-eval"]) == 0
    return root / "run" / "final"
