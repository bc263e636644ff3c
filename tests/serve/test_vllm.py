"""laco checkpoints served by vLLM (run in the serving environment, .venv-serve): the plugin, greedy answers equal
to ``laco generate`` token for token (float32 CPU), and ``vllm serve`` behind the OpenAI API, errors included.

Skipped, with the exact reason, where the serving environment is missing or vLLM's CPU backend cannot run.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from laco.serve.client import data_url, image_chat
from laco.serve.launch import run_in_serve_env, vllm_server

from serve.conftest import QUESTION, color_images, laco_generate, offline_answers, save_tiny_laco

MAX_TOKENS = 8


def test_plugin_registers_the_architecture_lazily(serving_python):
    code = (
        "import sys\n"
        "from vllm.plugins import load_general_plugins\n"
        "load_general_plugins()\n"
        "from vllm import ModelRegistry\n"
        "assert 'LacoLlavaForConditionalGeneration' in ModelRegistry.get_supported_archs()\n"
        "assert 'laco.serve.vllm_model' not in sys.modules, 'registration must stay lazy'\n"
        "print('registered')\n"
    )
    process = run_in_serve_env(["-c", code], timeout=300)
    assert process.returncode == 0 and "registered" in process.stdout, process.stderr[-3000:]


def _break(directory: Path, edit) -> Path:
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.slow
def test_offline_greedy_answers_equal_laco_generate(tmp_path, serving_python, default_model, easyvqa_examples):
    """vllm.LLM and laco generate, same checkpoints and prompts: identical token ids (float32, CPU, greedy).

    Covers the trained default (DINOv2, LaCo at 1/4) on easy-VQA and tiny random models of other encoder
    families and placements (SigLIP external, CLIP uncompressed). Checkpoints without LaCo settings, or with
    settings from a newer laco, are refused when vLLM loads them, with laco's message (raised by ``vllm.LLM``).
    """
    images = color_images(tmp_path / "images")
    tiny = {
        "dinov2-quarter": save_tiny_laco(tmp_path / "dinov2", "dinov2", "1/4"),
        "siglip-external": save_tiny_laco(tmp_path / "siglip", "siglip", "last"),
        "clip-none": save_tiny_laco(tmp_path / "clip", "clip", None),
    }
    requests = {name: [(QUESTION, image) for image in images[:2]] for name in tiny}
    models = dict(tiny, default=default_model)
    requests["default"] = [(question, image) for question, image, _ in easyvqa_examples]
    missing = _break(save_tiny_laco(tmp_path / "missing", "dinov2", "1/4"), lambda c: c["vision_config"].pop("laco"))
    newer = _break(
        save_tiny_laco(tmp_path / "newer", "dinov2", "1/4"), lambda c: c["vision_config"]["laco"].update(format=99)
    )
    jobs = [
        {"model": str(models[name]), "requests": [{"question": q, "image": str(i)} for q, i in requests[name]],
         "max_tokens": MAX_TOKENS}
        for name in models
    ] + [{"model": str(path), "requests": [], "max_tokens": 1} for path in (missing, newer)]  # fmt: skip
    results = offline_answers(jobs, tmp_path)

    for name, result in zip(models, results):
        assert "error" not in result, f"{name}: {result.get('error')}"
        expected = laco_generate(models[name], requests[name], MAX_TOKENS)
        assert result["token_ids"] == expected, f"{name}: vLLM {result['token_ids']} != laco generate {expected}"
    refused_missing, refused_newer = (result.get("error", "") for result in results[len(models) :])
    assert (
        "CheckpointError" in refused_missing
        and "has no LaCo settings: vision_config.laco is missing" in refused_missing
    )
    assert "CheckpointError" in refused_newer and "saved in format 99, newer than this laco reads" in refused_newer


def _chat(server, image_url: str, question: str) -> dict:
    return image_chat(server.model, image_url, question, MAX_TOKENS)


def _data_url(path: Path) -> str:
    return data_url(path.read_bytes())


@pytest.mark.slow
def test_vllm_serve_answers_easyvqa_and_survives_bad_requests(tmp_path, default_model, easyvqa_examples):
    """`vllm serve` of the default trained model answers an easy-VQA question through the OpenAI API as laco
    generate does; an unreadable image or a placeholder count that does not match the images gets a 400 error
    response, and the server keeps answering."""
    question, image, _ = easyvqa_examples[0]
    expected = laco_generate(default_model, [(question, image)], MAX_TOKENS)[0]
    from laco.mllm import LacoProcessor

    expected_text = LacoProcessor.from_pretrained(default_model).tokenizer.decode(expected, skip_special_tokens=True)
    with vllm_server(default_model, log=tmp_path / "serve.log") as server:
        good = _chat(server, _data_url(image), question)
        status, body = server.post("/v1/chat/completions", good)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"].strip() == expected_text.strip()

        unreadable = _chat(server, "data:image/png;base64," + base64.b64encode(b"not an image").decode(), question)
        status, body = server.post("/v1/chat/completions", unreadable)
        assert status == 400 and "image" in body["error"]["message"].lower(), body

        mismatched = _chat(server, _data_url(image), "<image> <image> " + question)  # two placeholders, one image
        status, body = server.post("/v1/chat/completions", mismatched)
        assert status == 400 and "placeholder" in body["error"]["message"], body

        status, body = server.post("/v1/chat/completions", good)
        assert status == 200 and body["choices"][0]["message"]["content"].strip() == expected_text.strip(), body
        assert server.process.poll() is None
