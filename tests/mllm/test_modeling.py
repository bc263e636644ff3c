"""The LaCo MLLM on tiny random models: placeholder sizing, loss, generation with the KV cache, save/reload."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

import laco
from laco import Placement
from laco.mllm import LacoLlavaForConditionalGeneration, LacoProcessor, build_mllm

from tiny_models import PREFIX, pixels, tiny_encoder, tiny_llm, tiny_tokenizer


def build(layers="1/2", family="dinov2", method="laco", **options):
    tokenizer = tiny_tokenizer()
    return build_mllm(
        tiny_encoder(family),
        (tiny_llm(len(tokenizer)), tokenizer),
        Placement(layers, method, 2, options),
        image_size=32,
    )


@pytest.mark.parametrize("layers,expected", [(None, 64), ("last", 16), ("1/4", 16), (2, 16), ([1, 3], 4)])
@pytest.mark.parametrize("family", ["dinov2", "siglip"])
def test_placeholders_match_the_compressed_token_count(layers, expected, family):
    model, processor = build(layers, family)
    assert processor.num_image_tokens == model.config.image_seq_length == expected
    features = model.get_image_features(pixel_values=pixels()).pooler_output
    assert all(f.shape[0] == expected for f in features)
    strategy = "default" if PREFIX[family] else "full"
    assert model.config.vision_feature_select_strategy == strategy


def test_loss_only_counts_answers_and_backpropagates_to_the_merge():
    model, processor = build()
    encoded = processor.encode_conversation(
        [{"from": "human", "value": "<image>\nwhat color is the shape?"}, {"from": "gpt", "value": "red"}]
    )
    model.train()
    output = model(
        input_ids=torch.tensor([encoded.input_ids]),
        labels=torch.tensor([encoded.labels]),
        pixel_values=pixels(1),
    )
    assert torch.isfinite(output.loss)
    output.loss.backward()
    merge = laco.attached_compressors(model.model.vision_tower)[0]
    assert merge.fc2.weight.grad.abs().sum() > 0
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_generate_with_kv_cache_matches_full_recomputation():
    model, processor = build()
    images = [Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (32, 32), (10, 10, 200))]
    inputs = processor(["what color is the shape?", "is there a circle in the image?"], images)
    cached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] > inputs["input_ids"].shape[1]


def test_save_and_reload_round_trip(tmp_path):
    model, processor = build([1, 3], init="default")
    image = Image.new("RGB", (32, 32), (0, 200, 0))
    inputs = processor(["what color is the shape?"], [image])
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and list(tmp_path.glob("*.safetensors"))
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(reloaded, LacoLlavaForConditionalGeneration)
    assert laco.placement_of(reloaded.model.vision_tower).layers == (1, 3)
    reprocessor = LacoProcessor.from_pretrained(tmp_path)
    assert reprocessor.num_image_tokens == processor.num_image_tokens
    torch.testing.assert_close(reloaded(**reprocessor(["what color is the shape?"], [image])).logits, expected)


def test_a_compression_the_llm_would_not_read_is_refused():
    model, _ = build("last")
    config = model.config
    config.vision_feature_layer = -2
    with pytest.raises(ValueError, match="would be ignored"):
        LacoLlavaForConditionalGeneration(config)


def test_build_refuses_an_already_compressed_encoder():
    tokenizer = tiny_tokenizer()
    encoder = laco.apply(tiny_encoder("dinov2"), 2)
    with pytest.raises(ValueError, match="uncompressed"):
        build_mllm(encoder, (tiny_llm(len(tokenizer)), tokenizer), Placement(2))


def test_a_reloaded_model_keeps_the_token_count_of_its_processor_size(tmp_path):
    # DINOv2 interpolates its position grid to any input: the model runs at the processor's size, not the tower's
    tokenizer = tiny_tokenizer()
    encoder = tiny_encoder("dinov2")
    model, processor = build_mllm(encoder, (tiny_llm(len(tokenizer)), tokenizer), Placement("1/2"), image_size=16)
    assert model.config.image_seq_length == processor.num_image_tokens != model.num_image_tokens()
    model.save_pretrained(tmp_path)
    reloaded = LacoLlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config.image_seq_length == processor.num_image_tokens
