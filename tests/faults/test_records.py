"""Hostile records and images: what passes the up-front check feeds the model, and the rest is skipped and counted.

Every record here once passed the check (even with ``strict``) and then killed training at its first batch, on
every rerun, or aborted the whole scan, or was silently used wrong.
"""

from __future__ import annotations

import json
import struct
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from laco import Placement
from laco.cli import main
from laco.data import DataError, LlavaDataset, MultimodalCollator, SkipReason
from laco.data.images import load_rgb
from laco.mllm import build_mllm

from faults.runs import run_config


def _turns(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": speaker, "value": value} for speaker, value in turns]


def _record(record_id: str, *turns: tuple[str, str], image: str = "ok.png") -> dict[str, Any]:
    return {"id": record_id, "image": image, "conversations": _turns(*turns)}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_corrupt_pixels_png(path: Path, size: int = 16) -> None:
    """A PNG whose every chunk checksum is right but whose compressed pixel data is a tenth too short."""
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(b"\0" * (size * (1 + 3 * size) // 10))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")
    )


def write_huge_png(path: Path, side: int = 10_000) -> None:
    """A 10000 x 10000 greyscale PNG header (decoding it would cost ~1 GB and ~10 s; the check must not try)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )


QUESTION = ("human", "<image>\nwhat color is the shape?")

# id -> (record, why it must be skipped: a SkipReason, or None when it is usable)
HOSTILE: dict[str, tuple[dict[str, Any], str | None]] = {
    "tag-after-last-answer": (
        _record("tag-after-last-answer", ("human", "hi"), ("gpt", "red"), ("human", "<image>\nand now?")),
        SkipReason.IMAGE_TAGS,
    ),
    "answer-first": (_record("answer-first", ("gpt", "hello"), QUESTION, ("gpt", "red")), SkipReason.UNUSABLE),
    "lone-surrogate": (_record("lone-surrogate", ("human", "<image>\nwhat \ud800?"), ("gpt", "red")), "malformed"),
    "corrupt-pixels": (_record("corrupt-pixels", QUESTION, ("gpt", "red"), image="corrupt.png"), "unreadable image"),
    "huge": (_record("huge", QUESTION, ("gpt", "red"), image="huge.png"), SkipReason.IMAGE_TOO_LARGE),
    "parent-path": (_record("parent-path", QUESTION, ("gpt", "red"), image="../outside.png"), "image outside"),
    "absolute-path": (_record("absolute-path", QUESTION, ("gpt", "red"), image="/etc/hostname"), "image outside"),
    # symbolic links are followed before the containment check: a link to a file or a folder outside is outside
    "linked-file": (_record("linked-file", QUESTION, ("gpt", "red"), image="link-out.png"), "image outside"),
    "linked-folder": (_record("linked-folder", QUESTION, ("gpt", "red"), image="up/outside.png"), "image outside"),
    "link-inside": (_record("link-inside", QUESTION, ("gpt", "red"), image="link-in.png"), None),
    "multi-turn": (_record("multi-turn", QUESTION, ("gpt", "red"), ("human", "sure?"), ("gpt", "yes")), None),
    "sixteen-bit": (_record("sixteen-bit", QUESTION, ("gpt", "grey"), image="sixteen.png"), None),
    "good": (_record("good", QUESTION, ("gpt", "red")), None),
}


@pytest.fixture
def hostile_files(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "ok.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(tmp_path / "outside.png")
    (folder / "link-out.png").symlink_to(tmp_path / "outside.png")
    (folder / "up").symlink_to(tmp_path, target_is_directory=True)
    (folder / "link-in.png").symlink_to("ok.png")
    write_corrupt_pixels_png(folder / "corrupt.png")
    write_huge_png(folder / "huge.png")
    Image.fromarray(np.full((32, 32), 128 * 257, dtype=np.uint16)).save(folder / "sixteen.png")
    path = tmp_path / "hostile.json"
    # json.dumps writes the lone surrogate as the escape "\ud800", as a broken exporter would
    path.write_text(json.dumps([record for record, _ in HOSTILE.values()]))
    return path, folder


@pytest.fixture(scope="module")
def tiny_model(parts):
    vision, llm, _, _ = parts
    return build_mllm(str(vision), str(llm), Placement(2), image_size=32)


def test_each_hostile_record_is_skipped_for_its_reason_and_the_scan_goes_on(tiny_model, hostile_files) -> None:
    _, processor = tiny_model
    with pytest.warns(UserWarning, match="skipped"):
        dataset = LlavaDataset(*hostile_files, processor, progress=False)
    assert sorted(record.id for record in dataset.records) == ["good", "link-inside", "multi-turn", "sixteen-bit"]
    for record_id, (_, reason) in HOSTILE.items():
        if reason is not None:
            assert any(record_id in ids and skip.startswith(reason) for skip, ids in dataset.report.examples.items()), (
                record_id,
                dataset.report.examples,
            )


def test_everything_that_passes_the_check_feeds_the_model(tiny_model, hostile_files) -> None:
    model, processor = tiny_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = LlavaDataset(*hostile_files, processor, progress=False)
    batch = MultimodalCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("record_id", [key for key, (_, reason) in HOSTILE.items() if reason is not None])
def test_strict_names_each_hostile_record(record_id: str, tiny_model, hostile_files) -> None:
    _, processor = tiny_model
    json_path, folder = hostile_files
    json_path.write_text(json.dumps([HOSTILE["good"][0], HOSTILE[record_id][0]]))
    with pytest.raises(DataError, match=rf"record '{record_id}' \(index 1\).*Fix: "):
        LlavaDataset(json_path, folder, processor, strict=True, progress=False)


def test_answer_first_with_a_system_prompt_encodes_its_image(tiny_model, hostile_files) -> None:
    _, processor = tiny_model
    processor.system_prompt = ""
    try:
        record = _record("answer-first", ("gpt", "hello"), QUESTION, ("gpt", "red"))
        encoded = processor.encode_conversation(record["conversations"], max_length=64)
        assert encoded.input_ids.count(processor.image_token_id) == processor.num_image_tokens
    finally:
        processor.system_prompt = None


def test_paths_outside_the_folder_are_used_only_when_allowed(tiny_model, hostile_files) -> None:
    _, processor = tiny_model
    json_path, folder = hostile_files
    json_path.write_text(json.dumps([HOSTILE["good"][0], HOSTILE["parent-path"][0]]))
    dataset = LlavaDataset(json_path, folder, processor, allow_outside_image_folder=True, progress=False)
    assert [record.id for record in dataset.records] == ["good", "parent-path"]


def test_the_image_reader_refuses_corrupt_pixels_that_pil_verify_passes(hostile_files) -> None:
    _, folder = hostile_files
    with Image.open(folder / "corrupt.png") as image:
        image.verify()  # the old check: checksums only
    with pytest.raises(ValueError, match="PIL cannot read"):
        load_rgb(folder / "corrupt.png")


def test_a_huge_image_is_refused_before_decoding(hostile_files) -> None:
    _, folder = hostile_files
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"10000 x 10000 = 100,000,000 pixels.*data\.max_image_pixels"):
        load_rgb(folder / "huge.png")
    assert time.perf_counter() - started < 1.0


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 128 * 257, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").convert("RGB").getpixel((2, 0)) == (255, 255, 255)  # PIL clips
    assert np.asarray(load_rgb(tmp_path / "ramp.png"))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_eval_skips_what_training_skips_and_scores_the_rest(reference: Path, hostile_files, tmp_path: Path) -> None:
    json_path, folder = hostile_files
    output = tmp_path / "eval.json"
    arguments = ["--eval-json", str(json_path), "--image-folder", str(folder), "--output", str(output)]
    with pytest.warns(UserWarning):
        assert main(["eval", "--model", str(reference / "final"), "--limit", "0", *arguments]) == 0
    scored = json.loads(output.read_text())
    # a multi-turn record is scored on its last answer, asked after the turns before it
    assert sorted(p["id"] for p in scored["predictions"]) == ["good", "link-inside", "multi-turn", "sixteen-bit"]
    assert scored["multi_turn"] == 1
    multi = next(p for p in scored["predictions"] if p["id"] == "multi-turn")
    assert (multi["question"], multi["reference"]) == ("sure?", "yes")
    with pytest.raises(SystemExit, match="tag-after-last-answer"):
        main(["eval", "--model", str(reference / "final"), "--strict", *arguments])


def test_training_on_hostile_records_runs_past_its_first_batches(parts, hostile_files, tmp_path: Path) -> None:
    # these records used to pass the check (even with --strict) and kill training at the first batch, every rerun
    vision, llm, _, _ = parts
    json_path, folder = hostile_files
    config = run_config(parts, tmp_path / "run", data={"train_json": str(json_path), "image_folder": str(folder)})
    for stage in config["stages"]:
        stage.update(max_steps=2, batch_size=3)  # every usable record in every batch
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    with pytest.warns(UserWarning, match="9 skipped"):
        assert main(["train", "--config", str(tmp_path / "run.yaml"), "--no-eval"]) == 0
