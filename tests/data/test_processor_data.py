"""The data path driven by a checkpoint's own processor and chat template: answer-only labels checked against a
hand-labelled conversation per family, and batches of records of different sizes through each tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from laco.data.processor_data import ProcessorCollator, ProcessorDataset, encode_record
from laco.data.report import DataError, SkipReason
from laco.mllm.processing import IGNORE_INDEX

from chat_templates import ANSWER_ENDS, templated
from tiny_mllms import images

FAMILIES = [
    "qwen2-vl",
    "qwen2.5-vl",
    "qwen3-vl",
    "llava-next",
    "llava-onevision",
    "internvl",
    "idefics3",
    "smolvlm",
    "gemma3",
]
TWO_TURNS = [
    {"from": "human", "value": "<image>\nwhat color is the shape?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "is there a circle?"},
    {"from": "gpt", "value": "no"},
]


def labelled_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_exactly_the_hand_labelled_answers(family):
    tiny = templated(family)
    tokenizer = tiny.processor.tokenizer
    text, input_ids, labels = encode_record(tiny.processor, TWO_TURNS, images((40, 30)), max_length=None)
    expected = [
        tokenizer(end.format(answer), add_special_tokens=False)["input_ids"]
        for end, answer in zip(ANSWER_ENDS[family], ("red", "no"))
    ]
    assert labelled_runs(labels) == expected, text
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(labels, input_ids))


def write_records(tmp_path, records, sizes):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(images(*sizes)):
        image.save(folder / f"{index}.png")
    (tmp_path / "data.json").write_text(json.dumps(records))
    return tmp_path / "data.json", folder


RECORDS = [
    {"id": "one", "image": "0.png", "conversations": TWO_TURNS},
    {
        "id": "two",
        "image": ["1.png", "2.png"],
        "conversations": [
            {"from": "human", "value": "<image> and <image>: is there a circle?"},
            {"from": "gpt", "value": "yes"},
        ],
    },
    {"id": "text only", "conversations": TWO_TURNS[:2]},
    {"id": "tag in answer", "image": "0.png", "conversations": [TWO_TURNS[0], {"from": "gpt", "value": "<image>"}]},
]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_of_records_of_different_sizes_trains_through_the_model(family, tmp_path):
    tiny = templated(family)
    data_json, folder = write_records(tmp_path, RECORDS, [(40, 30), (90, 60), (24, 48)])
    with pytest.warns(UserWarning, match="2 of 4 records used"):
        dataset = ProcessorDataset(data_json, folder, tiny.processor, max_length=None, progress=False)
    assert dataset.report.skipped == {SkipReason.NO_IMAGE: 1, SkipReason.IMAGE_TAGS: 1}
    assert [record.id for record in dataset.records] == ["one", "two"]
    collator = ProcessorCollator(tiny.processor.tokenizer.pad_token_id)
    batch = collator([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"].sum(1).tolist() == [len(dataset[0]["input_ids"]), len(dataset[1]["input_ids"])]
    tiny.model.train()
    loss = tiny.model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    # the batched forward equals the records' own (right padding changes nothing the loss sees)
    tiny.model.eval()
    with torch.no_grad():
        together = tiny.model(**batch).logits
        for row in range(2):
            alone = tiny.model(**collator([dataset[row]])).logits[0]
            assert torch.allclose(together[row, : len(alone)], alone, atol=1e-4)


def test_strict_refuses_the_first_record_the_processor_cannot_use(tmp_path):
    tiny = templated("qwen2.5-vl")
    data_json, folder = write_records(tmp_path, RECORDS[2:], [(40, 30)])
    with pytest.raises(DataError, match="'text only' .*no image"):
        ProcessorDataset(data_json, folder, tiny.processor, strict=True, progress=False)


def test_a_processor_without_chat_template_is_refused_naming_the_fix(tmp_path):
    tiny = templated("gemma3")
    tiny.processor.chat_template = None
    with pytest.raises(DataError, match="no chat_template.*chat_template.jinja"):
        encode_record(tiny.processor, TWO_TURNS, images((40, 30)), max_length=None)


def test_records_over_max_length_are_skipped_not_cut(tmp_path):
    tiny = templated("llava-onevision")
    data_json, folder = write_records(tmp_path, RECORDS[:1], [(90, 60)])
    with pytest.raises(DataError, match="too long.*max_length=64"):
        ProcessorDataset(data_json, folder, tiny.processor, max_length=64, progress=False)


def test_records_the_processor_cannot_encode_are_skipped_and_reported_naming_why(tmp_path):
    import laco

    tiny = templated("qwen2.5-vl")  # compress_more needs whole 2x2 blocks of merge units: 40x30 px has none
    laco.apply(tiny.model, "1/2", mode="compress_more", processor=tiny.processor)
    data_json, folder = write_records(tmp_path, RECORDS[:2], [(40, 30), (48, 32), (32, 32)])
    with pytest.warns(UserWarning, match=r"1 of 2 records used, 1 skipped: 1 unusable conversation \(e.g. one\)"):
        dataset = ProcessorDataset(data_json, folder, tiny.processor, max_length=None, progress=False)
    assert [record.id for record in dataset.records] == ["two"]
    with pytest.raises(DataError, match=r"'one'.*unusable conversation.*multiples of 16 px"):
        ProcessorDataset(data_json, folder, tiny.processor, max_length=None, strict=True, progress=False)


def test_missing_and_corrupt_images_are_skipped_with_the_llava_paths_reasons(tmp_path):
    tiny = templated("gemma3")
    records = [
        {"id": "missing", "image": "nothing.png", "conversations": TWO_TURNS},
        {"id": "corrupt", "image": "bad.png", "conversations": TWO_TURNS},
        {"id": "again", "image": "bad.png", "conversations": TWO_TURNS},
        {"id": "good", "image": "0.png", "conversations": TWO_TURNS},
    ]
    data_json, folder = write_records(tmp_path, records, [(40, 30)])
    (folder / "bad.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="1 of 4 records used"):
        dataset = ProcessorDataset(data_json, folder, tiny.processor, max_length=None, progress=False)
    assert dataset.report.skipped == {SkipReason.MISSING_IMAGE: 1, SkipReason.UNREADABLE_IMAGE: 2}
