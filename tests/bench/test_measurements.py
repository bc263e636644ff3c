"""The measurement registry: a new measurement is one registration, and --quick runs it end to end."""

import json

import pytest
import torch

from laco.bench import main
from laco.bench.measurements import MEASUREMENTS, Measurement, default_measurements, measurement, register


def test_the_built_in_measurements_and_their_cost_modes():
    assert list(MEASUREMENTS) == ["encoder", "train", "prefill", "decode"]
    assert {name: spec.flop_mode for name, spec in MEASUREMENTS.items()} == {k: k for k in MEASUREMENTS}
    assert default_measurements(with_llm=False) == ("encoder",)
    assert measurement("train").stack_phases == ("stack_forward", "stack_backward", "stack_optimizer")
    assert [name for name, spec in MEASUREMENTS.items() if spec.compile_blocker] == ["decode"]
    with pytest.raises(ValueError, match=r"unknown measurement 'inference'; choose from \['encoder'"):
        measurement("inference")
    with pytest.raises(ValueError, match="already registered"):
        register(measurement("encoder"))
    with pytest.raises(ValueError, match="not a laco.cost mode"):
        Measurement("x", "x", "x", measurement("encoder").workload, flop_mode="generate")


def tower_without_grad(bench, variant):
    """The vision tower under no_grad instead of inference_mode: the same FLOPs as the encoder measurement."""
    pixel_values = bench.inputs.pixel_values

    def prepare():
        bench.activate(variant)

    def call():
        with torch.no_grad():
            bench.tower(pixel_values=pixel_values)

    return prepare, call


@pytest.fixture
def toy():
    spec = register(
        Measurement(
            "tower",
            "vision tower forward under no_grad",
            "tower",
            tower_without_grad,
            flop_mode="encoder",
            detail="{s.preset.resolution}px",
            needs_llm=False,
            default=False,
        )
    )
    yield spec
    del MEASUREMENTS[spec.name]


def test_a_new_measurement_is_one_registration(toy, tmp_path, capsys):
    options = ["--quick", "--no-progress", "--methods", "laco", "--depths", "1/4", "--two-stage", "none"]
    assert main([*options, "--measure", "encoder,tower", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "== tower: vision tower forward under no_grad (batch 1, image 52px; 52px)" in text
    assert "     tower      " in text  # the summary's line for the headline placement
    data = json.loads((tmp_path / "bench.json").read_text())
    assert list(data["measurements"]) == ["encoder", "tower"] and data["settings"]["measure"] == ["encoder", "tower"]
    for name, row in data["measurements"]["tower"].items():
        encoder = data["measurements"]["encoder"][name]
        assert (row["flops_counted"], row["flops_predicted"]) == (encoder["flops_counted"], encoder["flops_predicted"])
    assert data["measurements"]["tower"]["laco@1/4"]["speedup"]["bound"] > 2
    assert (tmp_path / "bench.png").exists()
    # Not a default: a run that does not choose leaves it out.
    assert "tower" not in default_measurements(with_llm=True)
