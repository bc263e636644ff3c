"""LlavaDataset (validation, skip report, tokenization, truncation) and MultimodalCollator, on tiny real files."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from laco.data import DataError, LlavaDataset, LlavaExample, MultimodalCollator, SkipReason
from laco.mllm.processing import IGNORE_INDEX, LacoProcessor

from data.llava_files import IMAGE_SIZE, NUM_IMAGE_TOKENS, qa_record

Writer = Callable[[list[Any]], tuple[Path, Path]]

# Fits comfortably: ~33 tokens with the chat template, so max_length=40 truncates only what the tests make long.
MAX_LENGTH = 40
LONG_TEXT = " ".join(["blue green"] * 40)


def _dataset(writer: Writer, records: list[Any], processor: LacoProcessor, **kwargs: Any) -> LlavaDataset:
    json_path, folder = writer(records)
    return LlavaDataset(json_path, folder, processor, progress=False, **kwargs)


def _answer_text(processor: LacoProcessor, item: dict[str, Any]) -> str:
    labels = item["labels"]
    return processor.tokenizer.decode(labels[labels != IGNORE_INDEX])


# ---------------------------------------------------------------------------------------------------------------
# Items and labels


@pytest.mark.parametrize("chat_template", [True, False], ids=["chat-template", "fallback-format"])
def test_labels_cover_exactly_the_answer(
    make_processor: Callable[..., LacoProcessor], write_llava: Writer, chat_template: bool
) -> None:
    processor = make_processor(chat_template)
    dataset = _dataset(write_llava, [qa_record("a", "what color is the shape?", "red")], processor)
    item = dataset[0]

    assert item["id"] == "a"
    assert item["input_ids"].dtype == torch.long and item["labels"].dtype == torch.long
    assert item["input_ids"].shape == item["labels"].shape
    end = "<|im_end|>" if chat_template else "</s>"
    assert _answer_text(processor, item) == f"red{end}\n"
    # The answer is one run at the end: no question or image token is learned.
    answer_positions = (item["labels"] != IGNORE_INDEX).nonzero().flatten().tolist()
    assert answer_positions == list(range(answer_positions[0], len(item["labels"])))
    assert torch.equal(item["labels"][answer_positions], item["input_ids"][answer_positions])
    assert (item["input_ids"] == processor.image_token_id).sum() == NUM_IMAGE_TOKENS
    assert "what color is the shape?" in processor.tokenizer.decode(item["input_ids"])
    # Stored ids are exactly what the processor produces (tokenized once, at construction).
    expected = processor.encode_conversation(
        [{"from": "human", "value": "<image>\nwhat color is the shape?"}, {"from": "gpt", "value": "red"}], 512
    )
    assert item["input_ids"].tolist() == expected.input_ids and item["labels"].tolist() == expected.labels

    assert item["pixel_values"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert item["pixel_values"].dtype == torch.float32
    assert dataset.lengths == [len(item["input_ids"])]


def test_multi_turn_labels_both_answers(processor: LacoProcessor, write_llava: Writer) -> None:
    record = {
        "id": "multi",
        "image": "img.png",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat color is the shape?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "is there a circle?"},
            {"from": "gpt", "value": "no"},
        ],
    }
    dataset = _dataset(write_llava, [record], processor)
    assert _answer_text(processor, dataset[0]) == "red<|im_end|>\nno<|im_end|>\n"
    assert dataset.records[0].questions == ("<image>\nwhat color is the shape?", "is there a circle?")
    assert dataset.records[0].answers == ("red", "no")
    # evaluated on the last answer, asked after the first exchange as the record gives it
    example = dataset.example(0)
    assert (example.question, example.answer, example.images) == ("is there a circle?", "no", (example.image,))
    assert [turn["value"] for turn in example.turns] == [
        "<image>\nwhat color is the shape?",
        "red",
        "is there a circle?",
    ]


def test_example_gives_question_without_tag_and_reference(processor: LacoProcessor, write_llava: Writer) -> None:
    tag_last = qa_record(7, "", "yes", image="blue.png")
    tag_last["conversations"][0]["value"] = "is there a circle?\n<image>"
    dataset = _dataset(write_llava, [qa_record("a", "what color is the shape?", "red"), tag_last], processor)

    example = dataset.example(0)
    assert example == LlavaExample("a", dataset.image_folder / "img.png", "what color is the shape?", "red")
    example = dataset.example(1)  # single-turn, one image: asked as the question about the image, as before
    assert (example.id, example.image.name, example.question, example.answer) == (
        "7",
        "blue.png",
        "is there a circle?",
        "yes",
    )
    assert example.images == () and example.turns == ()


def test_images_load_lazily_as_rgb(processor: LacoProcessor, write_llava: Writer) -> None:
    json_path, folder = write_llava([qa_record("gray", "what color is the shape?", "gray", image="gray.png")])
    Image.new("L", (10, 10), 128).save(folder / "gray.png")  # a greyscale file still gives 3 channels
    dataset = LlavaDataset(json_path, folder, processor, progress=False)
    pixels = dataset[0]["pixel_values"]
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    expected = processor.image_transform([Image.new("RGB", (10, 10), (128, 128, 128))])[0]
    torch.testing.assert_close(pixels, expected)


# ---------------------------------------------------------------------------------------------------------------
# Truncation


def test_truncation_cuts_the_answer_not_the_image(processor: LacoProcessor, write_llava: Writer) -> None:
    records = [qa_record("short", "what color is the shape?", "red"), qa_record("long", "describe it", LONG_TEXT)]
    dataset = _dataset(write_llava, records, processor, max_length=MAX_LENGTH)

    assert dataset.report.truncated == 1 and dataset.report.used == 2
    assert [record.truncated for record in dataset.records] == [False, True]
    item = dataset[1]
    assert len(item["input_ids"]) == MAX_LENGTH
    assert (item["input_ids"] == processor.image_token_id).sum() == NUM_IMAGE_TOKENS
    assert (item["labels"] != IGNORE_INDEX).sum() > 0
    assert "truncated" in dataset.report.summary()


def test_text_before_the_image_past_max_length_is_too_long(processor: LacoProcessor, write_llava: Writer) -> None:
    long_prefix = qa_record("prefix", "", "red")
    long_prefix["conversations"][0]["value"] = f"{LONG_TEXT}\n<image>"
    records = [qa_record("ok", "what color is the shape?", "red"), long_prefix]
    with pytest.warns(UserWarning, match="too long"):
        dataset = _dataset(write_llava, records, processor, max_length=MAX_LENGTH)
    assert dataset.report.skipped == {SkipReason.TOO_LONG: 1}
    # Without a limit the same record is fine.
    assert len(_dataset(write_llava, records, processor, max_length=None)) == 2


# ---------------------------------------------------------------------------------------------------------------
# Bad records


def _bad_records(folder: Path) -> dict[str, list[Any]]:
    """Records of every skip reason, by reason; each record's id says what is wrong with it."""
    (folder / "garbage.png").write_bytes(b"this is not a png")
    good_png = (folder / "img.png").read_bytes()
    (folder / "half.png").write_bytes(good_png[: len(good_png) // 2])

    def with_turns(record_id: str, *turns: tuple[str, Any]) -> dict[str, Any]:
        return {"id": record_id, "image": "img.png", "conversations": [{"from": f, "value": v} for f, v in turns]}

    def two_images(record_id: str, question: str, images: list[str] | None = None) -> dict[str, Any]:
        return {**with_turns(record_id, ("human", question), ("gpt", "no")), "image": images or ["img.png", "blue.png"]}

    long_prefix = qa_record("too-long-prefix", "", "red")
    long_prefix["conversations"][0]["value"] = f"{LONG_TEXT}\n<image>"
    return {
        SkipReason.MALFORMED: [
            ["not", "a", "record"],
            {"id": "no-conversations", "image": "img.png"},
            with_turns("value-not-text", ("human", "<image>\nhi"), ("gpt", 3)),
            with_turns("unknown-speaker", ("human", "<image>\nhi"), ("robot", "red")),
            qa_record("image-list", "what color is the shape?", "red", image=[]),  # type: ignore[arg-type]
        ],
        SkipReason.NO_IMAGE: [
            {"id": "text-only", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
        ],
        SkipReason.MISSING_IMAGE: [
            qa_record("missing-file", "what color is the shape?", "red", image="nope.png"),
            two_images("second-missing", "<image> and <image>: same colour?", images=["img.png", "nope.png"]),
        ],
        SkipReason.UNREADABLE_IMAGE: [
            qa_record("garbage-file", "what color is the shape?", "red", image="garbage.png"),
            qa_record("truncated-file", "what color is the shape?", "red", image="half.png"),
        ],
        SkipReason.IMAGE_TAGS: [
            with_turns("no-tag", ("human", "what color is the shape?"), ("gpt", "red")),
            with_turns("two-tags", ("human", "<image>\n<image>\nwhat color?"), ("gpt", "red")),
            with_turns("tag-in-answer", ("human", "<image>\nwhat color?"), ("gpt", "<image> red")),
            two_images("one-tag-two-images", "<image>\nsame colour?"),
        ],
        SkipReason.NO_ANSWER: [
            with_turns("no-gpt-turn", ("human", "<image>\nwhat color is the shape?")),
            with_turns("empty-answer", ("human", "<image>\nwhat color is the shape?"), ("gpt", "  ")),
        ],
        SkipReason.TOO_LONG: [
            long_prefix,
            with_turns("too-long-question", ("human", f"<image>\n{LONG_TEXT}"), ("gpt", "red")),
        ],
    }


def test_every_bad_record_is_counted_reported_and_warned_once(processor: LacoProcessor, write_llava: Writer) -> None:
    _, folder = write_llava([])
    bad = _bad_records(folder)
    good = [qa_record(f"good-{i}", "what color is the shape?", "red") for i in range(3)]
    records = [good[0], *[record for group in bad.values() for record in group], *good[1:]]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = _dataset(write_llava, records, processor, max_length=MAX_LENGTH)

    report = dataset.report
    assert [record.id for record in dataset.records] == ["good-0", "good-1", "good-2"]
    assert (report.total, report.examined, report.used, report.truncated) == (len(records), len(records), 3, 0)
    assert report.skipped == {reason: len(group) for reason, group in bad.items()}
    assert report.examples[SkipReason.MALFORMED] == [
        "#1",
        "no-conversations",
        "value-not-text",
        "unknown-speaker",
        "image-list",
    ]
    for reason, group in bad.items():
        if reason != SkipReason.MALFORMED:
            assert report.examples[reason] == [record["id"] for record in group]

    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert message.startswith(f"data.json: 3 of {len(records)} records used, {len(records) - 3} skipped")
    for reason in bad:
        assert reason in message
    assert "garbage-file" in message and message == f"data.json: {report.summary()}"


@pytest.mark.parametrize(
    ("reason", "position"),
    [
        (reason, position)
        for reason, count in [
            (SkipReason.MALFORMED, 5),
            (SkipReason.NO_IMAGE, 1),
            (SkipReason.MISSING_IMAGE, 2),
            (SkipReason.UNREADABLE_IMAGE, 2),
            (SkipReason.IMAGE_TAGS, 4),
            (SkipReason.NO_ANSWER, 2),
            (SkipReason.TOO_LONG, 2),
        ]
        for position in range(count)
    ],
)
def test_strict_raises_at_the_bad_record_naming_it(
    processor: LacoProcessor, write_llava: Writer, reason: str, position: int
) -> None:
    _, folder = write_llava([])
    bad = _bad_records(folder)[reason][position]
    records = [qa_record("fine", "what color is the shape?", "red"), bad, qa_record("never-read", "?", "red")]
    record_id = bad["id"] if isinstance(bad, dict) else "#1"
    with pytest.raises(DataError, match=rf"record '{record_id}' \(index 1\).*{reason}.*Fix: ") as raised:
        _dataset(write_llava, records, processor, max_length=MAX_LENGTH, strict=True)
    assert "strict=False" in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_clean_data_warns_nothing(processor: LacoProcessor, write_llava: Writer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = _dataset(write_llava, [qa_record("a", "what color is the shape?", "red")], processor, strict=True)
    assert dataset.report.skipped == {} and dataset.report.summary() == "1 of 1 records used, 0 skipped"


def test_verify_images_off_defers_broken_files_to_getitem(processor: LacoProcessor, write_llava: Writer) -> None:
    json_path, folder = write_llava([qa_record("broken", "what color is the shape?", "red", image="garbage.png")])
    (folder / "garbage.png").write_bytes(b"this is not a png")
    dataset = LlavaDataset(json_path, folder, processor, verify_images=False, progress=False)
    assert len(dataset) == 1
    with pytest.raises(DataError, match=r"garbage\.png of record 'broken'"):
        dataset[0]


def test_unusable_files_and_arguments_fail_fast(processor: LacoProcessor, write_llava: Writer, tmp_path: Path) -> None:
    json_path, folder = write_llava([{"id": "only", "conversations": []}])
    with pytest.raises(DataError, match=r"no usable record.*1 malformed \(e\.g\. only\).*'conversations' is"):
        LlavaDataset(json_path, folder, processor, progress=False)
    json_path.write_text('{"id": "a"}')
    with pytest.raises(DataError, match="JSON list of records"):
        LlavaDataset(json_path, folder, processor, progress=False)
    json_path.write_text("[{")
    with pytest.raises(DataError, match="not valid UTF-8 JSON"):
        LlavaDataset(json_path, folder, processor, progress=False)
    with pytest.raises(FileNotFoundError, match="check json_path"):
        LlavaDataset(tmp_path / "absent.json", folder, processor, progress=False)
    with pytest.raises(FileNotFoundError, match="check image_folder"):
        LlavaDataset(json_path, tmp_path / "absent", processor, progress=False)
    with pytest.raises(ValueError, match="limit=0"):
        LlavaDataset(json_path, folder, processor, limit=0, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# limit


def test_limit_takes_the_first_usable_records(processor: LacoProcessor, write_llava: Writer) -> None:
    records = [
        qa_record("u0", "what color is the shape?", "red"),
        qa_record("missing", "what color is the shape?", "red", image="nope.png"),
        qa_record("u1", "is there a circle?", "no", image="blue.png"),
        qa_record("u2", "what color is the shape?", "blue", image="blue.png"),
        qa_record("u3", "what color is the shape?", "red"),
    ]
    with pytest.warns(UserWarning, match="1 missing image"):
        dataset = _dataset(write_llava, records, processor, limit=3)
    assert [record.id for record in dataset.records] == ["u0", "u1", "u2"]
    report = dataset.report
    assert (report.total, report.examined, report.used) == (5, 4, 3)
    assert report.summary() == "3 of 5 records used (limit reached after 4), 1 skipped: 1 missing image (e.g. missing)"
    again = _dataset(write_llava, records[:1] + records[2:], processor, limit=3)
    assert [record.id for record in again.records] == ["u0", "u1", "u2"]


# ---------------------------------------------------------------------------------------------------------------
# Collator


@pytest.mark.parametrize("chat_template", [True, False], ids=["chat-template", "fallback-format"])
def test_collator_pads_right_and_masks(
    make_processor: Callable[..., LacoProcessor], write_llava: Writer, chat_template: bool
) -> None:
    processor = make_processor(chat_template)
    records = [qa_record("short", "what color?", "red"), qa_record("long", "is there a circle in the image?", "no")]
    dataset = _dataset(write_llava, records, processor)
    items = [dataset[0], dataset[1]]
    lengths = [len(item["input_ids"]) for item in items]
    assert lengths[0] < lengths[1]
    pad = processor.tokenizer.pad_token_id

    batch = MultimodalCollator(pad)(items)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, lengths[1])
    assert batch["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    for row, (item, length) in enumerate(zip(items, lengths)):
        assert torch.equal(batch["input_ids"][row, :length], item["input_ids"])
        assert torch.equal(batch["labels"][row, :length], item["labels"])
        assert torch.equal(batch["pixel_values"][row], item["pixel_values"])
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (lengths[1] - length)
        assert (batch["input_ids"][row, length:] == pad).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
    # The pad id is the EOS id (LacoProcessor's default), which also ends the answer: that EOS stays learned.
    assert pad == processor.tokenizer.eos_token_id
    answer_eos = (batch["input_ids"][0, : lengths[0]] == pad).nonzero().max()
    assert batch["labels"][0, answer_eos] == pad and batch["attention_mask"][0, answer_eos] == 1

    rounded = MultimodalCollator(pad, pad_to_multiple_of=16)(items)
    assert rounded["input_ids"].shape[1] % 16 == 0 and rounded["input_ids"].shape[1] >= lengths[1]
    assert rounded["attention_mask"].sum(dim=1).tolist() == lengths


def test_collator_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pad_token_id is None"):
        MultimodalCollator(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty batch"):
        MultimodalCollator(0)([])
    item = {"input_ids": torch.ones(3, dtype=torch.long), "labels": torch.ones(2, dtype=torch.long), "id": "x"}
    with pytest.raises(ValueError, match="'x' has 3 input_ids but 2 labels"):
        MultimodalCollator(0)([item])


def test_batches_feed_llava_forward(processor: LacoProcessor, write_llava: Writer) -> None:
    """The collated dict is exactly what LlavaForConditionalGeneration.forward (and so the Trainer) takes."""
    records = [qa_record("a", "what color?", "red"), qa_record("b", "is there a circle in the image?", "no")]
    dataset = _dataset(write_llava, records, processor)
    batch = MultimodalCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])

    torch.manual_seed(0)
    # CLIP at 28 px with 14 px patches: 2x2 patches (+ CLS, dropped by the "default" feature strategy) = 4 tokens.
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=14,
    )
    text = LlamaConfig(
        vocab_size=len(processor.tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        output = model(**batch)
    assert output.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(output.loss)


# ---------------------------------------------------------------------------------------------------------------
# Several images per record


def _two_image_record(record_id: str = "pair") -> dict[str, Any]:
    return {
        "id": record_id,
        "image": ["img.png", "blue.png"],
        "conversations": [
            {"from": "human", "value": "<image>\nwhat color is the first shape?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "and in <image>?"},
            {"from": "gpt", "value": "blue"},
        ],
    }


def test_a_record_with_several_images_trains_with_one_placeholder_run_per_image(
    processor: LacoProcessor, write_llava: Writer
) -> None:
    dataset = _dataset(write_llava, [qa_record("one", "what color?", "red"), _two_image_record()], processor)
    assert [len(record.images) for record in dataset.records] == [1, 2]
    item = dataset[1]
    assert item["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    blue = processor.image_transform([Image.new("RGB", (16, 16), (20, 40, 220))])[0]
    torch.testing.assert_close(item["pixel_values"][1], blue)  # images in the order 'image' lists them
    ids = item["input_ids"].tolist()
    runs = "".join("I" if token == processor.image_token_id else "." for token in ids).split(".")
    assert [len(run) for run in runs if run] == [NUM_IMAGE_TOKENS, NUM_IMAGE_TOKENS]  # one per tag, in two turns
    assert _answer_text(processor, item) == "red<|im_end|>\nblue<|im_end|>\n"  # every answer turn is learned

    batch = MultimodalCollator(processor.tokenizer.pad_token_id)([dataset[0], item])
    assert batch["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)  # the first item's image, then the pair's
    assert torch.equal(batch["pixel_values"][1:], item["pixel_values"])

    example = dataset.example(1)
    assert example.images == tuple(dataset.image_folder / name for name in ("img.png", "blue.png"))
    assert (example.question, example.answer) == ("and in ?", "blue") and len(example.turns) == 3


def test_an_image_that_cannot_be_read_is_named_by_its_place_in_the_record(
    processor: LacoProcessor, write_llava: Writer
) -> None:
    record = {**_two_image_record("bad-second"), "image": ["img.png", "nope.png"]}
    with pytest.raises(DataError, match=r"'bad-second'.*missing image: image 2 of 2: image file .*nope\.png"):
        _dataset(write_llava, [record], processor, strict=True)


def test_adjacent_images_are_counted_per_image(processor: LacoProcessor) -> None:
    turns = [{"from": "human", "value": "<image><image> same?"}, {"from": "gpt", "value": "no"}]
    encoded = processor.encode_conversation(turns, num_images=2)
    assert encoded.input_ids.count(processor.image_token_id) == 2 * NUM_IMAGE_TOKENS
    with pytest.raises(ValueError, match=r"2 <image> tag\(s\) in human turns and 0 in answers for 3 image"):
        processor.encode_conversation(turns, num_images=3)
    # a tag in a question nobody answered is never encoded: the second image would have no placeholders
    trailing = [
        {"from": "human", "value": "<image> what color?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "<image> and this one?"},
    ]
    with pytest.raises(ValueError, match=r"placeholder runs of \[4\] tokens where 2 image\(s\) need 4 each.*after"):
        processor.encode_conversation(trailing, num_images=2)
