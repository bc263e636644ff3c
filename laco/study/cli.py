"""``laco study``: the command line of the quality study (:func:`laco.study.run_study`)."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..arguments import positive_int
from ..precision import PRECISIONS
from .grid import QUICK, load_study_config
from .report import refresh_costs, write_report
from .runner import Study, collect_cells, missing_cells, run_study


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laco study",
        description="Train every compressor at every depth, with and without the shortcut, inside the real DINOv2-S "
        "against an attention probe on real tasks; resumable (finished cells are kept).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML study config (configs/study/); default: the full study")
    parser.add_argument("--quick", action="store_true", help="the CI subset (configs/study/quick.yaml settings)")
    parser.add_argument("--output-dir", help="where cells, features, tables and plots go")
    parser.add_argument("--tasks", help="comma-separated: easyvqa-shape, mnist, easyvqa-color")
    parser.add_argument("--seeds", type=positive_int, help="number of seeds (0..N-1)")
    parser.add_argument("--steps", type=positive_int, help="training steps per cell")
    parser.add_argument("--threads", type=positive_int, help="torch threads in all (default: every usable core)")
    parser.add_argument(
        "--jobs", type=positive_int, help="worker processes sharing the cells, threads // jobs threads each (default 2)"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="cells' autocast: auto (bf16 where the CPU has it natively, else fp32)"
    )
    parser.add_argument("--list", action="store_true", help="print the variants and cell count, run nothing")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write tables, JSON and plots from the cells finished so far and list the missing ones; train nothing",
    )
    parser.add_argument(
        "--docs", type=Path, help="also refresh the generated tables and plots of this markdown file (docs/study.md)"
    )
    parser.add_argument(
        "--recount-costs",
        action="store_true",
        help="with --docs: count every variant's encoder FLOPs again and redraw that page's tables and plots from its "
        "recorded rows (docs/study-data/); trains nothing and needs no cells",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    if args.quick:
        overrides.update(QUICK)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.tasks is not None:
        overrides["tasks"] = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if args.seeds is not None:
        overrides["seeds"] = list(range(args.seeds))
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.jobs is not None:
        overrides["jobs"] = args.jobs
    if args.precision:
        overrides["precision"] = args.precision
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_study_config(args.config, _overrides(args))
    except ValueError as error:  # refused before any work: say why, without a traceback
        parser.error(str(error))
    if args.list:
        variants = config.variants()
        for variant in variants:
            print(variant.name)
        print(
            f"{len(variants)} variants x {len(config.tasks)} tasks x {len(config.seeds)} seeds "
            f"= {len(variants) * len(config.tasks) * len(config.seeds)} cells"
        )
        return 0
    if args.recount_costs:
        return _recount_costs(config, args.docs)
    if args.report_only:
        outputs = write_report(collect_cells(Path(config.output_dir)), Path(config.output_dir), args.docs)
        missing = missing_cells(config)
        if missing:
            print(f"{len(missing)} cells not finished yet (run the same command without --report-only to train them):")
            for task, variant, seed in missing:
                print(f"  {task} {variant} seed {seed}")
    else:
        outputs = run_study(config, docs=args.docs)
    print(f"\n{len(outputs['rows'])} rows; tables: {outputs['tables']}; plots: {', '.join(map(str, outputs['plots']))}")
    return 0


def _recount_costs(config, docs: Path | None) -> int:
    """Count every variant's encoder FLOPs again and redraw ``docs`` from its recorded rows."""
    if docs is None:
        raise SystemExit("--recount-costs rewrites a docs page: pass --docs docs/study.md")
    with tempfile.TemporaryDirectory() as scratch:  # counts only: no times, no cost cache in the study folder
        counting = dataclasses.replace(config, output_dir=scratch, time_encoder=False)
        costs = Study(counting, progress=True).encoder_costs(config.variants())
        rows = refresh_costs(docs, Path(config.output_dir).name, costs, Path(scratch))
    print(f"{len(rows)} rows of {docs} redrawn with recounted encoder FLOPs")
    return 0
