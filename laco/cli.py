"""The ``laco`` command: train, eval, generate, bench, study.

Every subcommand's ``--help`` explains its options; configs are YAML files (see ``configs/``), and any config key
can be overridden with ``--set key.path=value``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--limit 0`` and ``--jobs 0`` were silently ignored before)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is out of range: use a whole number >= {low}")
    return value


DEFAULT_RUN_HELP = (
    "Without --config, the embedded default: DINOv2-S (offline weights) + SmolLM2-135M-Instruct, LaCo at 1/4 "
    "depth, stage 1 (merge + projector) then stage 2 (+ LLM) on easy-VQA, evaluated on its test split."
)


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a LaCo MLLM in stages, then evaluate it",
        description="Train a LaCo MLLM in LLaVA-style stages and evaluate it. " + DEFAULT_RUN_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML run config (see configs/); default: the embedded default")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set stages.0.max_steps=50 --set model.compression.layers=1/2",
    )
    parser.add_argument("--output-dir", help="run directory (default: config's output_dir); an existing run resumes")
    parser.add_argument(
        "--layers",
        help="where to compress: 'none', 'last' (external), a layer such as 3, a fraction such as 1/4, or a list '3,6'",
    )
    parser.add_argument("--method", help="compressor: laco, pixel_shuffle, avgpool, ldpv2, tokenpacker")
    parser.add_argument("--vision", help="vision encoder: 'dinov2-small' (offline) or a hub id / local path")
    parser.add_argument("--llm", help="causal LM: 'smollm2-135m' (offline) or a hub id / local path")
    parser.add_argument("--train-json", help="LLaVA conversation JSON to train on (with --image-folder)")
    parser.add_argument("--image-folder", help="folder the JSON's 'image' paths are relative to")
    parser.add_argument("--limit", type=positive_int, help="use only the first N usable training records")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    parser.add_argument(
        "--force-config",
        action="store_true",
        help="continue a run even though this config changes its result (refused otherwise; logged in the run)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 4 steps per stage on 64 records, 32 eval questions"
    )
    parser.set_defaults(handler=_run_train)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.layers:
        layers = args.layers
        if "," in layers:
            layers = "[" + layers + "]"
        overrides.append(f"model.compression.layers={layers}")
    if args.method:
        overrides.append(f"model.compression.method={args.method}")
    if args.vision:
        overrides.append(f"model.vision={args.vision}")
    if args.llm:
        overrides.append(f"model.llm={args.llm}")
    if args.train_json:
        overrides += ["data.dataset=llava", f"data.train_json={args.train_json}"]
    if args.image_folder:
        overrides.append(f"data.image_folder={args.image_folder}")
    if args.limit is not None:
        overrides.append(f"data.limit={args.limit}")
    if args.strict:
        overrides.append("data.strict=true")
    if args.quick:
        overrides += ["data.limit=64", "eval.limit=32", "training.logging_steps=1", "training.save_steps=2"]
        overrides += [f"stages.{i}.max_steps=4" for i in range(2)] + [f"stages.{i}.batch_size=4" for i in range(2)]
    return overrides + args.overrides


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    config = load_config(args.config, _train_overrides(args))
    summary = train(config, force_config=args.force_config)
    print("\ntraining summary")
    for stage in summary["stages"]:
        print(
            f"  {stage['name']}: {stage['steps']} steps in {stage['seconds']:.0f} s, final loss {stage['final_loss']:.3f}, "
            f"{stage['tokens_per_second']:.0f} tokens/s, {stage['images_per_second']:.1f} images/s"
        )
    final = Path(config.output_dir) / "final"
    print(f"  model: {final}")
    if not args.no_eval and (config.data.dataset == "easy-vqa" or config.data.eval_json):
        result = _evaluate(final, config, config.eval.batch_size, config.eval.max_new_tokens)
        result.to_json(final.parent / "eval.json")
        print(f"  eval ({config.eval.split}): {result.summary()}")
        if config.data.dataset == "easy-vqa":
            _print_answer_types(result)
    return 0


def _print_answer_types(result) -> None:
    from .data.easyvqa import ANSWER_TYPES

    for name, row in result.by_group(ANSWER_TYPES).items():
        print(f"    {name:7s} {row['accuracy']:6.1%}  (question-only prior {row['question_prior']:.1%}, n={row['n']})")


def _evaluate(model_dir: Path, config, batch_size: int, max_new_tokens: int):
    """Score ``model_dir`` on the evaluation split ``config.data`` / ``config.eval`` name (what train and eval share)."""
    from .data import eval_examples
    from .evaluate import evaluate, load_model

    model, processor = load_model(model_dir)
    examples, train_pairs = eval_examples(config.data, config.eval.split, processor, config.eval.limit)
    return evaluate(
        model, processor, examples, train_pairs=train_pairs, batch_size=batch_size, max_new_tokens=max_new_tokens
    )


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="exact-match accuracy of a trained model on a LLaVA-format split",
        description="Greedy answers scored by normalised exact match, next to the majority-answer baseline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="a model directory written by laco train (its final/)"
    )
    parser.add_argument("--split", default="test", help="easy-VQA split to score (when --eval-json is not given)")
    parser.add_argument("--eval-json", help="LLaVA JSON to score instead of easy-VQA (single-turn records)")
    parser.add_argument("--image-folder", help="image folder for --eval-json")
    parser.add_argument("--limit", type=non_negative_int, default=1000, help="score the first N questions (0: all)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="questions per generate call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=8, help="answer length limit")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    parser.add_argument("--output", type=Path, help="write the result (with every prediction) to this JSON file")
    parser.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .config import load_config

    overrides = [f"eval.split={args.split}", f"eval.limit={args.limit or 'null'}"]
    if args.strict:
        overrides.append("data.strict=true")
    if args.output is not None:  # before the evaluation, not after it: a bad path must not cost the whole run
        _prepare_output(args.output)
    if args.eval_json:
        if not args.image_folder:
            raise SystemExit("--eval-json needs --image-folder")
        overrides += [
            "data.dataset=llava",
            f"data.eval_json={args.eval_json}",
            f"data.image_folder={args.image_folder}",
            f"data.train_json={args.eval_json}",
        ]
    result = _evaluate(args.model, load_config(None, overrides), args.batch_size, args.max_new_tokens)
    print(result.summary())
    if not args.eval_json:
        _print_answer_types(result)
    if args.output:
        result.to_json(args.output)
    return 0


def _prepare_output(path: Path) -> None:
    """Create the parent folder of an output file and check it can be written, before any work is done."""
    if path.is_dir():
        raise SystemExit(f"--output {path} is a directory; name a JSON file, e.g. {path / 'eval.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe")
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"cannot write --output {path}: {error}") from None


def _add_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="answer a question about an image",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="a model directory written by laco train")
    parser.add_argument("--image", type=Path, required=True, help="the image file")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, help="answer length limit")
    parser.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from .data.images import ImageProblem, load_rgb
    from .evaluate import answer, load_model

    if not args.image.exists():
        raise SystemExit(f"image {args.image} not found")
    try:
        image = load_rgb(args.image)  # the reader training uses: pixel budget, 16-bit images scaled
    except ImageProblem as problem:
        raise SystemExit(str(problem)) from None
    model, processor = load_model(args.model)
    print(answer(model, processor, [image], [args.prompt], args.max_new_tokens)[0])
    return 0


def _add_delegate(subparsers, name: str, help_text: str, module: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, add_help=False)
    parser.set_defaults(handler=None, delegate=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laco",
        description="LaCo: compress visual tokens inside the vision encoder of multimodal LLMs, and measure it.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_generate(subparsers)
    _add_delegate(subparsers, "bench", "time LaCo against external compression at real geometries", "laco.bench")
    _add_delegate(
        subparsers, "study", "the quality study: every compressor, depth and shortcut on real tasks", "laco.study"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # bench and study own their option parsers: everything after the subcommand goes to them
    if argv and argv[0] in ("bench", "study"):
        import importlib

        return importlib.import_module(f"laco.{argv[0]}").main(argv[1:]) or 0
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except _refusals() as refusal:
        # a refusal is the answer, not a crash: its message names the problem and the fix, without a traceback
        raise SystemExit(f"laco {args.command}: {refusal}") from None


def _refusals() -> tuple[type[Exception], ...]:
    """Errors that refuse a request before (or instead of) doing the wrong thing."""
    from .checkpoints import CheckpointMismatch, UnsafeWeights
    from .data.llava import DataError
    from .train.resume import ConfigMismatch, RunDirectoryBusy

    return (CheckpointMismatch, ConfigMismatch, DataError, RunDirectoryBusy, UnsafeWeights)


if __name__ == "__main__":
    sys.exit(main())
