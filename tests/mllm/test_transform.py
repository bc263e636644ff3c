"""Images prepared as the encoder's own image processor prepares them, and overrides of single values."""

import json
import logging

import pytest
import torch
from PIL import Image
from transformers import BitImageProcessorPil, CLIPImageProcessorPil, LlavaImageProcessorPil, SiglipImageProcessorPil

from laco.mllm import build_mllm
from laco.mllm.transform import ImageTransform, encoder_transform, transform_from_processor

from tiny_models import tiny_encoder, tiny_llm, tiny_tokenizer

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _noise(width: int, height: int) -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy())


PROCESSORS = {
    # CLIP: shorter side to 32, centre crop 32; SigLIP: squash; DINOv2-style: shorter side to 36, centre crop 32;
    "clip": (CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), "shortest_edge"),
    "siglip": (SiglipImageProcessorPil(size={"height": 32, "width": 32}), "squash"),
    "dinov2": (
        BitImageProcessorPil(
            size={"shortest_edge": 36},
            crop_size={"height": 32, "width": 32},
            image_mean=IMAGENET[0],
            image_std=IMAGENET[1],
        ),
        "shortest_edge",
    ),
    # LLaVA-1.5's: padded to a square with the mean colour, then resized
    "llava": (
        LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_pad=True),
        "pad",
    ),
}


@pytest.mark.parametrize("name", sorted(PROCESSORS))
@pytest.mark.parametrize("size", [(80, 50), (50, 80), (32, 32)], ids=["wide", "tall", "square"])
def test_non_square_images_follow_the_encoders_own_processor(name, size):
    processor, policy = PROCESSORS[name]
    transform = transform_from_processor(processor.to_dict())
    assert transform.resize == policy and transform.size == 32
    image = _noise(*size)
    expected = processor(images=image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(transform([image]), expected, rtol=0, atol=1e-6)


def test_the_dinov2_crop_keeps_its_proportion_when_the_size_is_overridden():
    transform = transform_from_processor(PROCESSORS["dinov2"][0].to_dict())
    assert transform.crop_fraction == pytest.approx(32 / 36)
    smaller = transform.with_overrides(size=64)
    assert (smaller.size, smaller.resized_side, smaller.mean) == (64, 72, transform.mean)
    assert smaller.fit(_noise(90, 60)).size == (64, 64)


def test_settings_laco_cannot_follow_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"resizes to 32 x 48 \(size\).*set model.image_size"):
        transform_from_processor({"size": {"height": 32, "width": 48}})
    with pytest.raises(ValueError, match="do_resize=false"):
        transform_from_processor({"do_resize": False, "size": {"height": 32, "width": 32}})
    with pytest.raises(ValueError, match="rescale.*model.image_mean"):
        transform_from_processor({"size": {"height": 32, "width": 32}, "rescale_factor": 1.0})


def test_a_saved_encoder_brings_its_processor_settings(tmp_path):
    siglip = tiny_encoder("siglip")
    siglip.save_pretrained(tmp_path)
    PROCESSORS["siglip"][0].save_pretrained(tmp_path)
    transform = encoder_transform(tmp_path, siglip.config.image_size)
    assert (transform.size, transform.mean, transform.resize) == (32, (0.5, 0.5, 0.5), "squash")
    overridden = encoder_transform(tmp_path, 32, size=64, mean=[0.1, 0.2, 0.3], resize="shortest_edge")
    assert (overridden.size, overridden.mean, overridden.std, overridden.resize) == (
        64,
        (0.1, 0.2, 0.3),
        (0.5, 0.5, 0.5),
        "shortest_edge",
    )


def test_build_mllm_reads_the_encoders_processor_and_takes_overrides(tmp_path):
    """The issue: --vision <SigLIP dir> got 112 px and ImageNet statistics forced on it."""
    encoder = tiny_encoder("siglip")
    encoder.save_pretrained(tmp_path / "siglip")
    PROCESSORS["siglip"][0].save_pretrained(tmp_path / "siglip")

    def llm():  # build_mllm adds <image> to the tokenizer it is given: a fresh one per model
        tokenizer = tiny_tokenizer()
        return tiny_llm(len(tokenizer)), tokenizer

    _, processor = build_mllm(str(tmp_path / "siglip"), llm(), None)
    assert processor.image_transform == ImageTransform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash")
    _, processor = build_mllm(str(tmp_path / "siglip"), llm(), None, resize="shortest_edge", image_std=[0.25] * 3)
    assert (processor.image_transform.size, processor.image_transform.resize) == (32, "shortest_edge")
    assert processor.image_transform.std == (0.25, 0.25, 0.25) and processor.num_image_tokens == 64
    # SigLIP's position embeddings are for its own size: another is refused before anything is assembled
    with pytest.raises(ValueError, match=r"does not take 64 px images.*its own size is 32.*--image-size"):
        build_mllm(str(tmp_path / "siglip"), llm(), None, image_size=64)
    # DINOv2 interpolates them: any size the patch grid divides
    _, processor = build_mllm(tiny_encoder("dinov2"), llm(), None, image_size=64)
    assert processor.num_image_tokens == 16 * 16  # 64 px / 4 px patches, the CLS token dropped


def test_an_encoder_without_a_processor_says_what_it_assumed(tmp_path, caplog):
    encoder = tiny_encoder("siglip")
    encoder.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="laco.mllm.transform"):
        transform = encoder_transform(tmp_path, encoder.config.image_size)
    assert transform == ImageTransform(32, *IMAGENET, "squash")
    assert "no preprocessor_config.json" in caplog.text and "model.image_mean" in caplog.text
    assert encoder_transform("dinov2-small") == ImageTransform()  # laco's offline default: no warning needed


def test_a_transform_file_from_before_resize_policies_reads_as_a_squash():
    old = {"size": 112, "mean": list(IMAGENET[0]), "std": list(IMAGENET[1])}
    assert ImageTransform.from_dict(json.loads(json.dumps(old))) == ImageTransform(112, *IMAGENET)
    transform = ImageTransform(64, resize="shortest_edge", crop_fraction=0.875, resample="bilinear")
    assert ImageTransform.from_dict(json.loads(json.dumps(transform.to_dict()))) == transform
    with pytest.raises(ValueError, match="resize policy 'letterbox'"):
        ImageTransform(resize="letterbox")
