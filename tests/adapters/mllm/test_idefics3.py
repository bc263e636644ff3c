"""Idefics3 and SmolVLM: padded tiles (pixel_attention_mask), both modes, and conversion."""

import pytest
import torch

import laco
from laco.adapters.idefics3 import PaddedGridLayout
from laco.compressors import build

from tiny_mllms import check_conversion, idefics3, image_tokens, round_trip


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode,count", [("keep_llm_tokens", 16), ("compress_more", 4)])
def test_padded_tiles_run_in_both_modes(attn, mode, count):
    """The issue: a padded tile crashed in SDPA."""
    tiny = idefics3()
    tiny.model.set_attn_implementation(attn)
    assert not bool(tiny.inputs()["pixel_attention_mask"].all())
    round_trip(tiny, 2, mode=mode)
    laco.apply(tiny.model, 2, mode=mode, processor=tiny.processor)
    assert tiny.processor.image_seq_len == tiny.model.model.image_seq_len == laco.num_tokens(tiny.model) == count


def test_smolvlm_keeps_part_of_a_larger_shuffle_inside_the_encoder():
    tiny = idefics3(smol=True, scale_factor=4)
    tokens = image_tokens(tiny, tiny.model.config.image_token_id)
    round_trip(tiny, 2)
    laco.apply(tiny.model, 2, processor=tiny.processor)
    assert tiny.model.model.connector.scale_factor == 2 and tiny.model.config.scale_factor == 4
    assert image_tokens(tiny, tiny.model.config.image_token_id) == tokens


def test_padding_does_not_leak_into_the_merged_real_tokens():
    hidden = torch.randn(1, 16, 8)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, :3, :3] = True  # a 3x3 real region in a padded 4x4 grid
    merged = PaddedGridLayout((4, 4), 0, mask).merge(hidden, build("avgpool", 8))
    grid = hidden.view(4, 4, 8)
    torch.testing.assert_close(merged[0, 3], grid[2:3, 2:3].mean((0, 1)))  # the corner: its only real token
    torch.testing.assert_close(merged[0, 1], grid[:2, 2:3].mean((0, 1)))  # two real tokens of four
    assert PaddedGridLayout((4, 4), 0, mask).after(build("avgpool", 8)).mask.all()


def test_compress_more_refuses_a_merged_grid_the_shuffle_cannot_divide():
    tiny = idefics3()
    tiny.model.config.vision_config.image_size = 24
    with pytest.raises(ValueError, match="3x3 tokens after laco@2, which the connector's pixel-shuffle"):
        laco.apply(tiny.model, 2, mode="compress_more")


@pytest.mark.parametrize("smol", [False, True])
def test_conversion_round_trip(tmp_path, smol):
    check_conversion(idefics3(smol=smol), tmp_path, 2, auto_processor=False)
