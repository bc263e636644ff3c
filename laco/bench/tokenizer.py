"""A small tokenizer for random-weight benchmark checkpoints that a server must load like real ones.

A served checkpoint needs a tokenizer with a chat template; random weights need no real vocabulary. This one is a
byte-level BPE (any text encodes, and decodes back) trained in milliseconds on a few sentences, with ChatML turns,
so no tokenizer has to be downloaded. Its ids are all far below a real LLM's vocabulary size.
"""

from __future__ import annotations

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Describe the image in one sentence.",
    "What color is the shape? Is there a circle in the image? yes no red blue green",
    "The picture shows a small triangle next to a large square on a white background.",
]


def bench_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' or c['type'] == 'image_url' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML with Qwen-VL's image part (``<|vision_start|><|image_pad|><|vision_end|>``), as the published template
writes an image."""


def qwen_processor(family: str, patch: int, merge: int, image_size: int):
    """A Qwen2-VL / Qwen2.5-VL processor on :func:`bench_tokenizer` (with Qwen-VL's vision tokens and chat template)
    and transformers' PIL image processor, resizing every image to exactly ``image_size`` x ``image_size`` px.

    Images only: the stock processor also holds a video processor, which needs torchvision; the class below is the
    stock class (same name, so a saved ``processor_config.json`` names it) without that attribute."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    stock = Qwen2_5_VLProcessor if family == "qwen2.5-vl" else Qwen2VLProcessor
    attributes = [name for name in stock.get_attributes() if name != "video_processor"]
    images_only = type(stock.__name__, (stock,), {"get_attributes": classmethod(lambda cls: list(attributes))})
    tokenizer = bench_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]}
    )
    tokenizer.pad_token = "<unk>"
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=merge, min_pixels=pixels, max_pixels=pixels, temporal_patch_size=2
    )
    processor = images_only(image_processor=image_processor, tokenizer=tokenizer)
    processor.chat_template = QWEN_CHAT_TEMPLATE
    return processor
