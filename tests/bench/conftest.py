"""Shared by the bench tests: one ``laco bench --quick`` run (its JSON is read by several tests), and the
resolved settings of the tiny preset on a CPU for results built by hand."""

import pytest
import torch

from laco.bench import main
from laco.bench.settings import BenchSettings, resolve
from laco.measure.machine import Machine


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, main(["--quick", "--no-progress", "--out", str(out)])


@pytest.fixture(scope="session")
def tiny_settings():
    return resolve(BenchSettings(quick=True, device="cpu"))


@pytest.fixture(scope="session")
def cpu_machine():
    return Machine.describe(torch.device("cpu"))
