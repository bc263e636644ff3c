"""``laco convert``: a LaCo checkpoint of a trained MLLM."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..compressors import available as available_methods
from ..compressors.base import check_options
from .arguments import compressor_option


def add(subparsers) -> None:
    from ..placement import MODES

    parser = subparsers.add_parser(
        "convert",
        help="turn a trained MLLM checkpoint (LLaVA family, InternVL, Idefics3/SmolVLM, Gemma3) into a LaCo one",
        description="Write a LaCo version of a checkpoint: every pretrained tensor kept, laco's merge added (an "
        "untrained merge is average pooling), config and processor updated. Reload it with "
        "AutoModelForImageTextToText / AutoProcessor after `import laco`, or with laco.load.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="checkpoint directory (safetensors weights, config, processor)")
    parser.add_argument("dst", type=Path, help="directory to write the LaCo checkpoint to")
    parser.add_argument(
        "--layer", required=True, help="where to merge: a layer such as 6, a fraction of depth such as 1/4, or 'last'"
    )
    parser.add_argument("--mode", default="auto", choices=MODES, help="for models that compress after their encoder")
    parser.add_argument("--method", default="laco", help=f"compressor: {', '.join(available_methods())}")
    parser.add_argument("--factor", type=int, default=2, help="merge factor x factor tokens")
    parser.add_argument(
        "--option",
        type=compressor_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a compressor option (YAML value), e.g. --option init=ffn_reuse for laco-window",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty dst")
    parser.set_defaults(handler=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from ..convert import convert, describe
    from ..placement import Placement

    try:
        check_options(args.method, dict(args.option))
        _check_source_weights(args.src)
        placement = Placement(args.layer, args.method, args.factor, mode=args.mode, options=dict(args.option))
        summary = convert(args.src, args.dst, placement, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        raise SystemExit(f"laco convert: {error}") from error
    print(describe(summary))
    print(f"reload: import laco; AutoModelForImageTextToText.from_pretrained({str(args.dst)!r})")
    return 0


def _check_source_weights(src: Path) -> None:
    """A cut-short or empty safetensors file is refused by name before transformers reads it (which raised a bare
    ``SafetensorError: invalid header length`` with a traceback)."""
    from ..digests import safetensors_problem

    for file in sorted(src.glob("*.safetensors")) if src.is_dir() else ():
        problem = safetensors_problem(file)
        if problem is not None:
            raise ValueError(f"{file} {problem}: the checkpoint is damaged; copy or save it again, then convert.")
