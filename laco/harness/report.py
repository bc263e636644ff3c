"""The suite's table: every task's scores for the model and its baselines, side by side, as JSON and markdown."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Score:
    """One metric of one task (or group) for one checkpoint, as lmms-eval reported it."""

    metric: str
    value: float
    stderr: float | None = None
    n: int | None = None


@dataclass
class TaskRun:
    """What one checkpoint got on one requested task: a row per task or group lmms-eval scored."""

    label: str
    task: str
    status: str = "pending"  # pending | done | failed
    rows: dict[str, Score] = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskRun":
        rows = {name: Score(**score) for name, score in data.get("rows", {}).items()}
        return cls(**{**data, "rows": rows})


@dataclass
class SuiteReport:
    models: list[dict[str, str]]  # {"label", "checkpoint"}, the model first, then its baselines
    tasks: list[str]
    limit: int | None
    lmms_eval_version: str
    runs: list[TaskRun] = field(default_factory=list)

    def run(self, label: str, task: str) -> TaskRun:
        return next(r for r in self.runs if r.label == label and r.task == task)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """``suite.json`` and ``suite.md`` in ``directory``, replaced atomically (a kill never leaves half a file)."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = directory / "suite.json", directory / "suite.md"
        for path, text in zip(paths, (json.dumps(self.to_dict(), indent=2) + "\n", self.markdown())):
            staging = path.with_name(f".{path.name}.tmp")
            staging.write_text(text, encoding="utf-8")
            os.replace(staging, path)
        return paths

    def markdown(self) -> str:
        labels = [model["label"] for model in self.models]
        header = ["task", "metric", "n", *_with_differences(labels)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for task in self.tasks:
            for row, metric in self._rows(task):
                scores = [self._score(label, task, row, metric) for label in labels]
                n = next((s.n for s in scores if s is not None and s.n is not None), None)
                cells = [_percent(scores[0])]
                for score in scores[1:]:
                    cells += [_percent(score), _difference(scores[0], score)]
                lines.append("| " + " | ".join([row, metric, "" if n is None else str(n), *cells]) + " |")
        pending = [f"{r.label}/{r.task}" for r in self.runs if r.status == "pending"]
        failed = [f"{r.label}/{r.task}: {r.error}" for r in self.runs if r.status == "failed"]
        notes = [
            "",
            "Scores in % (± standard error); Δ = first model minus that baseline, in points. "
            f"lmms-eval {self.lmms_eval_version}, "
            + ("all documents." if self.limit is None else f"first {self.limit} documents per task."),
        ]
        notes += [f"- **{model['label']}**: `{model['checkpoint']}`" for model in self.models]
        if pending:
            notes.append(f"\nNot run yet (partial table; run the same command again to finish): {', '.join(pending)}")
        if failed:
            notes.append("\nFailed:\n" + "\n".join(f"- {line}" for line in failed))
        return "\n".join(lines + notes) + "\n"

    def _rows(self, task: str) -> list[tuple[str, str]]:
        """(row, metric) pairs of ``task`` over every checkpoint that scored it, in first-seen order."""
        seen: dict[tuple[str, str], None] = {}
        for run in self.runs:
            if run.task == task:
                for row, score in run.rows.items():
                    seen[(row, score.metric)] = None
        return list(seen) or [(task, "")]

    def _score(self, label: str, task: str, row: str, metric: str) -> Score | None:
        score = self.run(label, task).rows.get(row)
        return score if score is not None and score.metric == metric else None


def _with_differences(labels: list[str]) -> list[str]:
    columns = [labels[0]]
    for label in labels[1:]:
        columns += [label, "Δ"]
    return columns


def _percent(score: Score | None) -> str:
    if score is None:
        return "…"
    if score.stderr is None:
        return f"{100 * score.value:.1f}"
    return f"{100 * score.value:.1f} ± {100 * score.stderr:.1f}"


def _difference(first: Score | None, other: Score | None) -> str:
    if first is None or other is None:
        return ""
    return f"{100 * (first.value - other.value):+.1f}"
