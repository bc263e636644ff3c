"""``laco train`` (with ``--seeds``, and ``--frontier`` for one arm per placement) and ``laco table``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..compressors import available as available_methods
from .arguments import add_precision, positive_int, seed_list
from .evaluate import evaluate_model, print_answer_types

DEFAULT_RUN_HELP = (
    "Without --config, the embedded default: DINOv2-S (offline weights) + SmolLM2-135M-Instruct, LaCo at 1/4 "
    "depth, stage 1 (merge + projector) then stage 2 (+ LLM) on easy-VQA, evaluated on its test split."
)


def add(subparsers) -> None:
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
    parser.add_argument("--method", help=f"compressor: {', '.join(available_methods())}")
    parser.add_argument("--vision", help="vision encoder: 'dinov2-small' (offline) or a hub id / local path")
    parser.add_argument("--llm", help="causal LM: 'smollm2-135m' (offline) or a hub id / local path")
    parser.add_argument(
        "--init-from",
        metavar="DIR",
        help="fine-tune this LaCo LLaVA checkpoint (a `laco convert` output or a run's final/) instead of assembling "
        "--vision + --llm; it brings its merge and processor (see configs/init-from.yaml)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="image side in pixels (default: the encoder's own, from its image processor; 112 for dinov2-small); "
        "mean/std and resize policy: --set model.image_mean=[0.5,0.5,0.5] (likewise model.image_std, "
        "model.resize=squash, shortest_edge or pad)",
    )
    parser.add_argument("--train-json", help="LLaVA conversation JSON to train on (with --image-folder)")
    parser.add_argument("--image-folder", help="folder the JSON's 'image' paths are relative to")
    parser.add_argument("--limit", type=positive_int, help="use only the first N usable training records")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    add_precision(parser, default=None, what="trains and answers in (default: the config's, auto)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    parser.add_argument(
        "--seeds",
        type=seed_list,
        help="train and score one run per seed (e.g. 0,1,2) under OUTPUT_DIR/seed<N>; mean ± std in OUTPUT_DIR/seeds.json",
    )
    parser.add_argument(
        "--frontier",
        type=frontier_arms,
        metavar="SPECS",
        help="train one arm per placement, ';'-separated (e.g. '2;3;4;6;9;3,9;last;none'), each with --seeds, under "
        "OUTPUT_DIR/<arm>; then write OUTPUT_DIR/frontier.md, .json and .png (quality against tower speed-up)",
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
    if args.init_from:
        overrides.append(f"model.init_from={args.init_from}")
    if args.image_size is not None:
        overrides.append(f"model.image_size={args.image_size}")
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
    from ..config import load_config

    config = load_config(args.config, _train_overrides(args))
    if args.frontier is not None:
        return _run_frontier(args, config)
    if args.seeds is not None:
        return _run_seeds(config, args.seeds, force_config=args.force_config)
    _train_and_evaluate(config, evaluate=not args.no_eval, force_config=args.force_config)
    return 0


def _train_and_evaluate(config, evaluate: bool, force_config: bool = False):
    """Train ``config``, print its summary and (on easy-VQA) score it; returns (summary, eval result or None)."""
    from ..train import train

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
    result = evaluate_model(final, config, config.eval.batch_size, config.eval.max_new_tokens)
    result.to_json(final.parent / "eval.json")
    print(f"  eval ({config.eval.split}): {result.summary()}")
    if config.data.dataset == "easy-vqa":
        print_answer_types(result)
    return summary, result


def _has_eval_split(config) -> bool:
    return config.data.dataset == "easy-vqa" or bool(config.data.eval_json)


def _run_seeds(config, seeds: list[int], force_config: bool = False) -> int:
    """One run per seed under ``output_dir/seed<N>``, each recorded in ``output_dir/seeds.json`` when it ends."""
    import dataclasses
    import json
    import time

    from ..data.easyvqa import ANSWER_TYPES
    from ..train.seeds import (
        SEEDS_FILE,
        SeedRecord,
        describe_machine,
        markdown_table,
        read_seeds,
        record_seed,
        seed_dir,
        tower_speedup_bound,
    )

    if not _has_eval_split(config):
        raise SystemExit(
            "--seeds scores every seed: train on easy-VQA, or give data.eval_json (--set data.eval_json=...)."
        )
    seeds_path = Path(config.output_dir) / SEEDS_FILE
    recorded = {s["seed"] for s in read_seeds(seeds_path)["seeds"]} if seeds_path.exists() else set()
    for seed in seeds:
        run = dataclasses.replace(config, seed=seed, output_dir=str(seed_dir(config.output_dir, seed)))
        print(f"\n=== seed {seed}: {run.output_dir} ===")
        finished = seed in recorded and (Path(run.output_dir) / "eval.json").exists()
        started = time.perf_counter()
        # a finished seed still goes through train(), which refuses a changed config, but keeps its record: its
        # wall time is the run's, not this check's
        summary, result = _train_and_evaluate(run, evaluate=not finished, force_config=force_config)
        if finished:
            print(f"  seed {seed} was finished and scored before; its record in {seeds_path} is kept")
            continue
        wall = time.perf_counter() - started
        # what the processor gives the LLM per image (the config's count is for the tower's own size)
        processor_file = json.loads((Path(run.output_dir) / "final" / "laco_processor.json").read_text())
        groups = result.by_group(ANSWER_TYPES)
        record = SeedRecord(
            seed=seed,
            run=run.output_dir,
            wall_seconds=round(wall, 1),
            train_seconds=round(sum(stage["seconds"] for stage in summary["stages"]), 1),
            eval_seconds=result.seconds,
            accuracy=result.accuracy,
            groups={name: row["accuracy"] for name, row in groups.items()},
            majority_accuracy=result.majority_accuracy,
            question_prior_accuracy=result.question_prior_accuracy,
            image_tokens=int(processor_file["num_image_tokens"]),
            precision=summary["precision"]["name"],
            group_priors={name: row["question_prior"] for name, row in groups.items()},
            tower_speedup_bound=tower_speedup_bound(run.model.vision, run.model.image_size, run.model.compression),
        )
        record_seed(config.output_dir, record, describe_machine())
    print("\n" + markdown_table([config.output_dir])[0])
    return 0


def frontier_arms(text: str) -> dict[str, str]:
    """argparse type: ``'2;3;3,9;last;none'`` -> ``{arm name: layer spec}`` (``last`` is ``external``)."""
    specs = [spec.strip() for spec in text.split(";") if spec.strip()]
    if not specs:
        raise argparse.ArgumentTypeError(f"--frontier needs placements such as '2;3;6;last;none', not {text!r}")
    names = {"last": "external", "none": "none"}
    arms = {names.get(spec, "layer" + spec.replace(",", "+")): spec for spec in specs}
    if len(arms) != len(specs):
        raise argparse.ArgumentTypeError(f"--frontier names a placement twice: {text!r}")
    return arms


def _run_frontier(args: argparse.Namespace, config) -> int:
    """Every placement of ``--frontier`` as an arm of ``--seeds`` (each run resumable), then the table and plot."""
    from ..config import load_config
    from ..train.seeds import write_table

    if args.seeds is None or args.layers:
        raise SystemExit("--frontier trains one arm per placement: give --seeds (e.g. 0,1,2) and no --layers.")
    root = Path(config.output_dir)
    for arm, spec in args.frontier.items():
        layers = "[" + spec + "]" if "," in spec else spec
        overrides = [*_train_overrides(args), f"output_dir={root / arm}", f"model.compression.layers={layers}"]
        _run_seeds(load_config(args.config, overrides), args.seeds, force_config=args.force_config)
    print("wrote", *write_table([root / arm for arm in args.frontier], root / "frontier.md"))
    return 0


def add_table(subparsers) -> None:
    parser = subparsers.add_parser(
        "table",
        help="one table of arms trained with --seeds: mean ± std, blind baselines, machine",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("arms", nargs="+", type=Path, help="output directories of `laco train --seeds` runs")
    parser.add_argument(
        "--out", type=Path, help="also write the table here (markdown), its data (.json) and plot (.png) beside it"
    )
    parser.set_defaults(handler=_run_table)


def _run_table(args: argparse.Namespace) -> int:
    from ..train.seeds import markdown_table, write_table

    print(markdown_table(args.arms)[0])
    if args.out:
        print("wrote", *write_table(args.arms, args.out))
    return 0
