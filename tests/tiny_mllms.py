"""Tiny random MLLMs of every retrofitted family with their *stock* processors, built offline, and the checks every
family's tests share (apply with the processor, forward, generate, remove bit for bit, convert and reload).

Video processors need torchvision, which this environment lacks; processors that take one (LLaVA-OneVision,
InternVL, SmolVLM) are built through a subclass that leaves it out (:func:`without_video`), which changes nothing
in how they count placeholders.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GotOcr2ImageProcessorPil,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)

import laco

from tiny_models import tiny_tokenizer_json

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, patch_size=4)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64], [64, 96], [96, 64]]
IDEFICS_TOKENS = ["<image>", "<fake_token_around_image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)
]


def tokenizer(extra: dict[str, str] | None = None, special: list[str] | None = None) -> PreTrainedTokenizerFast:
    """The suite's tiny BPE tokenizer with a model's special tokens, padding on the left for generation."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<unk>",
        padding_side="left",
        extra_special_tokens=extra or {},
    )
    if special:
        tok.add_special_tokens({"additional_special_tokens": special})
    return tok


@cache
def _tokenizer_json() -> str:
    return tiny_tokenizer_json()


@cache
def without_video(processor_class: type) -> type:
    """``processor_class`` without its video processor (which needs torchvision); counting is unchanged. Build it and
    reload it with ``video_processor=None``."""

    attributes = classmethod(lambda cls: ["image_processor", "tokenizer"])
    return type(processor_class.__name__, (processor_class,), {"get_attributes": attributes})


def text_config(tok, **overrides) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, **{**TEXT, **overrides})


def images(*sizes: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """Random-noise RGB images of (width, height) ``sizes``: tokens differ, so a merge changes the features."""
    generator = torch.Generator().manual_seed(seed)
    return [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy())
        for w, h in sizes
    ]


@dataclass
class Tiny:
    """A model, its stock processor, and a batch of prompts with images to run them on."""

    model: Any
    processor: Any
    texts: list[str]
    images: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> dict[str, torch.Tensor]:
        return dict(self.processor(images=self.images, text=self.texts, return_tensors="pt", padding=True))

    def logits(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model(**self.inputs()).logits


def _seeded(model_class, config):
    torch.manual_seed(0)
    return model_class(config).eval()


def llava(vision: str = "clip", strategy: str = "default", feature_layer: int | list[int] = -1, size: int = 32) -> Tiny:
    tok = tokenizer({"image_token": "<image>"})
    if vision == "clip":
        vision_config = CLIPVisionConfig(image_size=size, projection_dim=32, **VISION)
    else:
        vision_config = SiglipVisionConfig(image_size=size, **VISION)
    grid = (size // 4) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config(tok),
        image_token_index=tok.image_token_id,
        image_seq_length=grid + (vision == "clip") - (strategy == "default"),
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=4,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=int(vision == "clip"),
    )
    texts = ["<image> what color is the shape?", "<image> and <image>: is there a circle?"]
    return Tiny(_seeded(LlavaForConditionalGeneration, config), processor, texts, images((40, 32), (32, 48), (36, 36)))


def llava_next() -> Tiny:
    tok = tokenizer({"image_token": "<image>"})
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=32, projection_dim=32, **VISION),
        text_config=text_config(tok),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-1,
        image_seq_length=64,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    texts = ["<image> what color is the shape?", "is there a circle? <image>"]
    return Tiny(_seeded(LlavaNextForConditionalGeneration, config), processor, texts, images((90, 60), (32, 48)))


def llava_onevision() -> Tiny:
    tok = tokenizer({"image_token": "<image>", "video_token": "<video>"})
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(image_size=32, **VISION),
        text_config=text_config(tok),
        image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-1,
    )
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS)
    processor = without_video(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tok, num_image_tokens=64, vision_feature_select_strategy="full"
    )
    # A 90x60 image is 7 tiles (a base tile and 3x2 crops), the second prompt has two images (one tile each).
    texts = ["<image> what color is the shape?", "<image><image> is there a circle?"]
    return Tiny(
        _seeded(LlavaOnevisionForConditionalGeneration, config),
        processor,
        texts,
        [images((90, 60)), images((32, 48), (40, 40), seed=1)],
    )


def internvl() -> Tiny:
    extra = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}
    tok = tokenizer({**extra, "video_token": "<video>"})
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(image_size=32, layer_scale_init_value=1.0, **VISION),
        text_config=text_config(tok),
        image_token_id=tok.context_image_token_id,
        image_seq_length=16,
    )
    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=6)
    processor = without_video(InternVLProcessor)(image_processor=image_processor, tokenizer=tok, image_seq_length=16)
    texts = ["<IMG_CONTEXT> what color is the shape?", "<IMG_CONTEXT> and <IMG_CONTEXT>: a circle?"]
    return Tiny(
        _seeded(InternVLForConditionalGeneration, config), processor, texts, images((90, 60), (32, 48), (40, 40))
    )


def idefics3(smol: bool = False, scale_factor: int = 2) -> Tiny:
    tok = tokenizer(special=IDEFICS_TOKENS)
    kinds = (
        (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, smolvlm_processor_class())
        if smol
        else (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor)
    )
    config_class, model_class, image_processor_class, processor_class = kinds
    image_processor = image_processor_class(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    video = {"video_processor": None} if issubclass(processor_class, SmolVLMProcessor) else {}
    processor = processor_class(
        image_processor=image_processor, tokenizer=tok, image_seq_len=(8 // scale_factor) ** 2, **video
    )
    config = config_class(
        vision_config=dict(image_size=32, **VISION),
        text_config=text_config(tok).to_dict(),
        image_token_id=processor.image_token_id,
        scale_factor=scale_factor,
    )
    # Images of different aspect ratios in one batch: the smaller ones' tiles are padded (pixel_attention_mask).
    texts = ["<image> what color is the shape?", "<image> and <image>: a circle?"]
    batch = [images((90, 60)), images((20, 48), (30, 30), seed=1)]
    return Tiny(_seeded(model_class, config), processor, texts, batch)


def smolvlm_processor_class() -> type:
    """SmolVLM's processor needs ``num2words`` (not a laco dependency); without it, Idefics3's, which counts
    placeholders per tile with the same ``image_seq_len``."""
    try:
        import num2words  # noqa: F401
    except ImportError:
        return Idefics3Processor
    return without_video(SmolVLMProcessor)


def gemma3() -> Tiny:
    extra = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = tokenizer(extra)
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(image_size=64, **VISION),
        text_config=Gemma3TextConfig(
            vocab_size=len(tok), head_dim=8, max_position_embeddings=2048, sliding_window=64, **TEXT
        ),
        mm_tokens_per_image=16,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    model = _seeded(Gemma3ForConditionalGeneration, config)
    with torch.no_grad():  # zero-initialised upstream, which would hide the image from the LLM
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tok, image_seq_length=16
    )
    texts = ["<start_of_image> what color is the shape?", "<start_of_image> and <start_of_image>: a circle?"]
    return Tiny(model, processor, texts, [images((90, 60)), images((20, 48), (30, 30), seed=1)])


# ----------------------------------------------------------------------------------------------------------------
# Checks every family shares


def processor_state(processor) -> dict[str, Any]:
    """The processor's own plain attributes (what laco may change), for bit-for-bit comparisons."""
    return {k: copy.deepcopy(v) for k, v in vars(processor).items() if isinstance(v, (int, float, str, type(None)))}


def model_state(model) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    inner = {k: v for k, v in vars(model.model).items() if isinstance(v, (int, float, str))}
    return model.config.to_dict(), inner, {k: v.clone() for k, v in model.state_dict().items()}


def apply_and_run(tiny: Tiny, layer, mode: str = "auto", **options) -> torch.Tensor:
    """Apply with the stock processor, check the placeholders match laco.num_tokens, run forward and a batched
    ``generate``; return the logits."""
    laco.apply(tiny.model, layer, mode=mode, processor=tiny.processor, **options)
    logits = tiny.logits()
    generated = tiny.model.generate(**tiny.inputs(), max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == len(tiny.texts) and generated.shape[1] == logits.shape[1] + 3
    return logits


def check_remove_restores(tiny: Tiny, before_logits: torch.Tensor, before_processor: dict, before_model) -> None:
    laco.remove(tiny.model)
    assert processor_state(tiny.processor) == before_processor
    config, inner, weights = model_state(tiny.model)
    assert (config, inner) == before_model[:2]
    assert weights.keys() == before_model[2].keys()
    assert all(torch.equal(weights[k], before_model[2][k]) for k in weights)
    assert tiny.model.model.config is tiny.model.config
    assert torch.equal(tiny.logits(), before_logits)


def round_trip(tiny: Tiny, layer, mode: str = "auto", **options) -> torch.Tensor:
    """Apply, run, remove: the model and the processor come back bit for bit. Returns the compressed logits."""
    before_logits, before_processor, before_model = (
        tiny.logits(),
        processor_state(tiny.processor),
        model_state(tiny.model),
    )
    logits = apply_and_run(tiny, layer, mode, **options)
    check_remove_restores(tiny, before_logits, before_processor, before_model)
    return logits


def image_tokens(tiny: Tiny, token_id: int) -> int:
    return int((tiny.inputs()["input_ids"] == token_id).sum())


def check_conversion(tiny: Tiny, tmp_path, layer, mode: str = "auto", auto_processor: bool = True) -> Any:
    """Save ``tiny`` as a stock checkpoint, convert it, and check what the issue asks of the result: every source
    tensor kept bit for bit and only laco's new, a LaCo model and a processor that reload from the directory alone
    and compute what ``laco.apply`` computes on the original. Returns the reloaded model."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny.model.save_pretrained(src)
    tiny.processor.save_pretrained(src)
    summary = laco.convert(src, dst, layer, mode=mode, processor=None if auto_processor else tiny.processor)
    before, after = load_file(src / "model.safetensors"), load_file(dst / "model.safetensors")
    assert all(name in after and torch.equal(after[name], tensor) for name, tensor in before.items())
    new = sorted(set(after) - set(before))
    assert new == summary["new_tensors"] and new and all(".laco_compressor." in name for name in new)

    model = AutoModelForImageTextToText.from_pretrained(dst)
    if auto_processor:
        processor = AutoProcessor.from_pretrained(dst)
    else:  # a processor built without its video processor (see without_video) reloads without one
        processor = type(tiny.processor).from_pretrained(dst, video_processor=None)
    assert type(model).__name__.startswith("Laco") and type(model).__name__.endswith(type(tiny.model).__name__)
    laco.apply(tiny.model, layer, mode=mode, processor=tiny.processor)
    assert laco.placement_of(model) == laco.placement_of(tiny.model)
    inputs = dict(processor(images=tiny.images, text=tiny.texts, return_tensors="pt", padding=True))
    assert torch.equal(inputs["input_ids"], tiny.inputs()["input_ids"])  # the same placeholders
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, tiny.model(**inputs).logits, rtol=0, atol=0)
    laco.remove(tiny.model)
    return model
