import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import laco
from laco import functional as F
from laco.compressors import PatchMerge, available, build

METHODS = ["laco", "pixel_shuffle", "avgpool", "ldpv2", "tokenpacker"]
LEARNED = ["laco", "pixel_shuffle", "ldpv2", "tokenpacker"]


def test_registry_lists_every_method():
    assert set(METHODS) <= set(available())


def test_zero_init_patch_merge_is_exact_average_pooling():
    merge = PatchMerge(dim=16)
    x = torch.randn(2, 6 * 8, 16)
    y, size = merge(x, (6, 8))
    pooled, pooled_size = F.avg_pool_tokens(x, (6, 8), 2)
    assert size == pooled_size == (3, 4)
    assert torch.equal(y, pooled)


def test_zero_init_on_odd_grid_averages_only_real_tokens():
    merge = PatchMerge(dim=8)
    x = torch.full((1, 27 * 27, 8), 3.0)
    y, size = merge(x, (27, 27))
    assert size == (14, 14)
    # a constant input stays constant, border blocks included: padding never drags the mean toward zero
    torch.testing.assert_close(y, torch.full_like(y, 3.0))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [(8, 8), (5, 7)])
def test_inside_encoder_width_and_grid(method, size):
    compressor = build(method, dim=16, factor=2)
    y, new_size = compressor(torch.randn(2, size[0] * size[1], 16), size)
    assert new_size == F.merged_size(size, 2)
    assert y.shape == (2, new_size[0] * new_size[1], 16)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("method", LEARNED)
def test_after_encoder_to_another_width(method):
    # after the encoder the width changes, so there is no shortcut (and LaCo's zero init would output zeros)
    options = {"shortcut": False, "init": "default"} if method == "laco" else {}
    compressor = build(method, dim=16, factor=2, out_dim=24, **options)
    y, _ = compressor(torch.randn(1, 16, 16), (4, 4))
    assert y.shape == (1, 4, 24)


@pytest.mark.parametrize("method", LEARNED)
def test_every_learned_method_takes_the_shortcut(method):
    x = torch.randn(1, 36, 16)
    plain = build(method, dim=16, shortcut=False, **({"init": "default"} if method == "laco" else {}))
    with_shortcut = build(method, dim=16, shortcut=True, **({"init": "default"} if method == "laco" else {}))
    with_shortcut.load_state_dict(plain.state_dict())
    pooled, _ = F.avg_pool_tokens(x, (6, 6), 2)
    torch.testing.assert_close(with_shortcut(x, (6, 6))[0], plain(x, (6, 6))[0] + pooled)


@pytest.mark.parametrize("method", LEARNED)
def test_gradients_reach_every_parameter(method):
    compressor = build(method, dim=16, factor=2, **({"init": "default"} if method == "laco" else {}))
    x = torch.randn(2, 36, 16, requires_grad=True)
    y, _ = compressor(x, (6, 6))
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in compressor.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_matches_float32(method):
    """bfloat16 keeps 8 significant bits (rounding error <= 2**-9 per value); a compressor's few products and sums
    stay within 1% of float32 in relative norm (measured: 0.2-0.3%), where a dtype bug is off by far more."""
    torch.manual_seed(0)
    compressor = build(method, dim=16, **({} if method == "avgpool" else {"shortcut": True}))
    if hasattr(compressor, "fc2"):
        torch.nn.init.normal_(compressor.fc2.weight, std=0.1)  # a trained branch, not the zero-initialised one
    x = torch.randn(1, 25, 16)
    expected, _ = compressor(x, (5, 5))
    y, _ = compressor.to(torch.bfloat16)(x.to(torch.bfloat16), (5, 5))
    assert y.dtype == torch.bfloat16
    assert (y.float() - expected).norm() / expected.norm() < 0.01


def test_factor_three():
    y, size = build("laco", dim=8, factor=3)(torch.randn(1, 81, 8), (9, 9))
    assert size == (3, 3) and y.shape == (1, 9, 8)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: build("fastv", dim=8), r"unknown compression method 'fastv'; choose one of"),
        (lambda: build("laco", dim=8, factor=1), "factor must be an integer >= 2"),
        (lambda: build("laco", dim=8, heads=2), r"does not take option\(s\) \['heads'\]"),
        (lambda: build("laco", dim=8, out_dim=16), "shortcut has width 8 but out_dim is 16"),
        (lambda: build("laco", dim=8, shortcut=False), "init='zero' without the shortcut"),
        (lambda: build("laco", dim=8, init="xavier"), "unknown init 'xavier'"),
        (lambda: build("avgpool", dim=8, shortcut=True), "avgpool is the shortcut itself"),
        (lambda: build("tokenpacker", dim=10, num_heads=3), "not divisible by num_heads"),
    ],
)
def test_bad_options_get_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_width_is_reported():
    with pytest.raises(ValueError, match="built for width 8 but got tokens of width 4"):
        build("laco", dim=8)(torch.randn(1, 16, 4), (4, 4))


def test_layer_init_reproduces_the_mlp_on_uniform_blocks():
    torch.manual_seed(0)
    norm, fc1, fc2 = torch.nn.LayerNorm(8), torch.nn.Linear(8, 12), torch.nn.Linear(12, 8)
    torch.nn.init.normal_(norm.weight)
    scale = torch.rand(8)
    merge = PatchMerge(dim=8, hidden_dim=12, init="layer", shortcut=False)
    merge.init_from_mlp(norm, fc1, fc2, scale)
    token = torch.randn(1, 1, 8)
    grid = token.expand(1, 16, 8)  # every token of every block identical
    y, _ = merge(grid, (4, 4))
    expected = fc2(torch.nn.functional.gelu(fc1(norm(token)))) * scale
    torch.testing.assert_close(y, expected.expand_as(y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shortcut", [False, True])
def test_flops_formula_matches_counted_flops(method, shortcut):
    if method == "avgpool" and shortcut:
        pytest.skip("avgpool has no separate shortcut")
    options = {"shortcut": shortcut}
    if method == "laco" and not shortcut:
        options["init"] = "default"
    compressor = build(method, dim=32, **options)
    x = torch.randn(1, 64, 32)
    with FlopCounterMode(display=False) as counter:
        compressor(x, (8, 8))
    counted, predicted = counter.get_total_flops(), compressor.flops((8, 8))
    # the counter only sees matmuls/convs/attention; the formula also counts poolings and adds
    assert counted <= predicted <= counted * 1.1 + 64 * 32 * 4


@settings(max_examples=25, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    batch=st.integers(1, 2),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    factor=st.integers(2, 3),
)
def test_shapes_over_random_grids(method, batch, height, width, factor):
    compressor = build(method, dim=8, factor=factor)
    y, new_size = compressor(torch.randn(batch, height * width, 8), (height, width))
    assert new_size == F.merged_size((height, width), factor) == compressor.output_size((height, width))
    assert y.shape == (batch, new_size[0] * new_size[1], 8)
    assert torch.isfinite(y).all()


def test_public_api_exports_patch_merge():
    assert laco.PatchMerge is PatchMerge


@pytest.mark.parametrize("method", ["laco", "pixel_shuffle", "avgpool", "tokenpacker"])
def test_neighbourhood_wise_compressors_merge_stacked_neighbourhoods(method):
    """merge_stacked on space_to_channel's output equals the compressor on the grid (packed towers' fast path)."""
    torch.manual_seed(0)
    compressor = build(method, 16, 2, **({"init": "default"} if method in ("laco", "pixel_shuffle") else {}))
    x = torch.randn(2, 6 * 4, 16)
    expected, _ = compressor(x, (6, 4))
    stacked, _ = F.space_to_channel(x, (6, 4), 2)
    assert compressor.neighbourhood_wise
    torch.testing.assert_close(compressor.merge_stacked(stacked), expected)


def test_merge_stacked_is_refused_by_compressors_that_read_the_grid():
    with pytest.raises(ValueError, match="reads the token grid"):
        build("ldpv2", 16, 2).merge_stacked(torch.randn(1, 4, 64))
