"""InternVL: keep_llm_tokens (laco's merge replaces the pixel-shuffle, the projector fed at 1x) and compress_more."""

import pytest
import torch

import laco

from tiny_mllms import check_conversion, image_tokens, internvl, round_trip


def test_keep_llm_tokens_keeps_every_count():
    """The issue: InternVL compressed 16x (LaCo then its own pixel-shuffle) and nothing recounted."""
    tiny = internvl()
    tokens = image_tokens(tiny, tiny.model.config.image_token_id)
    round_trip(tiny, "last")  # auto = keep_llm_tokens
    laco.apply(tiny.model, 2, processor=tiny.processor)
    assert laco.placement_of(tiny.model).mode == "keep_llm_tokens"
    assert tiny.processor.image_seq_length == tiny.model.config.image_seq_length == 16
    assert image_tokens(tiny, tiny.model.config.image_token_id) == tokens
    assert tiny.model.model.config.downsample_ratio == 1.0 and tiny.model.config.downsample_ratio == 0.5


def test_the_1x_connector_maps_a_merged_token_as_the_pretrained_one_maps_its_block():
    """keep_llm_tokens: projector(merged) == projector(pixel_shuffle(the merged grid up-sampled 2x)), and equals the
    folded 1x connector LayerNorm(C, no affine) -> Linear(C, D) with weight sum_i W_i diag(g_i)."""
    tiny = internvl()
    inner = tiny.model.model
    with torch.no_grad():
        for parameter in inner.multi_modal_projector.layer_norm.parameters():
            parameter.normal_()
        merged = torch.randn(2, 4, 4, 32)
        upsampled = merged.repeat_interleave(2, 1).repeat_interleave(2, 2)
        expected = inner.multi_modal_projector(inner.pixel_shuffle(upsampled).flatten(1, 2))
        laco.apply(tiny.model, 2)
        kept = inner.multi_modal_projector(merged.flatten(1, 2))
        torch.testing.assert_close(kept, expected)
        norm, linear = inner.multi_modal_projector.layer_norm, inner.multi_modal_projector.linear_1
        blocks = linear.weight.view(linear.out_features, 4, 32)
        weight = (blocks * norm.weight.view(4, 32)).sum(1)
        bias = linear.bias + (blocks * norm.bias.view(4, 32)).sum((1, 2))
        folded = torch.nn.functional.layer_norm(merged.flatten(1, 2), (32,), eps=norm.eps) @ weight.T + bias
        hidden = inner.multi_modal_projector.linear_2(inner.multi_modal_projector.act(folded))
        torch.testing.assert_close(hidden, expected, rtol=1e-4, atol=1e-5)


def test_compress_more_merges_then_shuffles_and_recounts():
    tiny = internvl()
    round_trip(tiny, 2, mode="compress_more")
    laco.apply(tiny.model, 2, mode="compress_more", processor=tiny.processor)
    assert tiny.processor.image_seq_length == tiny.model.config.image_seq_length == laco.num_tokens(tiny.model) == 4


def test_keep_llm_tokens_allows_one_merge_the_size_of_the_shuffle():
    with pytest.raises(ValueError, match="factor dividing 2; laco@1\\+3 reduces it by 4"):
        laco.apply(internvl().model, [1, 3], mode="keep_llm_tokens")


def test_a_tile_whose_merged_grid_is_odd_is_refused_naming_its_size_and_the_fix():
    """The issue: a 24 px tile (odd merged grid) crashed."""
    tiny = internvl()
    tiny.model.config.vision_config.image_size = (24, 24)  # 6x6 patches -> 3x3 tokens
    with pytest.raises(ValueError, match="6x6 patches becomes 3x3 tokens.*multiple of 4 per side, mode='keep_llm"):
        laco.apply(tiny.model, 2, mode="compress_more")
    tiny.model.config.vision_config.image_size = (32, 32)
    laco.apply(tiny.model, 2, mode="compress_more")
    with pytest.raises(ValueError, match="a 24x24 px tile of 6x6 patches becomes 3x3 tokens"):
        tiny.model(input_ids=torch.ones(1, 6, dtype=torch.long), pixel_values=torch.randn(1, 3, 24, 24))


def test_conversion_round_trip_in_both_modes(tmp_path):
    for mode in ("keep_llm_tokens", "compress_more"):
        model = check_conversion(internvl(), tmp_path / mode, 2, mode=mode, auto_processor=False)
        assert laco.placement_of(model).mode == mode


def test_fine_tuning_reaches_the_merge_and_the_pretrained_connector():
    tiny = internvl()
    laco.apply(tiny.model, 2, processor=tiny.processor)
    tiny.model.train()
    inputs = tiny.inputs()
    tiny.model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert laco.attached_compressors(tiny.model)[0].fc2.weight.grad.abs().sum() > 0
    assert tiny.model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
