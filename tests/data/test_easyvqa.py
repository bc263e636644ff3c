"""The easy-VQA converter: valid LLaVA records, copied images, idempotent and atomic output, documented statistics."""

from __future__ import annotations

import importlib.metadata
import json
from collections import Counter
from pathlib import Path

import pytest

from laco.data import LlavaDataset, convert_easy_vqa, easy_vqa_answers, easy_vqa_data_dir, easyvqa
from laco.mllm.processing import LacoProcessor
from laco.packages import PackageFileNotFoundError


def _installed() -> bool:
    try:
        importlib.metadata.distribution("easy-vqa")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_easy_vqa = pytest.mark.skipif(not _installed(), reason="pip install --no-deps easy-vqa==1.0")

LIMIT = 20


def _leftovers(out_dir: Path) -> list[str]:
    """Hidden staging folders that a finished conversion must not leave behind."""
    return sorted(path.name for path in out_dir.iterdir() if path.name.startswith("."))


@needs_easy_vqa
def test_answers_are_the_thirteen_words() -> None:
    answers = easy_vqa_answers()
    assert len(answers) == len(set(answers)) == 13
    assert {"yes", "no", "circle", "rectangle", "triangle", "teal"} <= set(answers)


@needs_easy_vqa
def test_converted_records_are_valid_llava(tmp_path: Path, processor: LacoProcessor) -> None:
    paths = convert_easy_vqa(tmp_path, limit_per_split=LIMIT)
    assert paths == {"train": tmp_path / "train.json", "test": tmp_path / "test.json"}
    answers = set(easy_vqa_answers())
    source = easy_vqa_data_dir()
    for split, path in paths.items():
        records = json.loads(path.read_text())
        assert len(records) == LIMIT
        assert [record["id"] for record in records] == [f"{split}-{index:06d}" for index in range(LIMIT)]
        originals = json.loads((source / split / "questions.json").read_text())[:LIMIT]
        for record, (question, answer, image_id) in zip(records, originals):
            assert record["image"] == f"{split}/images/{image_id}.png"
            image = tmp_path / record["image"]
            assert image.read_bytes() == (source / split / "images" / f"{image_id}.png").read_bytes()
            human, gpt = record["conversations"]
            assert human == {"from": "human", "value": f"<image>\n{question}"}
            assert gpt == {"from": "gpt", "value": answer} and answer in answers
        # Only the images the kept questions need are copied.
        copied = {path.name for path in (tmp_path / split / "images").iterdir()}
        assert copied == {Path(record["image"]).name for record in records}

        dataset = LlavaDataset(path, tmp_path, processor, strict=True, progress=False)
        assert dataset.report.used == LIMIT and dataset.report.skipped == {}
        example = dataset.example(0)
        assert (example.question, example.answer) == (originals[0][0], originals[0][1])
    assert _leftovers(tmp_path) == []


@needs_easy_vqa
def test_conversion_is_idempotent_and_follows_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int | None]] = []
    convert_split = easyvqa._convert_split

    def counting(data_dir: Path, out_dir: Path, split: str, limit: int | None) -> None:
        calls.append((split, limit))
        convert_split(data_dir, out_dir, split, limit)

    monkeypatch.setattr(easyvqa, "_convert_split", counting)
    first = convert_easy_vqa(tmp_path, splits=("test",), limit_per_split=5)
    content = first["test"].read_bytes()
    assert convert_easy_vqa(tmp_path, splits=("test",), limit_per_split=5) == first
    assert calls == [("test", 5)] and first["test"].read_bytes() == content

    convert_easy_vqa(tmp_path, splits="test", limit_per_split=5, overwrite=True)
    convert_easy_vqa(tmp_path, splits="test", limit_per_split=7)  # another subset is another conversion
    assert calls == [("test", 5), ("test", 5), ("test", 7)]
    assert len(json.loads(first["test"].read_text())) == 7

    # A split whose JSON file (written last) is missing was interrupted: it is converted again, cleanly.
    first["test"].unlink()
    (tmp_path / "test" / "images" / "stale.png").write_bytes(b"left over")
    convert_easy_vqa(tmp_path, splits="test", limit_per_split=7)
    assert calls[-1] == ("test", 7) and not (tmp_path / "test" / "images" / "stale.png").exists()
    assert not (tmp_path / "train.json").exists() and _leftovers(tmp_path) == []


@needs_easy_vqa
def test_a_failed_conversion_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_copy(source: Path, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(easyvqa.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        convert_easy_vqa(tmp_path, splits="test", limit_per_split=3)
    assert list(tmp_path.iterdir()) == []


@needs_easy_vqa
def test_documented_statistics_match_the_data() -> None:
    """The split sizes and majority baseline quoted in the module docstring."""
    data_dir = easy_vqa_data_dir()
    sizes, images, majority = {}, {}, {}
    for split in ("train", "test"):
        rows = easyvqa._questions(data_dir, split)
        sizes[split], images[split] = len(rows), len({image_id for _, _, image_id in rows})
        majority[split] = Counter(answer for _, answer, _ in rows).most_common(1)[0]
    assert sizes == {"train": 38575, "test": 9673} and images == {"train": 4000, "test": 1000}
    assert majority == {"train": ("yes", 14229), "test": ("yes", 3611)}
    assert f"{3611 / 9673:.1%}" == "37.3%" and "**37.3%**" in (easyvqa.__doc__ or "")

    # The question-only baseline: each test question answered with its most common train answer.
    prior: dict[str, Counter[str]] = {}
    for question, answer, _ in easyvqa._questions(data_dir, "train"):
        prior.setdefault(question, Counter())[answer] += 1
    test = easyvqa._questions(data_dir, "test")
    hits = sum(prior[question].most_common(1)[0][0] == answer for question, answer, _ in test)
    assert len(prior) == 107 and f"{hits / len(test):.1%}" == "67.0%" and "67.0%" in (easyvqa.__doc__ or "")


def test_missing_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def files(distribution: str):
        raise importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(importlib.metadata, "files", files)
    with pytest.raises(PackageFileNotFoundError, match=r"pip install --no-deps easy-vqa==1\.0"):
        convert_easy_vqa(tmp_path / "out")
    with pytest.raises(PackageFileNotFoundError, match=r"pip install --no-deps easy-vqa==1\.0"):
        easy_vqa_answers()
    assert issubclass(PackageFileNotFoundError, ImportError)


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['val'\].*\['train', 'test'\]"):
        convert_easy_vqa(tmp_path, splits=("train", "val"))
    with pytest.raises(ValueError, match="limit_per_split=0"):
        convert_easy_vqa(tmp_path, limit_per_split=0)
    assert list(tmp_path.iterdir()) == []
