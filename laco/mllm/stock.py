"""A LaCo LLaVA checkpoint's processor as laco's training, evaluation and generation take it.

A checkpoint laco trained or converted from its own model holds a :class:`LacoProcessor`. One converted from a
stock ``LlavaForConditionalGeneration`` holds the stock ``LlavaProcessor`` (updated by ``laco convert`` so it counts
the merged placeholders). :func:`load_processor` gives a :class:`LacoProcessor` for both: the stock processor's
tokenizer, image token and multimodal chat template, its image processor's size, resize policy and normalisation
(:func:`laco.mllm.transform.transform_from_processor`), and the placeholder count the model needs, checked against
the count the stock processor itself produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from .processing import IMAGE_TAG, PROCESSOR_FILE, LacoProcessor
from .transform import transform_from_processor

PROCESSOR_ERRORS = (OSError, ValueError, ImportError, TypeError, KeyError)


def load_processor(directory: str | Path, model: Any) -> LacoProcessor:
    """The processor saved with the LaCo LLaVA checkpoint ``directory`` (whose loaded model is ``model``)."""
    directory = Path(directory)
    if (directory / PROCESSOR_FILE).exists():
        return LacoProcessor.from_pretrained(directory)
    from transformers import AutoProcessor

    try:
        stock = AutoProcessor.from_pretrained(directory)
    except PROCESSOR_ERRORS as error:
        raise ValueError(
            f"{directory} has no {PROCESSOR_FILE} and AutoProcessor cannot load its processor ({type(error).__name__}: "
            f"{error}); save the model's processor next to it (processor.save_pretrained('{directory}'))."
        ) from error
    return from_stock(stock, model, str(directory))


def from_stock(processor: Any, model: Any, where: str = "the processor") -> LacoProcessor:
    """A :class:`LacoProcessor` that prepares inputs as the stock LLaVA ``processor`` does for ``model``."""
    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if image_processor is None or tokenizer is None:
        raise ValueError(
            f"{where} is a {type(processor).__name__}, not a LLaVA processor with an image_processor and a tokenizer; "
            "laco's pipeline reads its images and text through those two."
        )
    transform = transform_from_processor(image_processor.to_dict(), f"the image processor of {where}")
    template = getattr(processor, "chat_template", None)
    laco_processor = LacoProcessor(
        tokenizer,
        transform,
        num_image_tokens=model.num_image_tokens(transform.size),
        image_token=getattr(processor, "image_token", IMAGE_TAG),
        system_prompt=None,  # the template's own default, as the stock processor renders it
        chat_template=template if isinstance(template, str) else None,
    )
    stock_count = _stock_count(processor, laco_processor, transform.size)
    if stock_count != laco_processor.num_image_tokens:
        raise ValueError(
            f"{where} gives {stock_count} placeholder tokens per {transform.size} px image, the model needs "
            f"{laco_processor.num_image_tokens}; the processor was not updated with the model's merge. Convert with "
            "`laco convert` (which updates both), or laco.apply(model, ..., processor=processor) and save both."
        )
    return laco_processor


def _stock_count(processor: Any, laco_processor: LacoProcessor, size: int) -> int:
    """How many placeholders the stock processor writes for one image of the size its image processor emits."""
    token = laco_processor.image_token
    inputs = processor(images=[Image.new("RGB", (size, size))], text=[token], return_tensors="pt")
    return int((inputs["input_ids"] == laco_processor.image_token_id).sum())
