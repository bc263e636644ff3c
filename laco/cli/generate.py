"""``laco generate``: answer questions about images (one question about several images, or several questions)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_precision, positive_int


def add(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="answer a question about one or several images",
        description="One --prompt with several --image asks about all of them (<image> tags in the prompt place "
        "them, else they come first); several --prompt ask each about the one --image, or each about its own "
        "--image (as many of each, paired in order). One answer per prompt, one line each.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="a model directory written by laco train")
    parser.add_argument("--image", type=Path, action="append", required=True, help="an image file (repeat for several)")
    parser.add_argument("--prompt", action="append", required=True, help="a question (repeat for several)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, help="answer length limit")
    add_precision(parser)
    parser.set_defaults(handler=_run_generate)


def pair_up(images: list, prompts: list[str]) -> tuple[list[list], list[str]]:
    """``(images per prompt, prompts)`` for the combinations ``laco generate`` takes; refuses the others."""
    if len(prompts) == 1:
        return [list(images)], prompts
    if len(images) == 1:
        return [[images[0]] for _ in prompts], prompts
    if len(images) == len(prompts):
        return [[image] for image in images], prompts
    raise SystemExit(
        f"laco generate: got {len(prompts)} --prompt and {len(images)} --image; pass one prompt about all the "
        "images, one image for all the prompts, or one image per prompt (paired in order)."
    )


def _run_generate(args: argparse.Namespace) -> int:
    from ..data.images import ImageProblem, load_rgb
    from ..evaluate import answer, load_model
    from ..harness.family import check_servable

    missing = [str(path) for path in args.image if not path.exists()]
    if missing:
        raise SystemExit(f"image {', '.join(missing)} not found")
    pair_up(args.image, args.prompt)  # refuse a combination before any image or model is loaded
    check_servable(args.model, "laco generate", families=True)  # another family, or a damaged checkpoint
    try:
        images = [load_rgb(path) for path in args.image]  # the reader training uses: pixel budget, 16-bit scaled
    except ImageProblem as problem:
        raise SystemExit(str(problem)) from None
    per_prompt, prompts = pair_up(images, args.prompt)
    model, processor = load_model(args.model, precision=args.precision)
    for prompt, row in zip(prompts, per_prompt):
        tags = prompt.count("<image>")
        try:
            if hasattr(processor, "prompt"):  # laco's LLaVA processor: a prompt whose tags do not match its images
                processor.prompt(prompt, len(row))
            elif tags not in (0, len(row)):  # another family's processor reads the same <image> tags
                raise ValueError(
                    f"the prompt {prompt!r} holds {tags} <image> tag(s) for {len(row)} image(s); put one "
                    "tag per image where it belongs in the text, or none to put every image first."
                )
        except ValueError as error:
            raise SystemExit(f"laco generate: {error}") from None
    for text in answer(model, processor, per_prompt, prompts, args.max_new_tokens):
        print(text)
    return 0
