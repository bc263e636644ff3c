"""LLaVA-NeXT: AnyRes tiles, unpadding and newlines follow the merged per-tile grid."""

import laco

from tiny_mllms import check_conversion, image_tokens, llava_next, round_trip


def test_anyres_images_run_with_the_stock_processor_and_remove_restores_them():
    tiny = llava_next()
    before = image_tokens(tiny, tiny.model.config.image_token_id)
    round_trip(tiny, 2)
    laco.apply(tiny.model, 2, processor=tiny.processor)
    assert laco.num_tokens(tiny.model) == tiny.model.config.image_seq_length == 16  # per tile, CLS dropped
    assert tiny.processor.patch_size == 8 and image_tokens(tiny, tiny.model.config.image_token_id) < before / 3
    assert tiny.model.model.config.vision_config.patch_size == 8 and tiny.model.config.vision_config.patch_size == 4


def test_conversion_round_trip(tmp_path):
    check_conversion(llava_next(), tmp_path, 2)
