"""LLaVA-OneVision: AnyRes images of several tiles, several images per prompt, videos and their pooling."""

import pytest
import torch

import laco

from tiny_mllms import check_conversion, image_tokens, llava_onevision, round_trip


def test_anyres_and_multi_image_prompts_run_with_the_stock_processor():
    """The issue: a 7-tile image failed ('The number of patches is not consistent with the image size')."""
    tiny = llava_onevision()
    assert tiny.inputs()["pixel_values"].shape[1] == 7
    before = image_tokens(tiny, tiny.model.config.image_token_id)
    round_trip(tiny, 2)
    laco.apply(tiny.model, 2, processor=tiny.processor)
    assert tiny.processor.num_image_tokens == laco.num_tokens(tiny.model) == 16
    assert image_tokens(tiny, tiny.model.config.image_token_id) < before / 3


def video_logits(tiny, frames=3):
    count = tiny.processor._get_num_multimodal_tokens(video_sizes=[(frames, 32, 32)])["num_video_tokens"][0]
    input_ids = torch.tensor([[5] + [tiny.model.config.video_token_id] * count + [6]])
    videos = torch.randn(1, frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return count, tiny.model(input_ids=input_ids, pixel_values_videos=videos).logits


def test_video_frames_are_merged_then_pooled_as_the_processor_counts():
    """The issue: video failed with a view-size error."""
    tiny = llava_onevision()
    count, before = video_logits(tiny)
    assert count == 3 * 4 * 4 + 1
    laco.apply(tiny.model, 2, processor=tiny.processor)
    count, _ = video_logits(tiny)
    assert count == laco.num_tokens(tiny.model, video_frames=3) == 3 * 2 * 2 + 1
    laco.remove(tiny.model)
    assert torch.equal(video_logits(tiny)[1], before)


def test_keep_llm_tokens_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="counts a video frame's tokens from an image tile's"):
        laco.apply(llava_onevision().model, 2, mode="keep_llm_tokens")


def test_conversion_round_trip(tmp_path):
    check_conversion(llava_onevision(), tmp_path, 2, auto_processor=False)
