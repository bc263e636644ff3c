"""Write laco's offline lmms-eval tasks: easy-VQA's test split, open-ended and as colour multiple choice.

lmms-eval reads a task from a YAML file that names its dataset; ours is a local JSON-lines file made from the
easy-VQA split laco converts into its cache (``~/.cache/laco/datasets/easy-vqa``). Those files live in each
user's cache, so the YAML files are written at run time with absolute paths rather than shipped:

* ``easyvqa``: every test question, answered by generation (``generate_until``, greedy, 8 new tokens, as
  ``laco eval``), scored by exact match after :func:`laco.evaluate.normalize_answer`.
* ``easyvqa_colour_mc``: the colour questions ("what color is the shape?"), scored by ``loglikelihood``: the
  model's log-probability of each of the 8 colour names as the answer; the most likely one is its choice
  (metric ``acc``). The choices are the answer words themselves, not letters: a model fine-tuned on easy-VQA
  answers never saw lettered options, so "A-H" would test instruction following rather than the image.

Documents keep the converted split's order, so ``--limit N`` picks the same first N questions as
``laco eval --limit N``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..data.easyvqa import ANSWER_TYPES, convert_easy_vqa
from ..data.sources import easy_vqa_dir
from ..pretrained import default_cache_dir

EASYVQA_TASKS = ("easyvqa", "easyvqa_colour_mc")
SPLIT = "test"
_FOLDER = "easyvqa"
_FUNCTIONS = "laco.harness.easyvqa_task"
_HEADER = "# Written by laco (laco.harness.tasks) for lmms-eval; regenerate with `laco eval --write-tasks DIR`.\n"


def default_tasks_dir() -> Path:
    """Where ``laco eval --suite`` writes the easy-VQA tasks: next to laco's other cached data."""
    return default_cache_dir() / "lmms-eval-tasks"


def _documents() -> list[dict[str, str]]:
    """One ``{id, question, answer, image}`` per test question, the image as an absolute path."""
    json_path = convert_easy_vqa(easy_vqa_dir(), splits=(SPLIT,))[SPLIT]
    image_folder = easy_vqa_dir().resolve()
    documents = []
    for record in json.loads(json_path.read_text(encoding="utf-8")):
        turns = record["conversations"]
        question = next(t["value"] for t in turns if t["from"] == "human")
        answer = next(t["value"] for t in turns if t["from"] == "gpt")
        documents.append(
            {
                "id": record["id"],
                # as LlavaDataset.example gives it to `laco eval`: the <image> tag removed
                "question": question.replace("<image>", "").strip(),
                "answer": answer,
                "image": str(image_folder / record["image"]),
            }
        )
    return documents


def _write_if_changed(path: Path, text: str) -> None:
    """Replace ``path`` atomically, and only when its content changes (a concurrent reader never sees half a file)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # opened normally, so the umask applies
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def _jsonl(documents: list[dict[str, str]]) -> str:
    return "".join(json.dumps(document, ensure_ascii=False) + "\n" for document in documents)


def _dataset_block(data_file: Path) -> str:
    # json.dumps gives a double-quoted string, which YAML reads back unchanged (spaces, colons and all)
    return (
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    {SPLIT}: {json.dumps(str(data_file))}\n"
        f"test_split: {SPLIT}\n"
        f"doc_to_visual: !function {_FUNCTIONS}.doc_to_visual\n"
        "doc_to_text: question\n"
        "doc_to_target: answer\n"
    )


def _open_ended_yaml(data_file: Path) -> str:
    return (
        _HEADER
        + "task: easyvqa\n"
        + _dataset_block(data_file)
        + "output_type: generate_until\n"
        + "generation_kwargs:\n"
        + "  until: []\n"
        + "  max_new_tokens: 8\n"
        + "  temperature: 0.0\n"
        + "  do_sample: false\n"
        + f"process_results: !function {_FUNCTIONS}.process_results\n"
        + "metric_list:\n"
        + "  - metric: exact_match\n"
        + "    aggregation: mean\n"
        + "    higher_is_better: true\n"
        + "metadata:\n"
        + "  version: 1.0\n"
    )


def _multiple_choice_yaml(data_file: Path, colours: tuple[str, ...]) -> str:
    return (
        _HEADER
        + "task: easyvqa_colour_mc\n"
        + _dataset_block(data_file)
        + "output_type: multiple_choice\n"
        + f"doc_to_choice: {json.dumps(list(colours))}\n"
        # the answer follows the chat template's assistant turn directly, as in training: no leading space
        + 'target_delimiter: ""\n'
        + "metric_list:\n"
        + "  - metric: acc\n"
        + "    aggregation: mean\n"
        + "    higher_is_better: true\n"
        + "metadata:\n"
        + "  version: 1.0\n"
    )


def write_easyvqa_tasks(directory: str | Path | None = None) -> Path:
    """Write the easy-VQA task folder (YAML + JSON-lines data) under ``directory``; return ``directory``.

    Pass the returned folder to lmms-eval as ``--include_path``. Converts easy-VQA into laco's cache first if
    needed (the ``easy-vqa`` package must be installed). Cheap to call again: unchanged files are not rewritten.
    """
    directory = Path(directory) if directory is not None else default_tasks_dir()
    folder = directory / _FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    documents = _documents()
    colours = ANSWER_TYPES["colour"]
    colour_documents = [document for document in documents if document["answer"] in colours]
    open_file = (folder / f"easyvqa_{SPLIT}.jsonl").resolve()
    colour_file = (folder / f"easyvqa_colour_{SPLIT}.jsonl").resolve()
    _write_if_changed(open_file, _jsonl(documents))
    _write_if_changed(colour_file, _jsonl(colour_documents))
    _write_if_changed(folder / "easyvqa.yaml", _open_ended_yaml(open_file))
    _write_if_changed(folder / "easyvqa_colour_mc.yaml", _multiple_choice_yaml(colour_file, colours))
    return directory
