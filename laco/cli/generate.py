"""``laco generate``: answer one question about one image."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_precision, positive_int


def add(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="answer a question about an image",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="a model directory written by laco train")
    parser.add_argument("--image", type=Path, required=True, help="the image file")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, help="answer length limit")
    add_precision(parser)
    parser.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from ..data.images import ImageProblem, load_rgb
    from ..evaluate import answer, load_model

    if not args.image.exists():
        raise SystemExit(f"image {args.image} not found")
    try:
        image = load_rgb(args.image)  # the reader training uses: pixel budget, 16-bit images scaled
    except ImageProblem as problem:
        raise SystemExit(str(problem)) from None
    model, processor = load_model(args.model, precision=args.precision)
    print(answer(model, processor, [image], [args.prompt], args.max_new_tokens)[0])
    return 0
