"""The terminal report: warnings worked out from the results."""

import pytest

from laco.bench.report import host_bound_warning
from laco.bench.results import Row
from laco.bench.runner import batched_result
from laco.bench.variants import build_variants
from laco.measure.timing import Samples


@pytest.mark.parametrize(("stack_none", "warned"), [(0.0101, True), (0.030, False)])
def test_a_prefill_that_does_not_grow_with_its_tokens_is_called_host_bound(
    stack_none, warned, tiny_settings, cpu_machine
):
    def prefill(stack, sequence):
        samples = Samples([2 * stack], {"stack_forward": [stack]}, [0], [0])
        return Row(
            samples, 1e9, sequence - 32, {"flops_counted": 1e9, "flops_predicted": 1e9, "sequence_tokens": sequence}
        )

    variants = build_variants(12, depths=["1/4"], methods=["laco"], method_depth="1/4", two_stage=None, factor=2)
    rows = {"none": prefill(stack_none, 761), "external": prefill(0.010, 228), "laco@1/4": prefill(0.010, 228)}
    result = batched_result(tiny_settings, cpu_machine, variants, {"prefill": rows})
    warning = host_bound_warning(result)
    assert (warning is not None) == warned
    if warned:
        assert "3.3x the tokens, 1.01x the time" in warning and "--batch" in warning
    assert host_bound_warning(batched_result(tiny_settings, cpu_machine, variants, {})) is None
