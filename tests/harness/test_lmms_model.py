"""The lmms-eval model `laco`: found through the entry point, its model_args, and how it serves requests."""

import pytest
from PIL import Image

from laco.evaluate import load_model
from laco.harness import lmms_model
from laco.harness.easyvqa_task import doc_to_visual
from laco.harness.inference import GenerationSettings, continuation_logprobs, generate_answers
from laco.harness.lmms_model import LacoLmms, RequestError

from harness.lmms_setup import declared_entry_point

TASK, SPLIT = "colours", "test"
COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40), "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    docs = []
    for index, (name, colour) in enumerate(COLOURS.items()):
        Image.new("RGB", (32, 32), colour).save(folder / f"{name}.png")
        docs.append(
            {"id": f"doc-{index}", "question": "what color is the shape?", "image": str(folder / f"{name}.png")}
        )
    return docs


def _model(checkpoint, documents, **model_args):
    model = LacoLmms(pretrained=str(checkpoint), batch_size=model_args.pop("batch_size", 3), **model_args)
    model.task_dict = {TASK: {SPLIT: documents}}
    return model


def _request(kind, doc_id, second, visual=doc_to_visual, context="what color is the shape?"):
    from lmms_eval.api.instance import Instance

    return Instance(
        request_type=kind,
        arguments=(context, second, visual, doc_id, TASK, SPLIT),
        idx=0,
        metadata={"task": TASK, "doc_id": doc_id, "repeats": 1},
    )


def test_lmms_eval_finds_the_plugin_through_the_entry_point(lmms_env):
    from lmms_eval.models import get_model

    assert declared_entry_point() == "laco.harness.registration:manifests"
    assert get_model("laco") is LacoLmms


def test_model_args_are_checked(easyvqa_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="pretrained=<checkpoint directory>"):
        LacoLmms()
    with pytest.raises(TypeError, match=r"unknown model_args \['temprature'\].*it takes pretrained"):
        LacoLmms(pretrained=str(easyvqa_checkpoint), temprature=0)
    with pytest.raises(ValueError, match="--batch_size 'auto' is not supported"):
        LacoLmms(pretrained=str(easyvqa_checkpoint), batch_size="auto")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        LacoLmms(pretrained=str(easyvqa_checkpoint), precision="int8")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LacoLmms(pretrained=str(tmp_path))


def test_another_family_is_refused_before_loading(tmp_path):
    from transformers import Qwen2_5_VLConfig

    from laco.harness.family import FamilyRefusal

    Qwen2_5_VLConfig().save_pretrained(tmp_path)  # loaded as LLaVA, it crashed with a bare AttributeError
    with pytest.raises(FamilyRefusal, match=r"'qwen2_5_vl'.*lmms-eval --model laco serves LaCo checkpoints"):
        LacoLmms(pretrained=str(tmp_path))


def test_generation_keeps_order_groups_settings_and_cuts_at_stops(easyvqa_checkpoint, documents):
    model = _model(easyvqa_checkpoint, documents)
    greedy = {"until": [], "max_new_tokens": 4, "temperature": 0}
    stop_at_space = {"until": [" "], "max_new_tokens": 4, "temperature": 0}
    requests = [_request("generate_until", i, greedy if i % 2 == 0 else stop_at_space) for i in range(4)]
    answers = model.generate_until(requests)
    reference, processor = load_model(easyvqa_checkpoint)
    images = [doc_to_visual(doc)[0] for doc in documents]
    settings, _ = GenerationSettings.from_task(greedy, 32)
    expected = generate_answers(reference, processor, images, ["what color is the shape?"] * 4, settings)
    assert answers[0] == expected[0] and answers[2] == expected[2]
    assert answers[1] == expected[1].split(" ")[0] and answers[3] == expected[3].split(" ")[0]


def test_log_likelihoods_are_losses_for_lmms_evals_argmin(easyvqa_checkpoint, documents):
    from lmms_eval.api.instance import unwrap_generation_output

    model = _model(easyvqa_checkpoint, documents)
    choices = ["red", "blue", "green"]
    results = model.loglikelihood([_request("loglikelihood", 0, choice) for choice in choices])
    pairs = [unwrap_generation_output(result)[0] for result in results]  # what lmms-eval's scorer receives
    images = [doc_to_visual(documents[0])[0]] * 3
    direct = continuation_logprobs(model.model, model.processor, images, ["what color is the shape?"] * 3, choices)
    for (loss, greedy), (log_prob, direct_greedy) in zip(pairs, direct):
        assert loss == pytest.approx(-log_prob, abs=1e-5) and greedy == direct_greedy


def test_each_request_needs_readable_images(easyvqa_checkpoint, documents, tmp_path):
    model = _model(easyvqa_checkpoint, documents)
    two = lambda doc: doc_to_visual(doc) * 2  # noqa: E731  several images: asked about together, one answer
    assert (
        len(model.generate_until([_request("generate_until", 1, {"until": [], "max_new_tokens": 2}, visual=two)])) == 1
    )
    video = lambda doc: ["clip.mp4"]  # noqa: E731
    with pytest.raises(RequestError, match=r"task 'colours', document 1 comes with 1 visual\(s\) \(str\).*not videos"):
        model.generate_until([_request("generate_until", 1, {"until": []}, visual=video)])
    with pytest.raises(RequestError, match="0 visual"):
        model.loglikelihood([_request("loglikelihood", 1, "red", visual=lambda doc: [])])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    model.task_dict = {TASK: {SPLIT: [{"id": "doc-x", "image": str(broken)}]}}
    with pytest.raises(RequestError, match=r"document 0: its image could not be loaded.*broken.png cannot be read"):
        model.generate_until([_request("generate_until", 0, {"until": []})])
    with pytest.raises(RequestError, match="acc_mutual_info"):
        model.loglikelihood([_request_without_image()])
    with pytest.raises(RequestError, match="drop --apply_chat_template"):
        model.apply_chat_template([])


def _request_without_image():
    from lmms_eval.api.instance import Instance

    return Instance("loglikelihood", ("", "red"), 0, metadata={"task": TASK, "doc_id": 0, "repeats": 1})


def test_the_response_log_answers_a_rerun(easyvqa_checkpoint, documents, tmp_path, monkeypatch):
    log = tmp_path / "responses.jsonl"
    greedy = {"until": [], "max_new_tokens": 4, "temperature": 0}
    first = _model(easyvqa_checkpoint, documents, response_log=str(log), batch_size=2)
    answers = first.generate_until([_request("generate_until", i, greedy) for i in range(3)])
    losses = first.loglikelihood([_request("loglikelihood", 0, c) for c in ("red", "blue")])

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model ran although the log had every answer")

    monkeypatch.setattr(lmms_model, "generate_answers", no_model)
    monkeypatch.setattr(lmms_model, "continuation_logprobs", no_model)
    again = _model(easyvqa_checkpoint, documents, response_log=str(log), batch_size=2)
    assert again.generate_until([_request("generate_until", i, greedy) for i in range(3)]) == answers
    repeated = again.loglikelihood([_request("loglikelihood", 0, c) for c in ("red", "blue")])
    assert [getattr(r, "text", r) for r in repeated] == [getattr(r, "text", r) for r in losses]
