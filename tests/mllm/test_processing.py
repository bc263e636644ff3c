"""LacoProcessor: prompts with several images or turns, multimodal chat templates, AutoProcessor round trip."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from laco.mllm import ImageTransform, LacoProcessor, build_mllm
from laco.mllm.processing import AUTO_PROCESSOR_FILE, PROCESSOR_FILE

from tiny_models import tiny_encoder, tiny_llm, tiny_tokenizer

RED, BLUE = Image.new("RGB", (40, 30), (200, 0, 0)), Image.new("RGB", (30, 40), (0, 0, 200))


def processor(**kwargs) -> LacoProcessor:
    return LacoProcessor(tiny_tokenizer(), ImageTransform(32), num_image_tokens=4, **kwargs)


def placeholders(row: torch.Tensor, token: int) -> int:
    return int((row == token).sum())


def test_one_question_about_several_images_and_several_questions_in_one_batch():
    proc = processor()
    inputs = proc(["what color?", "<image> or <image>: which is red?"], [RED, [RED, BLUE]])
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)  # every image of every row, in order
    assert [placeholders(row, proc.image_token_id) for row in inputs["input_ids"]] == [4, 8]
    assert proc.prompt("which is red?", num_images=2) == proc.prompt("<image>\n<image>\nwhich is red?", 2)


def test_tags_that_do_not_match_the_images_are_refused_naming_the_prompt():
    proc = processor()
    with pytest.raises(ValueError, match=r"'<image> or <image>\?' holds 2 <image> tag\(s\) for 1 image"):
        proc(["<image> or <image>?"], [RED])
    with pytest.raises(ValueError, match="got 2 questions for 1 images"):
        proc(["a?", "b?"], [RED])
    with pytest.raises(ValueError, match="at least one image"):
        proc(["a?"], [[]])


def test_a_conversation_asks_its_last_question_after_the_earlier_answers():
    proc = processor()
    turns = [
        {"from": "human", "value": "<image>\nwhat color?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "is it a circle?"},
    ]
    text = proc.prompt_turns(turns)
    assert text.index("what color?") < text.index("red") < text.index("is it a circle?")
    assert text.endswith("<|im_start|>assistant\n")
    inputs = proc([turns], [[RED]])
    assert inputs["input_ids"][0].tolist() == proc._tokenize(text)
    with pytest.raises(ValueError, match="1 <image> tag.*2 image"):
        proc([turns], [[RED, BLUE]])


# A LLaVA-style multimodal template of the kind stock processors carry: content is a list of typed parts.
PARTS_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def test_a_multimodal_chat_template_gets_typed_parts_and_trains_every_answer():
    proc = processor(chat_template=PARTS_TEMPLATE)
    assert proc.prompt("what color?") == "USER: <image>\nwhat color?\nASSISTANT:"
    turns = [
        {"from": "human", "value": "<image> what color?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "and <image>?"},
        {"from": "gpt", "value": "blue"},
    ]
    encoded = proc.encode_conversation(turns, num_images=2)
    learned = [token for token, label in zip(encoded.input_ids, encoded.labels) if label != -100]
    # the template ends answers without the EOS: it is added, so the model learns to stop
    assert proc.tokenizer.decode(learned) == " red\n<|im_end|> blue\n<|im_end|>"
    assert encoded.input_ids.count(proc.image_token_id) == 8


def test_auto_processor_loads_a_laco_checkpoints_full_processor(tmp_path):
    tokenizer = tiny_tokenizer()
    model, built = build_mllm(tiny_encoder("dinov2"), (tiny_llm(len(tokenizer)), tokenizer), image_size=32)
    built.chat_template = PARTS_TEMPLATE
    model.save_pretrained(tmp_path)
    built.save_pretrained(tmp_path)
    assert json.loads((tmp_path / AUTO_PROCESSOR_FILE).read_text()) == {"processor_class": "LacoProcessor"}
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, LacoProcessor)
    assert (loaded.image_transform, loaded.num_image_tokens, loaded.chat_template) == (
        built.image_transform,
        built.num_image_tokens,
        PARTS_TEMPLATE,
    )
    assert torch.equal(loaded(["what?"], [RED])["input_ids"], built(["what?"], [RED])["input_ids"])
    # a checkpoint saved before processor_config.json existed is found by its model type
    (tmp_path / AUTO_PROCESSOR_FILE).unlink()
    settings = json.loads((tmp_path / PROCESSOR_FILE).read_text())
    del settings["chat_template"], settings["image_transform"]["resize"]
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(settings))
    assert AutoProcessor.from_pretrained(tmp_path).image_transform == built.image_transform


def test_after_question_puts_a_turns_opening_images_after_its_text_in_prompts_and_training_records(tmp_path):
    before, after = processor(), processor(image_position="after_question")
    assert after.prompt("what color?") == before.prompt("what color?\n<image>")
    assert after.prompt("<image>\n<image>\nwhich is red?", 2) == before.prompt("which is red?\n<image>\n<image>", 2)
    # tags the text places itself, and answers, stay where they are
    assert after.prompt("is <image> red?") == before.prompt("is <image> red?")
    record = [{"from": "human", "value": "<image>\nwhat color?"}, {"from": "gpt", "value": "red"}]
    moved = [{"from": "human", "value": "what color?\n<image>"}, {"from": "gpt", "value": "red"}]
    assert after.encode_conversation(record) == before.encode_conversation(moved)
    ids = after.encode_conversation(record).input_ids
    assert "what color?" in after.tokenizer.decode(ids[: ids.index(after.image_token_id)])
    # the training layout and the evaluation prompt agree: the record's prompt is the prompt of its question
    prompt_ids = after(["what color?"], [RED])["input_ids"][0].tolist()
    assert ids[: len(prompt_ids)] == prompt_ids
    after.save_pretrained(tmp_path)
    assert LacoProcessor.from_pretrained(tmp_path).image_position == "after_question"
    with pytest.raises(ValueError, match="image_position must be one of .*'before_question', 'after_question'.*'last'"):
        processor(image_position="last")
