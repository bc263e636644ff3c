"""LLaVA and laco's own LLaVA model: whole-model apply with the stock processor, counts, refusals, conversion."""

import pytest
import torch

import laco
from laco.mllm import LacoLlavaForConditionalGeneration, LacoProcessor, build_mllm

from tiny_mllms import check_conversion, image_tokens, llava, round_trip
from tiny_models import tiny_encoder, tiny_llm, tiny_tokenizer


@pytest.mark.parametrize(
    "vision,strategy,per_image",
    [("clip", "default", 16), ("clip", "full", 17), ("siglip", "full", 16)],
)
def test_the_stock_processor_sizes_placeholders_for_the_merge(vision, strategy, per_image):
    """The issue: 'tokens: 128, features: 2048' with the stock processor; num_tokens 17 for CLIP's dropped CLS."""
    tiny = llava(vision, strategy)
    laco.apply(tiny.model, 2, processor=tiny.processor)
    assert laco.num_tokens(tiny.model) == tiny.model.config.image_seq_length == per_image
    assert image_tokens(tiny, tiny.model.config.image_token_id) == 3 * per_image
    laco.remove(tiny.model)
    round_trip(tiny, 2)


def test_an_odd_grid_is_counted_as_the_merge_pads_it():
    tiny = llava("clip", "default", size=36)  # 9x9 patches -> 5x5 tokens
    round_trip(tiny, 3)
    laco.apply(tiny.model, 3, processor=tiny.processor)
    assert laco.num_tokens(tiny.model) == 25 == image_tokens(tiny, tiny.model.config.image_token_id) // 3


@pytest.mark.parametrize(
    "feature_layer,layer,message",
    [
        (-2, 4, r"after layer\(s\) \[3\].*after layer 4 would be ignored.*Merge at layer 3 or earlier"),
        ([-4, -1], 2, r"after layer\(s\) \[1, 4\].*different token counts.*Merge at layer 1 or earlier"),
    ],
)
def test_a_merge_the_model_would_skip_or_break_is_refused_before_anything_changes(feature_layer, layer, message):
    tiny = llava(feature_layer=feature_layer)
    before = tiny.processor.patch_size
    with pytest.raises(ValueError, match=message):
        laco.apply(tiny.model, layer, processor=tiny.processor)
    assert not laco.is_patched(tiny.model) and tiny.processor.patch_size == before


def test_a_merge_before_every_feature_layer_is_accepted():
    tiny = llava(feature_layer=[-3, -1])
    round_trip(tiny, 1)


def test_keep_llm_tokens_is_refused_for_a_model_without_post_encoder_compression():
    with pytest.raises(ValueError, match="LLaVA has none; use mode='compress_more'"):
        laco.apply(llava().model, 2, mode="keep_llm_tokens")


def test_the_laco_model_is_applied_whole_with_its_own_processor():
    tokenizer = tiny_tokenizer()
    model, processor = build_mllm(tiny_encoder("clip"), (tiny_llm(len(tokenizer)), tokenizer), image_size=32)
    assert processor.num_image_tokens == model.config.image_seq_length == 64
    laco.apply(model, 2, processor=processor)
    assert processor.num_image_tokens == model.config.image_seq_length == model.num_image_tokens() == 16
    laco.remove(model)
    assert processor.num_image_tokens == model.config.image_seq_length == 64


def test_the_laco_model_loads_a_llava_checkpoint_with_its_lm_head(tmp_path):
    """The issue: LacoLlavaForConditionalGeneration.from_pretrained(llava_dir) re-initialised the LM head."""
    tiny = llava()
    tiny.model.save_pretrained(tmp_path)
    model, info = LacoLlavaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.lm_head.weight, tiny.model.lm_head.weight)


def test_conversion_keeps_every_tensor_and_reloads_with_auto_classes(tmp_path):
    model = check_conversion(llava(), tmp_path, "1/2")
    assert isinstance(model, LacoLlavaForConditionalGeneration) and model.config.image_seq_length == 16
    assert isinstance(laco.load(tmp_path / "dst"), LacoLlavaForConditionalGeneration)


def test_a_laco_model_checkpoint_converts_with_its_own_processor(tmp_path):
    tokenizer = tiny_tokenizer()
    model, processor = build_mllm(tiny_encoder("siglip"), (tiny_llm(len(tokenizer)), tokenizer), image_size=32)
    model.save_pretrained(tmp_path / "src")
    processor.save_pretrained(tmp_path / "src")
    summary = laco.convert(tmp_path / "src", tmp_path / "dst", 2)
    assert (summary["tokens_before"], summary["tokens_after"]) == (64, 16)
    assert LacoProcessor.from_pretrained(tmp_path / "dst").num_image_tokens == 16
    assert laco.placement_of(laco.load(tmp_path / "dst")).layers == (2,)


def test_prompts_from_a_processor_laco_did_not_update_are_refused_with_the_fix():
    tiny = llava()
    laco.apply(tiny.model, 2)  # no processor=: it still counts 64 per image
    with pytest.raises(
        ValueError, match=r"hold 192 image tokens for 3 image tile\(s\).*16 per tile \(48\).*processor="
    ):
        tiny.logits()
    laco.remove(tiny.model)
    laco.apply(tiny.model, 2, processor=tiny.processor)
    tiny.logits()


def test_a_processor_of_another_model_is_refused_and_nothing_stays_changed():
    tiny = llava()
    with pytest.raises(ValueError, match="must be the LLaVA model's own processor; dict has no"):
        laco.apply(tiny.model, 2, processor={})
    assert not laco.is_patched(tiny.model) and tiny.model.config.image_seq_length == 64
    assert not tiny.model._forward_pre_hooks and not tiny.model._forward_pre_hooks_with_kwargs
