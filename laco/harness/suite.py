"""``laco eval --model A --suite T1,T2 --baseline B``: lmms-eval tasks on a model and its baselines, one table.

Each (checkpoint, task) pair runs as its own lmms-eval evaluation through its Python API (``simple_evaluate``
with ``--model laco``, the plugin registered by our entry point) and is saved as soon as it finishes:

    OUTPUT/suite.json, OUTPUT/suite.md        the table so far (rewritten after every pair)
    OUTPUT/results/LABEL/TASK.json            one pair's scores and per-document answers
    OUTPUT/responses/LABEL/TASK.jsonl         the plugin's response log: answers as each batch finishes

Running the same command again keeps finished pairs (same checkpoint files, same limit) and resumes an
interrupted one from its response log, so a long suite survives a kill; an interrupted run leaves a partial table.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..packages import PackageFileNotFoundError
from ..precision import choose as choose_precision
from .family import check_servable
from .report import Score, SuiteReport, TaskRun
from .responses import checkpoint_fingerprint
from .tasks import EASYVQA_TASKS, default_tasks_dir, write_easyvqa_tasks


class SuiteError(ValueError):
    """A suite that cannot run as asked: an unknown task, a missing dataset or checkpoint."""


def checkpoint_labels(checkpoints: Sequence[Path]) -> list[str]:
    """Short unique names: ``runs/external/final`` -> ``external``."""
    labels: list[str] = []
    for path in checkpoints:
        path = Path(path).resolve()
        label = path.parent.name if path.name == "final" else path.name
        candidate, number = label, 2
        while candidate in labels:
            candidate, number = f"{label}-{number}", number + 1
        labels.append(candidate)
    return labels


def _check_checkpoint(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise SuiteError(f"{path} has no config.json: point --model / --baseline at a run's final/ directory.")
    check_servable(path, "laco eval --suite")  # before lmms-eval starts a process per model
    if "," in str(path) or "=" in str(path):
        raise SuiteError(f"{path}: lmms-eval's model_args cannot carry a path with ',' or '='; move or link it.")


def _task_manager(tasks: Sequence[str], include_paths: Sequence[Path]):
    from lmms_eval.tasks import TaskManager

    paths = [str(Path(p).resolve()) for p in include_paths]
    try:
        paths.append(str(write_easyvqa_tasks(default_tasks_dir())))
    except PackageFileNotFoundError:
        if any(task in EASYVQA_TASKS for task in tasks):
            raise  # its message says how to install the data
    manager = TaskManager("WARNING", include_path=paths or None, model_name="laco")
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        hints = []
        for task in unknown:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hints.append(f"{task!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise SuiteError(
            f"lmms-eval does not know the task(s) {', '.join(hints)}. `lmms-eval tasks list` lists its own; laco "
            f"adds {', '.join(EASYVQA_TASKS)}; pass --include-path DIR for a folder of your own task YAML files."
        )
    return manager


def _check_plugin() -> None:
    from lmms_eval.models import list_available_models

    if "laco" not in list_available_models():
        raise SuiteError(
            "lmms-eval does not know --model laco: the lmms_eval.models entry point in laco's package metadata is "
            "missing. Reinstall laco (pip install -e . from the checkout, or bash scripts/install.sh)."
        )


def _unwrap_retries(error: BaseException) -> BaseException:
    """The error behind lmms-eval's retry wrapper (tenacity's RetryError says only that attempts failed)."""
    while hasattr(error, "last_attempt") and error.last_attempt.exception() is not None:
        error = error.last_attempt.exception()
    return error


def _check_datasets(tasks: Sequence[str], manager) -> None:
    """Load every task once before any model, so a missing dataset fails fast and names its task."""
    from lmms_eval.tasks import get_task_dict

    for task in tasks:
        try:
            get_task_dict([task], manager)
        except Exception as error:
            cause = _unwrap_retries(error)
            raise SuiteError(
                f"task {task!r}: its dataset could not be loaded ({type(cause).__name__}: {cause}). Hub datasets "
                "(MME, GQA, TextVQA, MMBench, ...) need the hub or a local copy; see docs/evaluation.md."
            ) from error


def _primary_scores(results: dict[str, Any]) -> dict[str, Score]:
    """The first metric of every task and group in an lmms-eval result, with its stderr and document count."""
    rows: dict[str, Score] = {}
    for name, values in results["results"].items():
        metrics = list(results.get("higher_is_better", {}).get(name, {}))
        keys = [k for k in values if "," in k and "_stderr" not in k and isinstance(values[k], (int, float))]
        key = next((k for m in metrics for k in keys if k.split(",")[0] == m), keys[0] if keys else None)
        if key is None:
            continue
        metric, filter_name = key.split(",", 1)
        stderr = values.get(f"{metric}_stderr,{filter_name}")
        n = results.get("n-samples", {}).get(name, {}).get("effective")
        rows[name] = Score(metric, float(values[key]), float(stderr) if isinstance(stderr, (int, float)) else None, n)
    return rows


def _samples(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per-document answers, for auditing a score: the document, its target, what the model said, its metric."""
    keep = {"doc_id", "target", "filtered_resps", "input"}
    return {
        task: [
            {k: v for k, v in sample.items() if k in keep or k in results["higher_is_better"].get(task, {})}
            for sample in samples
        ]
        for task, samples in results.get("samples", {}).items()
    }


def _evaluate(checkpoint: Path, task: str, log: Path, manager, limit, batch_size, device, precision) -> dict[str, Any]:
    from lmms_eval import evaluator

    model_args = f"pretrained={checkpoint},response_log={log},precision={precision}"
    if device:
        model_args += f",device={device}"
    return evaluator.simple_evaluate(
        model="laco",
        model_args=model_args,
        tasks=[task],
        batch_size=batch_size,
        limit=limit,
        task_manager=manager,
        log_samples=True,
        verbosity="WARNING",
    )


def run_suite(
    model: str | Path,
    tasks: Sequence[str],
    output: str | Path,
    *,
    baselines: Sequence[str | Path] = (),
    limit: int | None = None,
    batch_size: int = 32,
    include_paths: Sequence[str | Path] = (),
    device: str | None = None,
    precision: str = "auto",
) -> SuiteReport:
    """Score ``model`` and each baseline on every task, all in one ``precision`` (:mod:`laco.precision`, resolved
    once for this machine); write the table to ``output``; return it."""
    precision = choose_precision(precision, device or ("cuda" if torch.cuda.is_available() else "cpu")).name
    checkpoints = [Path(p).resolve() for p in (model, *baselines)]
    for checkpoint in checkpoints:
        _check_checkpoint(checkpoint)
    if not tasks:
        raise SuiteError("--suite needs at least one task name, e.g. --suite easyvqa,easyvqa_colour_mc.")
    output = Path(output)
    _check_plugin()
    manager = _task_manager(tasks, [Path(p) for p in include_paths])
    _check_datasets(tasks, manager)
    labels = checkpoint_labels(checkpoints)
    report = SuiteReport(
        models=[{"label": label, "checkpoint": str(path)} for label, path in zip(labels, checkpoints)],
        tasks=list(tasks),
        limit=limit,
        lmms_eval_version=importlib.metadata.version("lmms_eval"),
        runs=[TaskRun(label, task) for label in labels for task in tasks],
    )
    pairs = [(label, path, task) for label, path in zip(labels, checkpoints) for task in tasks]
    try:
        for number, (label, checkpoint, task) in enumerate(pairs, start=1):
            print(f"[{number}/{len(pairs)}] {label} on {task}", flush=True)
            run = report.run(label, task)
            _run_pair(run, checkpoint, output, manager, limit, batch_size, device, precision)
            primary = next(iter(run.rows.values()), None)
            if primary is not None:
                print(
                    f"    {primary.metric} {100 * primary.value:.1f}% (n={primary.n}, {run.seconds:.0f} s)", flush=True
                )
            report.write(output)
    except (KeyboardInterrupt, SuiteError) as stop:
        report.write(output)
        done = sum(r.status == "done" for r in report.runs)
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "stopped"
        print(f"\n{what}: {done} of {len(pairs)} results kept in {output / 'suite.md'}; the same command resumes.")
        raise
    report.write(output)
    return report


def _run_pair(run: TaskRun, checkpoint: Path, output: Path, manager, limit, batch_size, device, precision) -> None:
    """Score one checkpoint on one task, or take the saved result of an identical earlier run."""
    saved_path = output / "results" / run.label / f"{run.task}.json"
    fingerprint = checkpoint_fingerprint(checkpoint, precision)
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        if saved.get("checkpoint") == fingerprint and saved.get("limit") == limit:
            kept = TaskRun.from_dict(saved["run"])
            run.status, run.rows, run.seconds = kept.status, kept.rows, kept.seconds
            print("    kept from an earlier run", flush=True)
            return
    log = output / "responses" / run.label / f"{run.task}.jsonl"
    started = time.perf_counter()
    try:
        results = _evaluate(checkpoint, run.task, log, manager, limit, batch_size, device, precision)
    except KeyboardInterrupt:
        raise
    except Exception as error:
        cause = _unwrap_retries(error)
        run.status, run.error = "failed", f"{type(cause).__name__}: {cause}"
        raise SuiteError(f"{run.label} on {run.task}: {run.error}") from error
    run.status, run.rows, run.seconds = "done", _primary_scores(results), round(time.perf_counter() - started, 1)
    saved_path.parent.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": fingerprint, "limit": limit, "run": run.__dict__, "samples": _samples(results)}
    saved_path.write_text(json.dumps(record, indent=1, default=_plain) + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    """JSON for what lmms-eval's samples hold besides JSON types (numpy numbers, Score rows)."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Score):
        return value.__dict__
    return str(value)
