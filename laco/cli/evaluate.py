"""``laco eval``: exact match on a split, or lmms-eval tasks (``--suite``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_precision, non_negative_int, positive_int


def print_answer_types(result) -> None:
    from ..data.easyvqa import ANSWER_TYPES

    for name, row in result.by_group(ANSWER_TYPES).items():
        print(
            f"    {name:7s} {row['accuracy']:6.1%}  (question-only prior {row['question_prior']:.1%}, n={row['n']}; "
            f"the prior's answer given on {row['same_as_prior']:.1%})"
        )


def evaluate_model(model_dir: Path, config, batch_size: int, max_new_tokens: int):
    """Score ``model_dir`` on the evaluation split ``config.data`` / ``config.eval`` name (what train and eval share)."""
    from ..data import eval_examples
    from ..evaluate import evaluate, load_model

    model, processor = load_model(model_dir, precision=config.eval.precision)
    examples, train_pairs = eval_examples(config.data, config.eval.split, processor, config.eval.limit)
    return evaluate(
        model, processor, examples, train_pairs=train_pairs, batch_size=batch_size, max_new_tokens=max_new_tokens
    )


def add(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="exact-match accuracy of a trained model on a LLaVA-format split",
        description="Greedy answers scored by normalised exact match, next to the majority-answer baseline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="a model directory written by laco train (its final/)")
    parser.add_argument("--split", default="test", help="easy-VQA split to score (when --eval-json is not given)")
    parser.add_argument(
        "--eval-json",
        help="LLaVA JSON to score instead of easy-VQA (multi-turn records: the last answer, after the earlier turns)",
    )
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
    add_precision(parser)
    parser.set_defaults(handler=_run_eval)


def _run_lmms_eval(args: argparse.Namespace) -> int:
    if args.write_tasks:
        from ..harness import write_easyvqa_tasks

        print(f"wrote easy-VQA lmms-eval tasks to {write_easyvqa_tasks(args.write_tasks)}")
        return 0
    from ..harness.suite import SuiteError, run_suite

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
    from ..config import load_config
    from ..harness.family import check_servable

    # another family's LaCo checkpoint answers through its processor; anything else is refused before any work
    check_servable(args.model, "laco eval", families=True)
    if not args.eval_json:
        _check_split(args.split)

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
    result = evaluate_model(args.model, load_config(None, overrides), args.batch_size, args.max_new_tokens)
    print(result.summary())
    if not args.eval_json:
        print_answer_types(result)
    if args.output:
        result.to_json(args.output)
    return 0


def _check_split(split: str) -> None:
    from ..data import EASY_VQA_SPLITS, DataError

    if split not in EASY_VQA_SPLITS:
        raise DataError(
            f"--split {split!r} is not an easy-VQA split; use one of {list(EASY_VQA_SPLITS)}, or score your own "
            "file with --eval-json FILE --image-folder DIR."
        )


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
