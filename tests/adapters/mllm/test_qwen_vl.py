"""LaCo in whole Qwen2-VL, Qwen2.5-VL and Qwen3-VL models: both modes, the processor's placeholder counts, the LLM's
rope index, batched generate with the KV cache, and save/reload."""

import json

import pytest
import torch
from qwen_models import IMAGE_TOKEN, VIDEO_TOKEN, grid, images, packed_pixels, tiny_model, tiny_processor

import laco

FAMILIES = ["qwen2", "qwen2.5", "qwen3"]
MODES = ["keep_llm_tokens", "compress_more"]
LAYER = 2
PROMPTS = ["describe <|image_pad|> red", "<|image_pad|> what color is the shape?"]
SIZES = [(32, 48), (32, 32)]  # (width, height): 8x12 and 8x8 patches, merge-unit grids that pair up 2x2


def inputs(processor, sizes=SIZES, prompts=PROMPTS):
    return processor(text=list(prompts), images=images(*sizes), return_tensors="pt", padding=True)


def generate(model, batch, **kwargs):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0, **kwargs)
    return out[:, batch["input_ids"].shape[1] :]


def single(batch, index):
    """Sample ``index`` of a left-padded processor batch, unpadded, with its own image."""
    keep = batch["attention_mask"][index].bool()
    rows = batch["image_grid_thw"].prod(-1).tolist()
    start = sum(rows[:index])
    return {
        "input_ids": batch["input_ids"][index : index + 1, keep],
        "attention_mask": batch["attention_mask"][index : index + 1, keep],
        "mm_token_type_ids": batch["mm_token_type_ids"][index : index + 1, keep],
        "pixel_values": batch["pixel_values"][start : start + rows[index]],
        "image_grid_thw": batch["image_grid_thw"][index : index + 1],
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_batches_images_of_different_sizes_with_the_kv_cache(family, mode):
    model, processor = tiny_model(family), tiny_processor(family)
    laco.apply(model, LAYER, mode=mode, processor=processor, init="default")
    batch = inputs(processor)
    expected = [laco.num_tokens(model, grid_thw=row) for row in batch["image_grid_thw"]]
    assert (batch["input_ids"] == IMAGE_TOKEN).sum(-1).tolist() == expected
    assert expected == [24 // (4 if mode == "compress_more" else 1), 16 // (4 if mode == "compress_more" else 1)]
    tokens = generate(model, batch)
    assert torch.equal(generate(model, batch, use_cache=False), tokens)
    for index in range(2):
        assert torch.equal(generate(model, single(batch, index)), tokens[index : index + 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_llm_tokens_leaves_the_llm_side_alone(family):
    model, processor = tiny_model(family), tiny_processor(family)
    before = inputs(processor)
    laco.apply(model, LAYER, processor=processor)
    assert laco.placement_of(model).mode == "keep_llm_tokens"
    after = inputs(processor)
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert "get_rope_index" not in vars(model.model) and "replace_image_token" not in vars(processor)
    with torch.no_grad():
        out = model(**after)
    assert out.logits.shape[:2] == after["input_ids"].shape


@pytest.mark.parametrize("family", FAMILIES)
def test_compress_more_updates_processor_and_rope_index_and_remove_restores_them(family):
    model, processor = tiny_model(family), tiny_processor(family)
    before = inputs(processor)
    with torch.no_grad():
        logits = model(**before).logits
    laco.apply(model, LAYER, mode="compress_more", processor=processor)
    after = inputs(processor)
    assert (after["input_ids"] == IMAGE_TOKEN).sum() * 4 == (before["input_ids"] == IMAGE_TOKEN).sum()
    positions, _ = model.model.get_rope_index(
        after["input_ids"], after["mm_token_type_ids"], image_grid_thw=after["image_grid_thw"]
    )
    # the first image: 1x(12/4)x(8/4) LLM tokens, M-RoPE (h, w) positions over a 3x2 grid
    image = positions[:, 0, after["input_ids"][0] == IMAGE_TOKEN]
    assert (image[1] - image[1].min()).tolist() == [0, 0, 1, 1, 2, 2]
    assert (image[2] - image[2].min()).tolist() == [0, 1, 0, 1, 0, 1]
    laco.remove(model)
    assert "get_rope_index" not in vars(model.model) and "replace_image_token" not in vars(processor)
    restored = inputs(processor)
    assert all(torch.equal(before[key], restored[key]) for key in before)
    with torch.no_grad():
        assert torch.equal(model(**restored).logits, logits)


def test_compress_more_refuses_a_grid_whose_merge_units_do_not_pair_up_naming_the_image():
    model, processor = tiny_model("qwen2.5"), tiny_processor("qwen2.5")
    laco.apply(model, LAYER, mode="compress_more", processor=processor)
    message = r"image 0 has grid_thw \[1, 4, 6\], a 2x3 grid of merge units.* multiples of 16 px"
    with pytest.raises(ValueError, match=message):
        inputs(processor, sizes=[(24, 16)], prompts=["<|image_pad|>"])
    with pytest.raises(ValueError, match=message):
        laco.num_tokens(model, grid_thw=[1, 4, 6])


def test_num_tokens_says_what_the_llm_receives():
    model = tiny_model("qwen2")
    assert laco.num_tokens(model, (32, 48)) == 24
    assert laco.num_tokens(model, grid_thw=grid((1, 8, 12), (2, 4, 6))) == [24, 12]
    laco.apply(model, LAYER)
    assert laco.num_tokens(model, grid_thw=[2, 4, 6]) == 12
    laco.remove(model)
    laco.apply(model, LAYER, mode="compress_more")
    assert laco.num_tokens(model, (32, 48)) == 6 and laco.num_tokens(model, grid_thw=[[2, 8, 8]]) == [8]


@pytest.mark.parametrize(
    "family, mode", [("qwen2.5", "keep_llm_tokens"), ("qwen3", "keep_llm_tokens"), ("qwen2", "compress_more")]
)
def test_save_and_reload_restores_the_mode_the_1x_mergers_and_the_merge(tmp_path, family, mode):
    model, processor = tiny_model(family), tiny_processor(family)
    laco.apply(model, LAYER, mode=mode, processor=processor, init="default")
    batch = inputs(processor)
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["vision_config"]["laco"]
    assert saved["mode"] == mode and saved["layers"] == [LAYER]
    fresh = tiny_processor(family)
    reloaded = laco.load(tmp_path, processor=fresh, attn_implementation="eager")
    # the family's LaCo model type, as every other MLLM family reloads: the compression is rebuilt before the weights
    # load, so the 1x mergers load strictly under their own shapes
    assert type(reloaded).__name__ == f"Laco{type(model).__name__}" and isinstance(reloaded, type(model))
    assert laco.placement_of(reloaded) == laco.placement_of(model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs(fresh)).logits, expected)
    laco.remove(reloaded)  # the processor wrappers laco.load installed go with the merge
    assert "replace_image_token" not in vars(fresh)


@pytest.mark.parametrize("mode", MODES)
def test_a_resaved_checkpoint_reloads_compressed_with_the_auto_class(tmp_path, mode):
    from transformers import AutoModelForImageTextToText

    model = laco.apply(tiny_model("qwen2.5"), LAYER, mode=mode, init="default")
    model.save_pretrained(tmp_path / "stock")
    laco.load(tmp_path / "stock").save_pretrained(tmp_path / "laco")
    saved = json.loads((tmp_path / "laco" / "config.json").read_text())
    assert saved["model_type"] == "laco_qwen2_5_vl"
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "laco", attn_implementation="eager").eval()
    assert laco.placement_of(reloaded) == laco.placement_of(model)
    processor = tiny_processor("qwen2.5")
    laco.loading.update_processor(reloaded, processor)  # what laco.load(..., processor=) does after loading
    batch = inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


def test_an_inner_model_saved_alone_reloads_as_itself(tmp_path):
    """``Qwen2_5_VLModel`` has the whole model's model_type but no LM head: laco.load reads its class from
    config.json's architectures instead of loading it as the LaCo ForConditionalGeneration class."""
    inner = laco.apply(tiny_model("qwen2.5").model, LAYER, init="default")
    inner.save_pretrained(tmp_path)
    reloaded = laco.load(tmp_path, attn_implementation="eager")
    assert type(reloaded) is type(inner) and laco.placement_of(reloaded) == laco.placement_of(inner)
    grid_thw = grid((1, 8, 12))
    with torch.no_grad():
        expected = inner.visual(packed_pixels(grid_thw), grid_thw=grid_thw).pooler_output
        torch.testing.assert_close(reloaded.visual(packed_pixels(grid_thw), grid_thw=grid_thw).pooler_output, expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_laco_convert_keeps_every_tensor_and_reloads_with_the_auto_classes(tmp_path, family, mode):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny_model(family).save_pretrained(src)
    summary = laco.convert(src, dst, LAYER, mode=mode, processor=tiny_processor(family))
    before, after = load_file(src / "model.safetensors"), load_file(dst / "model.safetensors")
    assert all(name in after and torch.equal(after[name], tensor) for name, tensor in before.items())
    new = sorted(set(after) - set(before))
    assert new == summary["new_tensors"] and any(".laco_compressor." in name for name in new)
    assert all(".laco_compressor." in name or ".laco_one_to_one." in name for name in new)
    assert json.loads((dst / "config.json").read_text())["model_type"].startswith("laco_qwen")

    model = AutoModelForImageTextToText.from_pretrained(dst, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(dst)  # the LaCo processor class, loaded without torchvision
    assert type(processor).__name__.startswith("Laco") and processor.laco_factor == (
        2 if mode == "compress_more" else 1
    )
    processor.tokenizer.padding_side = "left"  # as tiny_processor sets it on its tokenizer after building it
    reference, reference_processor = tiny_model(family), tiny_processor(family)
    laco.apply(reference, LAYER, mode=mode, processor=reference_processor)
    assert laco.placement_of(model) == laco.placement_of(reference)
    batch, expected_batch = inputs(processor), inputs(reference_processor)
    assert torch.equal(batch["input_ids"], expected_batch["input_ids"])  # the same placeholders
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits[real], reference(**expected_batch).logits[real])
    assert torch.equal(generate(model, batch), generate(reference, expected_batch))


def test_a_laco_qwen_processor_refuses_videos_without_torchvision(tmp_path):
    from laco.adapters.mllm.qwen_processor import has_video_processor_backend, saved_processor

    if has_video_processor_backend():
        pytest.skip("torchvision is installed: videos work")
    processor = saved_processor(tiny_processor("qwen2.5"), "qwen2_5_vl", 2)
    with pytest.raises(ValueError, match="video processor.*torchvision"):
        processor(text=["<|video_pad|>"], videos=[torch.zeros(2, 3, 32, 32)])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", ["qwen2.5", "qwen3"])  # Qwen2-VL's rope index is Qwen2.5-VL's without time scaling
def test_a_video_and_an_image_in_one_prompt(family, mode):
    """Video frames (t=2, then 4 patches per side more) next to an image: placeholders per frame, the LLM's rope index
    and generate follow (Qwen3-VL puts a timestamp between frames, so each frame is its own run of placeholders)."""
    model = laco.apply(tiny_model(family), LAYER, mode=mode, init="default")
    video, image = grid((2, 8, 8)), grid((1, 8, 12))
    per_frame = laco.num_tokens(model, grid_thw=[1, 8, 8])
    frames = [[VIDEO_TOKEN] * per_frame] * 2
    video_ids = frames[0] + [7] + frames[1] if family == "qwen3" else frames[0] + frames[1]
    ids = [5, 6] + video_ids + [8] + [IMAGE_TOKEN] * laco.num_tokens(model, grid_thw=image[0]) + [9]
    input_ids = torch.tensor([ids])
    types = torch.where(input_ids == IMAGE_TOKEN, 1, torch.where(input_ids == VIDEO_TOKEN, 2, 0))
    batch = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=types,
        pixel_values=packed_pixels(image),
        image_grid_thw=image,
        pixel_values_videos=packed_pixels(video, seed=2),
        video_grid_thw=video,
    )
    tokens = generate(model, batch)
    assert tokens.shape == (1, 4) and torch.equal(generate(model, batch, use_cache=False), tokens)
