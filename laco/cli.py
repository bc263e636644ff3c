"""The ``laco`` command: train, eval, generate, convert, bench, study.

Every subcommand's ``--help`` explains its options; configs are YAML files (see ``configs/``), and any config key
can be overridden with ``--set key.path=value``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .precision import PRECISIONS


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
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="auto (bf16 where the hardware has it, else fp32), bf16, fp16 or fp32"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    parser.add_argument(
        "--seeds",
        type=_seed_list,
        help="train and score one run per seed (e.g. 0,1,2) under OUTPUT_DIR/seed<N>; mean ± std in OUTPUT_DIR/seeds.json",
    )
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
    if args.precision:
        overrides += [f"training.precision={args.precision}", f"eval.precision={args.precision}"]
    if args.quick:
        overrides += ["data.limit=64", "eval.limit=32", "training.logging_steps=1", "training.save_steps=2"]
        overrides += [f"stages.{i}.max_steps=4" for i in range(2)] + [f"stages.{i}.batch_size=4" for i in range(2)]
    return overrides + args.overrides


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config, _train_overrides(args))
    if args.seeds is not None:
        return _run_seeds(config, args.seeds, force_config=args.force_config)
    _train_and_evaluate(config, evaluate=not args.no_eval, force_config=args.force_config)
    return 0


def _train_and_evaluate(config, evaluate: bool, force_config: bool = False):
    """Train ``config``, print its summary and (on easy-VQA) score it; returns (summary, eval result or None)."""
    from .train import train

    summary = train(config, force_config=force_config)
    print("\ntraining summary")
    for stage in summary["stages"]:
        print(
            f"  {stage['name']}: {stage['steps']} steps in {stage['seconds']:.0f} s, final loss {stage['final_loss']:.3f}, "
            f"{stage['tokens_per_second']:.0f} tokens/s, {stage['images_per_second']:.1f} images/s"
        )
    final = Path(config.output_dir) / "final"
    print(f"  model: {final}")
    if not evaluate or not _has_eval_split(config):
        return summary, None
    result = _evaluate(final, config, config.eval.batch_size, config.eval.max_new_tokens)
    result.to_json(final.parent / "eval.json")
    print(f"  eval ({config.eval.split}): {result.summary()}")
    if config.data.dataset == "easy-vqa":
        _print_answer_types(result)
    return summary, result


def _has_eval_split(config) -> bool:
    return config.data.dataset == "easy-vqa" or bool(config.data.eval_json)


def _run_seeds(config, seeds: list[int], force_config: bool = False) -> int:
    """One run per seed under ``output_dir/seed<N>``, each recorded in ``output_dir/seeds.json`` when it ends."""
    import dataclasses
    import json
    import time

    from .data.easyvqa import ANSWER_TYPES
    from .train.seeds import SeedRecord, describe_machine, markdown_table, record_seed, seed_dir

    if not _has_eval_split(config):
        raise SystemExit(
            "--seeds scores every seed: train on easy-VQA, or give data.eval_json (--set data.eval_json=...)."
        )
    for seed in seeds:
        run = dataclasses.replace(config, seed=seed, output_dir=str(seed_dir(config.output_dir, seed)))
        print(f"\n=== seed {seed}: {run.output_dir} ===")
        started = time.perf_counter()
        summary, result = _train_and_evaluate(run, evaluate=True, force_config=force_config)
        wall = time.perf_counter() - started
        model_config = json.loads((Path(run.output_dir) / "final" / "config.json").read_text())
        record = SeedRecord(
            seed=seed,
            run=run.output_dir,
            wall_seconds=round(wall, 1),
            train_seconds=round(sum(stage["seconds"] for stage in summary["stages"]), 1),
            eval_seconds=result.seconds,
            accuracy=result.accuracy,
            groups={name: row["accuracy"] for name, row in result.by_group(ANSWER_TYPES).items()},
            majority_accuracy=result.majority_accuracy,
            question_prior_accuracy=result.question_prior_accuracy,
            image_tokens=int(model_config["image_seq_length"]),
            precision=summary["precision"]["name"],
        )
        record_seed(config.output_dir, record, describe_machine())
    print("\n" + markdown_table([config.output_dir])[0])
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers such as 0,1,2, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds needs distinct seeds >= 0 such as 0,1,2, not {text!r}")
    return seeds


def _print_answer_types(result) -> None:
    from .data.easyvqa import ANSWER_TYPES

    for name, row in result.by_group(ANSWER_TYPES).items():
        print(f"    {name:7s} {row['accuracy']:6.1%}  (question-only prior {row['question_prior']:.1%}, n={row['n']})")


def _evaluate(model_dir: Path, config, batch_size: int, max_new_tokens: int):
    """Score ``model_dir`` on the evaluation split ``config.data`` / ``config.eval`` name (what train and eval share)."""
    from .data import eval_examples
    from .evaluate import evaluate, load_model

    model, processor = load_model(model_dir, precision=config.eval.precision)
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
    parser.add_argument("--model", type=Path, help="a model directory written by laco train (its final/)")
    parser.add_argument("--split", default="test", help="easy-VQA split to score (when --eval-json is not given)")
    parser.add_argument("--eval-json", help="LLaVA JSON to score instead of easy-VQA (single-turn records)")
    parser.add_argument("--image-folder", help="image folder for --eval-json")
    parser.add_argument("--limit", type=non_negative_int, default=1000, help="score the first N questions (0: all)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="questions per generate call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=8, help="answer length limit")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    parser.add_argument(
        "--output",
        type=Path,
        help="write the result (with every prediction) to this JSON file; with --suite: the folder for suite.json, "
        "suite.md and per-task results (default runs/suite)",
    )
    # lmms-eval (laco/harness, docs/evaluation.md)
    parser.add_argument(
        "--suite",
        help="score lmms-eval tasks instead (comma-separated), e.g. easyvqa,easyvqa_colour_mc or mme,gqa; "
        "--limit applies per task",
    )
    parser.add_argument(
        "--baseline", type=Path, action="append", default=[], help="with --suite: also score this model (repeatable)"
    )
    parser.add_argument(
        "--include-path", type=Path, action="append", default=[], help="with --suite: a folder of your own task YAMLs"
    )
    parser.add_argument(
        "--write-tasks",
        type=Path,
        metavar="DIR",
        help="write laco's easy-VQA lmms-eval tasks into DIR (for lmms-eval --include_path DIR) and exit",
    )
    _add_precision(parser)
    parser.set_defaults(handler=_run_eval)


def _run_lmms_eval(args: argparse.Namespace) -> int:
    if args.write_tasks:
        from .harness import write_easyvqa_tasks

        print(f"wrote easy-VQA lmms-eval tasks to {write_easyvqa_tasks(args.write_tasks)}")
        return 0
    from .harness.suite import SuiteError, run_suite

    try:
        report = run_suite(
            args.model,
            [task.strip() for task in args.suite.split(",") if task.strip()],
            args.output or Path("runs/suite"),
            baselines=args.baseline,
            limit=args.limit or None,
            batch_size=args.batch_size,
            include_paths=args.include_path,
            precision=args.precision,
        )
    except SuiteError as error:
        raise SystemExit(f"laco eval --suite: {error}") from error
    print("\n" + report.markdown())
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    if args.write_tasks or args.suite:
        if args.suite and args.model is None:
            raise SystemExit("--suite needs --model")
        return _run_lmms_eval(args)
    if args.model is None:
        raise SystemExit("laco eval needs --model (or --write-tasks DIR)")
    from .config import load_config

    overrides = [f"eval.split={args.split}", f"eval.limit={args.limit or 'null'}", f"eval.precision={args.precision}"]
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
    _add_precision(parser)
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
    model, processor = load_model(args.model, precision=args.precision)
    print(answer(model, processor, [image], [args.prompt], args.max_new_tokens)[0])
    return 0


def _add_table(subparsers) -> None:
    parser = subparsers.add_parser(
        "table",
        help="one table of arms trained with --seeds: mean ± std, blind baselines, machine",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("arms", nargs="+", type=Path, help="output directories of `laco train --seeds` runs")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown) and its data (.json beside it)")
    parser.set_defaults(handler=_run_table)


def _run_table(args: argparse.Namespace) -> int:
    from .train.seeds import markdown_table, write_table

    print(markdown_table(args.arms)[0])
    if args.out:
        print("wrote", *write_table(args.arms, args.out))
    return 0


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="the dtype the model answers in: auto (bf16 where the hardware multiplies it natively, else fp32), "
        "bf16, fp16 (GPU) or fp32",
    )


def _add_delegate(subparsers, name: str, help_text: str, module: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, add_help=False)
    parser.set_defaults(handler=None, delegate=module)


def _add_convert(subparsers) -> None:
    from .placement import MODES

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
    parser.add_argument("--method", default="laco", help="compressor: laco, pixel_shuffle, avgpool, ldpv2, tokenpacker")
    parser.add_argument("--factor", type=int, default=2, help="merge factor x factor tokens")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty dst")
    parser.set_defaults(handler=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .convert import convert, describe
    from .placement import Placement

    try:
        placement = Placement(args.layer, args.method, args.factor, mode=args.mode)
        summary = convert(args.src, args.dst, placement, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        raise SystemExit(f"laco convert: {error}") from error
    print(describe(summary))
    print(f"reload: import laco; AutoModelForImageTextToText.from_pretrained({str(args.dst)!r})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laco",
        description="LaCo: compress visual tokens inside the vision encoder of multimodal LLMs, and measure it.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_generate(subparsers)
    _add_table(subparsers)
    _add_convert(subparsers)
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
