"""``laco retrofit``: convert a trained MLLM at several placements, recover each, and report what each keeps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import compressor_option, step_list
from .evaluate import evaluate_model, print_answer_types
from .train import frontier_arms

# The embedded recovery stage: the default run's stage 1 (merge + projector), the merge at a fifth of the rate,
# since a reused block (init: ffn_reuse) is pretrained weights. configs/retrofit.yaml spells it out.
RECOVERY_STAGE = {
    "name": "recover",
    "trainable": ["compressor", "projector"],
    "batch_size": 16,
    "learning_rate": 1.0e-3,
    "part_learning_rates": {"compressor": 2.0e-4},
    "answer_balance": 0.3,
}
PLACEMENT_FILE = "retrofit-placement.json"


def add(subparsers) -> None:
    parser = subparsers.add_parser(
        "retrofit",
        help="how much of a trained model's accuracy a LaCo conversion keeps, before and after recovery",
        description="Convert SOURCE (a trained, uncompressed model: a run's final/) at each placement, fine-tune "
        "each conversion for each number of --steps with one recovery stage, score all of them and SOURCE on the "
        "same split, and write OUTPUT_DIR/retrofit.md, .json and .png (accuracy kept per answer type). Every "
        "conversion and run is resumable: rerun the command to continue.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="the trained model to convert (a laco train final/ directory)")
    parser.add_argument(
        "--layers", type=frontier_arms, default="6;last", help="placements, ';'-separated: layers such as 6, 1/2, last"
    )
    parser.add_argument("--steps", type=step_list, default="0,100,300", help="recovery steps to score")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/retrofit"))
    parser.add_argument("--method", default="laco-window", help="the merge laco convert adds")
    parser.add_argument("--factor", type=int, default=2, help="merge factor x factor tokens")
    parser.add_argument(
        "--option", type=compressor_option, action="append", default=None, metavar="KEY=VALUE",
        help="a compressor option (default with laco-window: init=ffn_reuse)",
    )  # fmt: skip
    parser.add_argument(
        "--config",
        type=Path,
        help="a run config whose single stage is the recovery (see configs/retrofit.yaml; its max_steps is "
        "replaced by each of --steps); default: the embedded one",
    )
    parser.set_defaults(handler=_run_retrofit)


def _run_retrofit(args: argparse.Namespace) -> int:
    from ..placement import Placement
    from ..train.retrofit import SOURCE_ARM, write_report

    options = dict(args.option) if args.option is not None else _default_options(args.method)
    base = _recovery_config(args.config)
    _score(args.output_dir, SOURCE_ARM, "none", 0, args.source, base)
    for arm, layers in args.layers.items():
        if layers == "none":
            raise SystemExit("laco retrofit: 'none' is the source itself; give placements such as '6;last'.")
        placement = Placement(layers, args.method, args.factor, options=options)
        converted = _converted(args.source, args.output_dir / arm, placement)
        for steps in args.steps:
            print(f"\n=== {arm}: {steps} recovery steps ===")
            model = (
                converted if steps == 0 else _recover(base, converted, args.output_dir / arm / f"steps{steps}", steps)
            )
            _score(args.output_dir, arm, layers, steps, model, base)
    print("\nwrote", *write_report(args.output_dir))
    print((args.output_dir / "retrofit.md").read_text())
    return 0


def _default_options(method: str) -> dict:
    return {"init": "ffn_reuse"} if method == "laco-window" else {}


def _recovery_config(path: Path | None):
    """The run config of a recovery (``model.init_from`` and ``max_steps`` filled in per run), checked up front."""
    import yaml

    from ..config import read_run_config

    if path is None:
        data = {"name": "laco-retrofit", "model": {"init_from": "converted"}, "stages": [dict(RECOVERY_STAGE)]}
    else:
        data = yaml.safe_load(path.read_text()) or {}
    config = read_run_config(data).validate()
    if len(config.stages) != 1:
        raise SystemExit(
            f"laco retrofit: {path} has {len(config.stages)} stages; a recovery config has exactly one (its "
            "max_steps is replaced by each of --steps)."
        )
    if config.data.dataset != "easy-vqa" and not config.data.eval_json:
        raise SystemExit("laco retrofit scores every model: train on easy-VQA, or give data.eval_json in --config.")
    return data


def _converted(source: Path, arm_dir: Path, placement) -> Path:
    """``arm_dir/converted``: ``source`` converted at ``placement`` (once; a rerun with another placement is refused)."""
    from ..convert import convert, describe

    target, record = arm_dir / "converted", arm_dir / PLACEMENT_FILE
    wanted = {"source": str(source.resolve()), **placement.to_dict()}
    if record.exists():
        found = json.loads(record.read_text())
        if found != wanted:
            raise SystemExit(
                f"laco retrofit: {arm_dir} was converted with {found}, not {wanted}; give another --output-dir or "
                f"delete {arm_dir}."
            )
        return target
    arm_dir.mkdir(parents=True, exist_ok=True)
    print(describe(convert(source, target, placement, overwrite=True)))
    record.write_text(json.dumps(wanted, indent=1) + "\n")  # last: a kill before it converts again
    return target


def _recover(base: dict, converted: Path, run_dir: Path, steps: int) -> Path:
    import copy

    from ..config import read_run_config
    from ..train import train

    data = copy.deepcopy(base)
    data["model"] = {**data.get("model", {}), "init_from": str(converted)}
    data["output_dir"] = str(run_dir)
    data["stages"][0]["max_steps"] = steps
    train(read_run_config(data).validate())
    return run_dir / "final"


def _score(output_dir: Path, arm: str, layers: str, steps: int, model: Path, base: dict) -> None:
    """Score ``model`` (once: its eval.json is kept next to it) and add it to ``retrofit.json``."""
    from ..config import read_run_config
    from ..data.easyvqa import ANSWER_TYPES
    from ..evaluate import EvalResult
    from ..train.retrofit import RetrofitRecord, record
    from ..train.seeds import describe_machine

    config = read_run_config({**base, "model": {"init_from": str(model)}}).validate()
    saved = output_dir / arm / f"steps{steps}-eval.json" if arm != "source" else output_dir / "source-eval.json"
    if saved.exists():
        result = EvalResult.from_json(saved)
    else:
        result = evaluate_model(model, config, config.eval.batch_size, config.eval.max_new_tokens)
        saved.parent.mkdir(parents=True, exist_ok=True)
        result.to_json(saved)
    print(f"  {arm} ({steps} steps): {result.summary()}")
    print_answer_types(result)
    groups = result.by_group(ANSWER_TYPES)
    tokens = json.loads((model / "laco_processor.json").read_text())["num_image_tokens"]
    entry = RetrofitRecord(
        arm=arm, layers=layers, steps=steps, model=str(model), accuracy=result.accuracy,
        groups={name: row["accuracy"] for name, row in groups.items()},
        group_priors={name: row["question_prior"] for name, row in groups.items()},
        question_prior_accuracy=result.question_prior_accuracy, image_tokens=int(tokens),
    )  # fmt: skip
    record(output_dir, entry, describe_machine())
