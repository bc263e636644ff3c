"""Widen: a pixel-shuffle connector that laco's merges took part of maps a merged token as the pretrained
connector maps the block of identical tokens it stands for (token-major (dy, dx, c) channels)."""

import torch
from transformers import Idefics3Config
from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

from laco.adapters.mllm.connector import Widen, widen


def test_widen_repeats_each_sub_token_in_place():
    x = torch.arange(2 * 2 * 3).float().view(1, 12)  # a 2x2 block of 3-channel tokens
    wide = widen(x, 3, 2, 2).view(4, 4, 3)
    assert torch.equal(wide, x.view(2, 2, 3).repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_a_connector_left_with_part_of_its_shuffle_maps_as_the_full_one_on_upsampled_tokens():
    torch.manual_seed(0)
    config = Idefics3Config(
        vision_config=dict(hidden_size=8, num_attention_heads=2),
        text_config=dict(hidden_size=16, num_attention_heads=4),
        scale_factor=4,
    )
    connector = Idefics3Connector(config)
    merged = torch.randn(2, 8 * 8, 8)  # a 16x16 grid merged 2x2 by laco
    upsampled = merged.view(2, 8, 8, 8).repeat_interleave(2, 1).repeat_interleave(2, 2).flatten(1, 2)
    expected = connector(upsampled)
    connector.scale_factor = 2
    connector.modality_projection.register_forward_pre_hook(Widen(8, 2, 2))
    torch.testing.assert_close(connector(merged), expected)
