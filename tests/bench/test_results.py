"""Typed results: scaling a run that timed fewer LLM layers, and speed-ups with and without the optimizer."""

import pytest

from laco.bench.measurements import measurement
from laco.bench.results import Row, scale_phase, scale_seconds
from laco.bench.runner import _scaled, batched_result
from laco.bench.variants import build_variants
from laco.measure.timing import Samples


def test_scaling_adds_the_untimed_layers():
    samples = Samples(
        [1.0, 2.0], {"stack_forward": [0.1, 0.2], "stack_backward": [0.3, 0.0], "stack_optimizer": [0.1, 0.0]}
    )
    assert scale_seconds(samples, measurement("train"), 4.0) == pytest.approx([1.0 + 3 * 0.5, 2.0 + 3 * 0.2])
    assert scale_seconds(samples, measurement("encoder"), 4.0) == [1.0, 2.0]
    assert scale_seconds(samples, measurement("train"), 1.0) == [1.0, 2.0]
    assert scale_seconds(samples, measurement("prefill"), 4.0) == pytest.approx([1.0 + 3 * 0.1, 2.0 + 3 * 0.2])


def test_optimizer_share_is_scaled_and_can_be_left_out_of_the_speedup(tiny_settings, cpu_machine):
    samples = Samples([1.0], {"optimizer": [0.3], "stack_optimizer": [0.1]})
    assert scale_phase(samples, "optimizer", 4.0) == pytest.approx([0.6])
    assert scale_phase(Samples([1.0], {}), "optimizer", 4.0) == []

    def row(total, optimizer, flops):
        samples = Samples([total], {"optimizer": [optimizer]}, [0], [0])
        return Row(_scaled(samples, measurement("train"), 1.0), flops, 4)

    variants = build_variants(12, depths=["1/4"], methods=["laco"], method_depth="1/4", two_stage=None, factor=2)
    rows = {"none": row(6.0, 1.0, 4e9), "external": row(5.0, 1.0, 4e9), "laco@1/4": row(3.0, 1.0, 2e9)}
    result = batched_result(tiny_settings, cpu_machine, variants, {"train": rows})
    whole = result.speedup("train", "laco@1/4")
    compute = result.speedup("train", "laco@1/4", "compute")
    assert (whole.measured, whole.bound) == (pytest.approx(5 / 3), 2.0)
    assert (compute.measured, compute.efficiency) == (pytest.approx(4 / 2), pytest.approx(1.0))
    speedup = result.to_dict()["measurements"]["train"]["laco@1/4"]["speedup"]
    assert speedup["without_optimizer"]["measured"] == pytest.approx(2.0) and speedup["baseline"] == "external"
    assert result.to_dict()["measurements"]["train"]["external"]["speedup"] is None
