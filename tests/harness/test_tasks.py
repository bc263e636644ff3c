"""The easy-VQA task folder for lmms-eval: local files, the same questions as `laco eval`, YAML lmms-eval reads."""

import json

import pytest

from laco.config import load_config
from laco.data import eval_examples
from laco.evaluate import load_model
from laco.harness import EASYVQA_TASKS, write_easyvqa_tasks
from laco.harness.easyvqa_task import UnreadableImageError, doc_to_visual, process_results


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_easyvqa_tasks(tmp_path_factory.mktemp("tasks"))


def _documents(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_folder_holds_both_tasks_with_absolute_local_paths(task_dir):
    folder = task_dir / "easyvqa"
    assert sorted(p.name for p in folder.glob("*.yaml")) == ["easyvqa.yaml", "easyvqa_colour_mc.yaml"]
    open_ended = _documents(folder / "easyvqa_test.jsonl")
    colour = _documents(folder / "easyvqa_colour_test.jsonl")
    assert len(open_ended) == 9673 and len(colour) == 1280  # easy-VQA 1.0's test split and its colour questions
    assert all(doc["answer"] in {"black", "blue", "brown", "gray", "green", "red", "teal", "yellow"} for doc in colour)
    assert open_ended[0]["image"].startswith("/") and doc_to_visual(open_ended[0])[0].size == (64, 64)


def test_questions_are_laco_evals_in_the_same_order(task_dir, easyvqa_checkpoint):
    _, processor = load_model(easyvqa_checkpoint)
    examples, _ = eval_examples(load_config(None).data, "test", processor, limit=50)
    documents = _documents(task_dir / "easyvqa" / "easyvqa_test.jsonl")[:50]
    assert [(d["id"], d["question"], d["answer"]) for d in documents] == [
        (e.id, e.question, e.answer) for e in examples
    ]
    assert [d["image"] for d in documents] == [str(e.image.resolve()) for e in examples]


def test_lmms_eval_reads_the_yaml(task_dir):
    from lmms_eval.utils import load_yaml_config

    for name in EASYVQA_TASKS:
        config = load_yaml_config(str(task_dir / "easyvqa" / f"{name}.yaml"))
        assert config["task"] == name and config["dataset_path"] == "json"
        assert config["dataset_kwargs"]["data_files"]["test"].startswith(str(task_dir.resolve()))
        assert config["doc_to_visual"] is doc_to_visual  # imported by dotted name, no utils.py copy
    config = load_yaml_config(str(task_dir / "easyvqa" / "easyvqa.yaml"))
    assert config["generation_kwargs"] == {"until": [], "max_new_tokens": 8, "temperature": 0.0, "do_sample": False}


def test_scoring_is_laco_evals_normalised_exact_match():
    assert process_results({"answer": "Blue"}, ["blue."]) == {"exact_match": 1.0}
    assert process_results({"answer": "blue"}, ["a blue one"]) == {"exact_match": 0.0}


def test_an_unreadable_image_is_named(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UnreadableImageError, match=r"question test-7: image .*broken.png cannot be read"):
        doc_to_visual({"id": "test-7", "image": str(broken)})
    with pytest.raises(UnreadableImageError, match=r"gone.png does not exist.*--write-tasks"):
        doc_to_visual({"id": "test-8", "image": str(tmp_path / "gone.png")})


def test_rewriting_leaves_unchanged_files_alone(task_dir):
    yaml_file = task_dir / "easyvqa" / "easyvqa.yaml"
    before = yaml_file.stat().st_mtime_ns
    write_easyvqa_tasks(task_dir)
    assert yaml_file.stat().st_mtime_ns == before
