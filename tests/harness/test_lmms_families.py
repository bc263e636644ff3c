"""The lmms-eval model `laco` on other families' LaCo checkpoints: answered through their processor and template."""

import pytest
from PIL import Image

import laco
from laco.harness.lmms_model import LacoLmms

from chat_templates import templated

TASK, SPLIT = "colours", "test"


FAMILIES = [
    "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "llava-next", "llava-onevision", "internvl", "idefics3", "smolvlm", "gemma3",
]  # fmt: skip


def converted(family, root):
    tiny = templated(family)
    tiny.model.save_pretrained(root / "src")
    tiny.processor.save_pretrained(root / "src")
    laco.convert(root / "src", root / "dst", "1/2", processor=tiny.processor)
    return root / "dst"


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    return converted("qwen2.5-vl", tmp_path_factory.mktemp("qwen"))


def _request(kind, second, image, context="what color is the shape?"):
    from lmms_eval.api.instance import Instance

    return Instance(
        request_type=kind,
        arguments=(context, second, lambda doc: [Image.open(doc["image"])], 0, TASK, SPLIT),
        idx=0,
        metadata={"task": TASK, "doc_id": 0, "repeats": 1},
    )


def test_a_converted_qwen_answers_generate_until_and_refuses_loglikelihood(qwen_checkpoint, tmp_path):
    Image.new("RGB", (40, 30), (220, 30, 30)).save(tmp_path / "red.png")
    model = LacoLmms(pretrained=str(qwen_checkpoint), batch_size=2, precision="fp32")
    model.task_dict = {TASK: {SPLIT: [{"image": str(tmp_path / "red.png")}]}}
    greedy = {"until": [], "max_new_tokens": 3, "temperature": 0}
    answers = model.generate_until([_request("generate_until", greedy, tmp_path / "red.png")] * 2)
    assert len(answers) == 2 and answers[0] == answers[1] and isinstance(answers[0], str)
    with pytest.raises(ValueError, match="loglikelihood .* LaCo LLaVA checkpoints only"):
        model.loglikelihood([_request("loglikelihood", " red", tmp_path / "red.png")])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_converted_family_answers_generate_until(family, tmp_path):
    checkpoint = converted(family, tmp_path)
    Image.new("RGB", (32, 32), (30, 40, 220)).save(tmp_path / "blue.png")
    model = LacoLmms(pretrained=str(checkpoint), batch_size=1, precision="fp32")
    model.task_dict = {TASK: {SPLIT: [{"image": str(tmp_path / "blue.png")}]}}
    greedy = {"until": [], "max_new_tokens": 2, "temperature": 0}
    (answer,) = model.generate_until([_request("generate_until", greedy, tmp_path / "blue.png")])
    assert isinstance(answer, str)
