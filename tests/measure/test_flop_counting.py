"""FLOP counting: fused attention kernels and grouped-query attention."""

import pytest
import torch
from torch.utils.flop_counter import sdpa_backward_flop_count

from laco.measure.flop_counting import PeakMemory, SavedMemory, _sdpa_backward_flop, count_call, flop_counter_mode


@pytest.mark.parametrize(
    "kernel",
    [
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    ],
)
def test_grouped_query_attention_counts_as_repeated_heads(kernel):
    # Qwen2 passes 14 query and 2 key/value heads straight to the CUDA kernels; meta tensors stand in for a GPU.
    query = torch.empty(2, 8, 10, 16, device="meta")
    key_value = torch.empty(2, 2, 10, 16, device="meta")
    op = getattr(torch.ops.aten, kernel)
    with flop_counter_mode() as counter:
        op(query, key_value, key_value) if "flash" in kernel else op(query, key_value, key_value, None, False)
    assert counter.get_total_flops() == 2 * (2 * 2 * 8 * 10 * 10 * 16)  # QK^T and AV, every query head
    backward = _sdpa_backward_flop((2, 8, 10, 16), (2, 8, 10, 16), (2, 2, 10, 16), (2, 2, 10, 16))
    assert backward == sdpa_backward_flop_count((2, 8, 10, 16), (2, 8, 10, 16), (2, 8, 10, 16), (2, 8, 10, 16))


def test_memory_figures_keep_their_json_and_say_what_they_are():
    peak = PeakMemory(peak_bytes=3 * 2**30, baseline_bytes=2**30)
    assert peak.to_dict() == {
        "kind": "cuda_peak_allocated",
        "baseline_bytes": 2**30,
        "peak_bytes": 3 * 2**30,
        "step_bytes": 2 * 2**30,
    }
    assert peak.label() == "3.00 GiB" and peak.footnote is None
    saved = SavedMemory(5 * 2**20)
    assert saved.to_dict() == {"kind": "saved_for_backward", "bytes": 5 * 2**20}
    assert saved.label() == "5 MiB*" and "saved for backward" in saved.footnote


def test_a_counted_call_reports_flops_and_what_it_saved_for_backward():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    flops, memory = count_call(
        lambda: layer(x).sum(), device=torch.device("cpu"), training=True, parameters=layer.parameters()
    )
    assert flops == 2 * 4 * 8 * 8 and memory.bytes == x.numel() * 4  # the input; the weight is excluded
    flops, memory = count_call(lambda: layer(x), device=torch.device("cpu"), training=False, parameters=[])
    assert flops == 2 * 4 * 8 * 8 and memory is None
