"""FLOP counting: fused attention kernels and grouped-query attention."""

import pytest
import torch
from torch.utils.flop_counter import sdpa_backward_flop_count

from laco.bench.counting import _sdpa_backward_flop, flop_counter_mode


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
