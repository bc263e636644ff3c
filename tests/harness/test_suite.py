"""`laco eval --suite`: one table for a model and its baselines, kept when interrupted, clear errors."""

import json
import shutil

import pytest

from laco.cli import main
from laco.harness import suite
from laco.harness.suite import SuiteError, checkpoint_labels, run_suite

TASKS = ["easyvqa", "easyvqa_colour_mc"]


@pytest.fixture(scope="module")
def baseline(easyvqa_checkpoint, tmp_path_factory):
    """A second checkpoint under another run name (a copy: the table only needs two labels)."""
    copy = tmp_path_factory.mktemp("baseline") / "external" / "final"
    shutil.copytree(easyvqa_checkpoint, copy)
    return copy


def test_labels_come_from_run_folders(tmp_path):
    assert checkpoint_labels([tmp_path / "default" / "final", tmp_path / "x" / "final", tmp_path / "other"]) == [
        "default", "x", "other",
    ]  # fmt: skip
    assert checkpoint_labels([tmp_path / "a" / "final", tmp_path / "b" / "a" / "final"]) == ["a", "a-2"]


def test_the_suite_writes_one_table_and_keeps_finished_results(easyvqa_checkpoint, baseline, lmms_env, tmp_path,
                                                               capsys, monkeypatch):  # fmt: skip
    output = tmp_path / "suite"
    report = run_suite(easyvqa_checkpoint, TASKS, output, baselines=[baseline], limit=8, batch_size=8)
    data = json.loads((output / "suite.json").read_text())
    assert [m["label"] for m in data["models"]] == ["run", "external"]
    assert all(run["status"] == "done" for run in data["runs"])
    first = report.run("run", "easyvqa").rows["easyvqa"]
    assert first.metric == "exact_match" and first.n == 8
    assert report.run("external", "easyvqa_colour_mc").rows["easyvqa_colour_mc"].metric == "acc"
    table = (output / "suite.md").read_text()
    assert "| task | metric | n | run | external | Δ |" in table and "| easyvqa_colour_mc | acc | 8 |" in table
    # a copy of the same weights scores the same, answer for answer
    assert f"| {100 * first.value:.1f} ± " in table and "+0.0 |" in table
    saved = json.loads((output / "results" / "run" / "easyvqa.json").read_text())
    assert len(saved["samples"]["easyvqa"]) == 8
    assert (output / "responses" / "run" / "easyvqa.jsonl").is_file()

    def no_evaluation(*_args, **_kwargs):
        raise AssertionError("a finished pair ran again")

    monkeypatch.setattr(suite, "_evaluate", no_evaluation)
    capsys.readouterr()
    again = run_suite(easyvqa_checkpoint, TASKS, output, baselines=[baseline], limit=8, batch_size=8)
    assert capsys.readouterr().out.count("kept from an earlier run") == 4
    assert again.markdown() == report.markdown()


def test_an_interrupted_suite_leaves_a_partial_table(easyvqa_checkpoint, lmms_env, tmp_path, monkeypatch):
    evaluate = suite._evaluate
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(suite, "_evaluate", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_suite(easyvqa_checkpoint, TASKS, tmp_path, limit=4, batch_size=4)
    data = json.loads((tmp_path / "suite.json").read_text())
    assert [run["status"] for run in data["runs"]] == ["done", "pending"]
    assert (
        "Not run yet (partial table; run the same command again to finish): run/easyvqa_colour_mc"
        in (tmp_path / "suite.md").read_text()
    )


def test_an_unknown_task_is_named_with_suggestions(easyvqa_checkpoint, lmms_env, tmp_path):
    with pytest.raises(SuiteError, match=r"does not know the task\(s\) 'easyvq' \(did you mean easyvqa"):
        run_suite(easyvqa_checkpoint, ["easyvq"], tmp_path)
    with pytest.raises(SystemExit, match="laco eval --suite: lmms-eval does not know the task"):
        main(["eval", "--model", str(easyvqa_checkpoint), "--suite", "no_such_task", "--output", str(tmp_path)])


def test_a_missing_dataset_is_named_before_any_model_runs(easyvqa_checkpoint, lmms_env, tmp_path):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    missing = tmp_path / "gone" / "questions.jsonl"
    (tasks / "mine.yaml").write_text(
        "task: my_local_vqa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(missing))}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: question\ndoc_to_target: answer\n"
    )
    with pytest.raises(SuiteError, match=r"task 'my_local_vqa': its dataset could not be loaded .*gone"):
        run_suite(easyvqa_checkpoint, ["my_local_vqa"], tmp_path / "out", include_paths=[tasks])


def test_a_checkpoint_that_is_not_one_is_refused(tmp_path):
    with pytest.raises(SuiteError, match="no config.json"):
        run_suite(tmp_path, TASKS, tmp_path / "out")


def test_write_tasks_for_the_lmms_eval_command_line(tmp_path, capsys):
    assert main(["eval", "--write-tasks", str(tmp_path)]) == 0
    assert (tmp_path / "easyvqa" / "easyvqa.yaml").is_file()
    assert str(tmp_path) in capsys.readouterr().out
