"""A converted stock LLaVA checkpoint's processor, read as laco's pipeline takes it (laco.mllm.stock)."""

import pytest
import torch

import laco
from laco.mllm import LacoProcessor
from laco.mllm.stock import from_stock, load_processor

from tiny_mllms import images, llava

TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture
def converted(tmp_path):
    tiny = llava()
    tiny.processor.chat_template = TEMPLATE
    tiny.model.save_pretrained(tmp_path / "src")
    tiny.processor.save_pretrained(tmp_path / "src")
    laco.convert(tmp_path / "src", tmp_path / "dst", "1/2")
    return tiny, tmp_path / "dst"


def test_the_stock_processor_becomes_a_laco_processor_that_prepares_the_same_inputs(converted):
    tiny, dst = converted
    model = laco.load(dst)
    processor = load_processor(dst, model)
    assert isinstance(processor, LacoProcessor) and processor.num_image_tokens == 16 == laco.num_tokens(model)
    assert processor.image_transform.resize == "shortest_edge" and processor.chat_template == TEMPLATE
    assert processor.image_token_id == model.config.image_token_id
    wide = images((40, 32))  # non-square: resized on its shorter side, then the centre cropped, as CLIP's processor
    stock = tiny.processor(images=wide, text=["<image> what color?"], return_tensors="pt")
    assert torch.equal(processor.image_transform(wide), stock["pixel_values"])
    inputs = processor(["what color?", "<image> and <image>?"], [wide[0], images((32, 48), (36, 36))])
    assert [int((row == processor.image_token_id).sum()) for row in inputs["input_ids"]] == [16, 32]
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_a_processor_that_was_not_updated_with_the_merge_is_refused(converted):
    tiny, dst = converted
    with pytest.raises(
        ValueError, match=r"gives 64 placeholder tokens per 32 px image, the model needs 16.*laco convert"
    ):
        from_stock(tiny.processor, laco.load(dst), "stale")


def test_a_directory_without_a_processor_is_refused_with_the_fix(converted, tmp_path):
    _, dst = converted
    model = laco.load(dst)
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match=r"AutoProcessor cannot load its processor.*save the model's processor"):
        load_processor(tmp_path / "bare", model)


def test_a_template_that_drops_the_image_tags_is_refused_before_the_model_runs(converted):
    _, dst = converted
    processor = load_processor(dst, laco.load(dst))
    processor.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(ValueError, match=r"question 0 holds 0 image placeholders.*need 16.*drops or repeats"):
        processor(["what color?"], images((32, 32)))
