import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from laco import functional as F


def internvl_pixel_shuffle_v2(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """Independent re-implementation of InternVL's pixel_shuffle (ps_version v2) on (n, h, w, c) grids."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, int(w * scale), int(c / scale))  # merge column pairs
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, int(w * scale), int(h * scale), int(c / (scale * scale)))  # merge row pairs
    return x.permute(0, 2, 1, 3).contiguous()  # v2: back to (row, col) order


def qwen2vl_patch_merger_grouping(x: torch.Tensor, size, merge: int = 2) -> torch.Tensor:
    """Qwen2-VL orders patches so each merge x merge block is contiguous (row-major inside the block) and the
    PatchMerger then views every merge**2 consecutive tokens as one. Built here with explicit loops."""
    height, width = size
    order = [
        (block_row * merge + dy) * width + block_col * merge + dx
        for block_row in range(height // merge)
        for block_col in range(width // merge)
        for dy in range(merge)
        for dx in range(merge)
    ]
    batch, _, channels = x.shape
    return x[:, order].reshape(batch, -1, merge * merge * channels)


@pytest.mark.parametrize("size", [(4, 6), (6, 4), (2, 8), (8, 8)])
def test_space_to_channel_matches_internvl_pixel_shuffle(size):
    x = torch.randn(2, size[0] * size[1], 5)
    merged, new_size = F.space_to_channel(x, size, 2)
    reference = internvl_pixel_shuffle_v2(x.reshape(2, *size, 5))
    assert new_size == (size[0] // 2, size[1] // 2)
    assert torch.equal(merged, reference.reshape(2, -1, 20))


@pytest.mark.parametrize("size,factor", [((4, 6), 2), ((6, 12), 3), ((2, 8), 2)])
def test_space_to_channel_matches_qwen2vl_patch_merger(size, factor):
    x = torch.randn(3, size[0] * size[1], 7)
    merged, _ = F.space_to_channel(x, size, factor)
    assert torch.equal(merged, qwen2vl_patch_merger_grouping(x, size, factor))


def test_token_major_layout():
    # token (i, j) of the merged grid is the concatenation of tokens (2i+dy, 2j+dx), dy then dx
    size = (4, 6)
    x = torch.arange(24.0).reshape(1, 24, 1)
    merged, _ = F.space_to_channel(x, size, 2)
    assert merged[0, 0].tolist() == [0.0, 1.0, 6.0, 7.0]
    assert merged[0, 4].tolist() == [14.0, 15.0, 20.0, 21.0]


@pytest.mark.parametrize("size", [(4, 6), (5, 7), (27, 27), (1, 3)])
def test_channel_to_space_round_trip(size):
    x = torch.randn(2, size[0] * size[1], 3)
    merged, new_size = F.space_to_channel(x, size, 2)
    restored, restored_size = F.channel_to_space(merged, new_size, 2, out_size=size)
    assert restored_size == size
    assert torch.equal(restored, x)


def reference_avg_pool(x: torch.Tensor, size, factor: int) -> torch.Tensor:
    """Average of the real tokens of each block, with loops."""
    height, width = size
    grid = x.reshape(x.shape[0], height, width, -1)
    rows = []
    for i in range(math.ceil(height / factor)):
        for j in range(math.ceil(width / factor)):
            block = grid[:, i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
            rows.append(block.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("size,factor", [((4, 6), 2), ((27, 27), 2), ((5, 3), 2), ((7, 8), 3)])
def test_avg_pool_counts_only_real_tokens(size, factor):
    x = torch.randn(2, size[0] * size[1], 4, dtype=torch.float64) + 10.0  # far from zero: padding would show
    pooled, new_size = F.avg_pool_tokens(x, size, factor)
    assert new_size == (math.ceil(size[0] / factor), math.ceil(size[1] / factor))
    torch.testing.assert_close(pooled, reference_avg_pool(x, size, factor))


def test_avg_pool_matches_torch_on_divisible_grids():
    x = torch.randn(2, 6 * 8, 4)
    pooled, _ = F.avg_pool_tokens(x, (6, 8), 2)
    image = F.tokens_to_image(x, (6, 8))
    reference, _ = F.image_to_tokens(torch.nn.functional.avg_pool2d(image, 2))
    torch.testing.assert_close(pooled, reference)


def test_pad_error_names_grid_factor_and_fix():
    with pytest.raises(ValueError, match=r"27x27.*factor 2.*pad='zero'"):
        F.space_to_channel(torch.randn(1, 729, 4), (27, 27), 2, pad="error")


@pytest.mark.parametrize(
    "x,size,factor,message",
    [
        (torch.randn(4, 16), (4, 4), 2, "3-D|2-D"),
        (torch.randn(1, 15, 4), (4, 4), 2, "token count 15 does not match grid 4x4"),
        (torch.randn(1, 16, 4), (4, 4), 1, "factor must be an integer >= 2"),
        (torch.randn(1, 16, 4), (4, 4), 2.0, "factor must be an integer"),
    ],
)
def test_bad_input_gets_clear_errors(x, size, factor, message):
    with pytest.raises(ValueError, match=message):
        F.space_to_channel(x, size, factor)


def test_unknown_pad_policy():
    with pytest.raises(ValueError, match="unknown pad policy"):
        F.space_to_channel(torch.randn(1, 16, 4), (4, 4), 2, pad="reflect")


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    height=st.integers(1, 13),
    width=st.integers(1, 13),
    channels=st.integers(1, 6),
    factor=st.integers(2, 4),
)
def test_properties_over_random_grids(batch, height, width, channels, factor):
    x = torch.randn(batch, height * width, channels, dtype=torch.float64)
    size = (height, width)
    merged, new_size = F.space_to_channel(x, size, factor)
    assert new_size == F.merged_size(size, factor)
    assert merged.shape == (batch, new_size[0] * new_size[1], factor * factor * channels)
    restored, _ = F.channel_to_space(merged, new_size, factor, out_size=size)
    assert torch.equal(restored, x)
    pooled = F.channel_average(merged, factor, size)
    torch.testing.assert_close(pooled, reference_avg_pool(x, size, factor))
    # the padding adds exactly the missing slots, and the counts add up to the real tokens
    counts = F.real_token_counts(size, factor)
    assert int(counts.sum()) == height * width


def test_real_slots_mark_the_padded_slots_of_border_windows():
    slots = F.real_slots((3, 5), 2)  # merged grid 2x3; slot order (0,0), (0,1), (1,0), (1,1)
    assert slots.shape == (6, 4)
    assert slots[0].tolist() == [True] * 4
    assert slots[2].tolist() == [True, False, True, False]  # right column padded
    assert slots[3].tolist() == [True, True, False, False]  # bottom row padded
    assert slots[5].tolist() == [True, False, False, False]  # the corner: one real token
    assert F.real_slots((4, 6), 2).all()
    # the same slots space_to_channel fills with zeros
    stacked, _ = F.space_to_channel(torch.ones(1, 15, 1), (3, 5), 2)
    assert torch.equal(stacked[0].bool(), slots)


def test_nearest_real_slots_repeat_each_real_token_equally_for_2x2_windows():
    slots = F.nearest_real_slots((3, 5), 2)
    assert slots[0].tolist() == [0, 1, 2, 3]
    assert slots[2].tolist() == [0, 0, 2, 2]
    assert slots[3].tolist() == [0, 1, 0, 1]
    assert slots[5].tolist() == [0, 0, 0, 0]
    real = F.real_slots((3, 5), 2)
    for window, sources in zip(real, slots):
        assert all(window[s] for s in sources.tolist())  # every slot reads a real token
        counts = torch.bincount(sources, minlength=4)[window]
        assert (counts == counts[0]).all()
