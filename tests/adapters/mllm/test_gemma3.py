"""Gemma3: the projector's 4x4 average pooling moves into the encoder (keep_llm_tokens) or follows the merge."""

import laco

from tiny_mllms import check_conversion, gemma3, image_tokens, round_trip


def test_keep_llm_tokens_pools_less_after_the_encoder():
    """The issue: apply worked, the forward failed ("shape '[1, 32, 8, 8]' is invalid")."""
    tiny = gemma3()
    tokens = image_tokens(tiny, tiny.model.config.image_token_id)
    round_trip(tiny, 2)
    laco.apply(tiny.model, [1, 3], processor=tiny.processor)  # two merges: 4x per side, the whole pooling
    projector = tiny.model.model.multi_modal_projector
    assert (projector.patches_per_image, projector.kernel_size) == (4, 1)
    assert laco.num_tokens(tiny.model) == tiny.processor.image_seq_length == 16
    assert image_tokens(tiny, tiny.model.config.image_token_id) == tokens


def test_compress_more_recounts_the_processor():
    tiny = gemma3()
    round_trip(tiny, 2, mode="compress_more")
    laco.apply(tiny.model, 2, mode="compress_more", processor=tiny.processor)
    assert laco.num_tokens(tiny.model) == tiny.processor.image_seq_length == 4
    assert tiny.processor.full_image_sequence.count(tiny.processor.tokenizer.image_token) == 4


def test_conversion_round_trip(tmp_path):
    check_conversion(gemma3(), tmp_path, 2, mode="compress_more")
