"""LaCo Qwen2-VL / Qwen2.5-VL checkpoints (``laco convert`` output) served by vLLM in the serving environment
(.venv-serve): greedy tokens equal transformers' LaCo model's (``laco.load`` + ``generate`` here) for one image, two
images of different sizes in one prompt, and a batch of requests with images of different sizes; offline
``vllm.LLM`` and ``vllm serve`` behind the OpenAI API.

Skipped, with the exact reason, where the serving environment is missing or vLLM's CPU backend cannot run.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from qwen_models import IMAGE_TOKEN

import laco
from laco.serve.client import data_url
from laco.serve.launch import run_in_serve_env, vllm_server

from chat_templates import QWEN
from serve.conftest import offline_answers

MAX_TOKENS = 8
MODES = ["keep_llm_tokens", "compress_more"]
LAYER = "1/2"  # LaCo after block 2 of the tiny tower's 4
QUESTION = "what color is the shape?"
# (width, height) in pixels; the tiny processor resizes to multiples of 8 px (4 px patches, 2x2 merge units), and
# every size here is a multiple of 16 px, so compress_more's 2x2 blocks of merge units pair up too
SIZES = [(32, 48), (48, 32), (64, 32), (32, 32)]


def _vllm_config(family: str):
    """The tiny Qwen-VL config of tests/fixtures/qwen_models, with an LLM vLLM's CPU attention takes (64-wide
    heads) and M-RoPE sections that fill them."""
    from qwen_models import tiny_config

    config = tiny_config(family)
    text = config.text_config
    text.hidden_size, text.num_attention_heads, text.num_key_value_heads = 128, 2, 2
    text.head_dim, text.intermediate_size, text.max_position_embeddings = 64, 128, 1024
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [16, 8, 8]}
    if family == "qwen2":
        config.vision_config.hidden_size = 128  # Qwen2-VL's merger outputs vision_config.hidden_size
    else:
        config.vision_config.out_hidden_size = 128
    return config


def save_converted(root: Path, family: str, mode: str) -> Path:
    """A random tiny checkpoint saved as a user has it (model + processor with its chat template), converted."""
    from qwen_models import tiny_processor
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
        Qwen3VLForConditionalGeneration,
    )

    torch.manual_seed(0)
    model_class = {
        "qwen2": Qwen2VLForConditionalGeneration,
        "qwen2.5": Qwen2_5_VLForConditionalGeneration,
        "qwen3": Qwen3VLForConditionalGeneration,
    }[family]
    model = model_class(_vllm_config(family)).eval()
    processor = tiny_processor(family)
    processor.chat_template = QWEN
    src, dst = root / f"{family}-src", root / f"{family}-{mode}"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    laco.convert(src, dst, LAYER, mode=mode, processor=processor)
    return dst


def prompt(processor, images: int, question: str = QUESTION) -> str:
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def image_files(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    colours = [(200, 30, 30), (30, 40, 220), (30, 200, 40), (230, 220, 30)]
    paths = []
    for index, ((width, height), colour) in enumerate(zip(SIZES, colours)):
        image = Image.new("RGB", (width, height), colour)
        image.paste((255, 255, 255), (width // 4, height // 4, width // 2, height // 2))
        paths.append(directory / f"image{index}.png")
        image.save(paths[-1])
    return paths


# each request: (question, indices into image_files)
REQUESTS = [
    (QUESTION, [0]),  # one image
    ("compare the two shapes", [1, 2]),  # two images of different sizes in one prompt
    ("what is in the picture?", [3]),  # the batch: these three requests go to the engine together
]


@torch.inference_mode()
def transformers_answers(model_dir: Path, requests):
    """Greedy new tokens, prompt token ids and the new tokens' log-probabilities of transformers' LaCo model
    (``laco.load``), one request at a time."""
    from transformers import AutoProcessor

    model = laco.load(model_dir, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    answers, prompts, logprobs = [], [], []
    for text, paths in requests:
        images = [Image.open(path).convert("RGB") for path in paths]
        inputs = processor(text=[text], images=images, return_tensors="pt")
        output = model.generate(
            **inputs, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        new = output.sequences[0, inputs["input_ids"].shape[1] :]
        steps = torch.stack(output.logits)[:, 0].float().log_softmax(-1)
        answers.append(new.tolist())
        logprobs.append(steps.gather(-1, new[:, None])[:, 0].tolist())
        prompts.append(inputs["input_ids"][0].tolist())
    return answers, prompts, logprobs


def _rendered(model_dir: Path, images: list[Path]):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    return [(prompt(processor, len(indices), question), [images[i] for i in indices]) for question, indices in REQUESTS]


def test_plugin_registers_the_qwen_architectures_lazily(serving_python):
    code = (
        "import sys\n"
        "from vllm.plugins import load_general_plugins\n"
        "load_general_plugins()\n"
        "from vllm import ModelRegistry\n"
        "archs = ModelRegistry.get_supported_archs()\n"
        "for arch in ('LacoQwen2VLForConditionalGeneration', 'LacoQwen2_5_VLForConditionalGeneration',\n"
        "             'LacoQwen3VLForConditionalGeneration', 'LacoLlavaForConditionalGeneration'):\n"
        "    assert arch in archs, arch\n"
        "assert 'laco.serve.qwen_vllm' not in sys.modules, 'registration must stay lazy'\n"
        "assert 'laco.serve.qwen3_vllm' not in sys.modules, 'registration must stay lazy'\n"
        "print('registered')\n"
    )
    process = run_in_serve_env(["-c", code], timeout=300)
    assert process.returncode == 0 and "registered" in process.stdout, process.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2.5", "qwen2", "qwen3"])
def test_offline_greedy_tokens_equal_transformers_laco_model(tmp_path, serving_python, family):
    """vllm.LLM on converted checkpoints, keep_llm_tokens and compress_more: the same prompt tokens (placeholder
    counts), the same greedy tokens and the same log-probabilities (to float32 rounding) as transformers' LaCo model,
    for one image, two images of different sizes in one prompt, and the three requests batched (CPU).

    A processor whose laco_factor disagrees with the model's mode is refused when the engine starts.
    The log-probabilities are what makes the positions count: with 1-D positions instead of M-RoPE the tiny model
    still picks the same tokens, but its log-probabilities move by ~7e-3 (tried by hand), against ~5e-7 here."""
    images = image_files(tmp_path / "images")
    models = {mode: save_converted(tmp_path, family, mode) for mode in MODES}
    requests = {mode: _rendered(models[mode], images) for mode in MODES}
    jobs = [
        {
            "model": str(models[mode]),
            "requests": [{"prompt": text, "images": [str(path) for path in paths]} for text, paths in requests[mode]],
            "max_tokens": MAX_TOKENS,
            "max_images": 4,
        }
        for mode in MODES
    ]
    if family == "qwen2.5":  # a processor whose counts disagree with the model's mode is refused at start-up
        wrong = tmp_path / "wrong-factor"
        shutil.copytree(models["keep_llm_tokens"], wrong)
        saved = json.loads((wrong / "processor_config.json").read_text())
        (wrong / "processor_config.json").write_text(json.dumps({**saved, "laco_factor": 2}))
        jobs.append({"model": str(wrong), "requests": [], "max_tokens": 1, "max_images": 4})
    results = offline_answers(jobs, tmp_path)
    if family == "qwen2.5":
        refused = results.pop().get("error", "")
        assert "CheckpointError" in refused and "laco_factor 2, but the model's LaCo settings need laco_factor 1" in (
            refused
        ), refused
    for mode, result in zip(MODES, results):
        assert "error" not in result, f"{mode}: {result.get('error')}"
        expected, expected_prompts, expected_logprobs = transformers_answers(models[mode], requests[mode])
        assert result["prompt_token_ids"] == expected_prompts, mode
        assert result["token_ids"] == expected, f"{mode}: vLLM {result['token_ids']} != transformers {expected}"
        for served, reference in zip(result["logprobs"], expected_logprobs):
            torch.testing.assert_close(torch.tensor(served), torch.tensor(reference), rtol=0, atol=1e-4)
    image_tokens = [
        [ids.count(IMAGE_TOKEN) for ids in result["prompt_token_ids"]] for result in results
    ]  # compress_more: 4x fewer image tokens for the LLM
    assert [4 * count for count in image_tokens[1]] == image_tokens[0], image_tokens


def _png(path: Path) -> str:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return data_url(buffer.getvalue())


def _chat(paths: list[Path], question: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": _png(path)}} for path in paths]
    return {
        "model": "laco",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "return_token_ids": True,  # vLLM's extension: prompt and completion token ids in the answer
        "messages": [{"role": "user", "content": [*content, {"type": "text", "text": question}]}],
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, mode",
    [
        ("qwen2.5", "keep_llm_tokens"),
        ("qwen2", "keep_llm_tokens"),
        ("qwen3", "keep_llm_tokens"),
        ("qwen2.5", "compress_more"),
    ],
)
def test_vllm_serve_answers_through_the_openai_api_as_transformers_does(tmp_path, serving_python, family, mode):
    """`vllm serve` of a converted checkpoint, the three requests sent concurrently through the OpenAI chat API (vLLM
    renders the chat template): the prompt tokens and greedy tokens transformers' LaCo model has for the same
    conversation. An image placeholder typed into a request without images is a 400, and so (compress_more) is an
    image whose merge units do not pair up 2x2; the server keeps answering."""
    from concurrent.futures import ThreadPoolExecutor

    model_dir = save_converted(tmp_path, family, mode)
    images = image_files(tmp_path / "images")
    expected, expected_prompts, _ = transformers_answers(model_dir, _rendered(model_dir, images))
    chats = [_chat([images[i] for i in indices], question) for question, indices in REQUESTS]
    odd = tmp_path / "odd.png"
    Image.new("RGB", (40, 40), (30, 40, 220)).save(odd)  # 5x5 merge units
    options = ["--limit-mm-per-prompt", '{"image": 4}', "--mm-processor-cache-gb", "0"]
    with vllm_server(model_dir, log=tmp_path / "serve.log", extra_args=options) as server:
        with ThreadPoolExecutor(len(chats)) as pool:
            answers = list(pool.map(lambda chat: server.post("/v1/chat/completions", chat), chats))
        typed = _chat([], "<|vision_start|><|image_pad|><|vision_end|> " + QUESTION)  # a placeholder, no image
        status, body = server.post("/v1/chat/completions", typed)
        assert status == 400 and "brings no image" in body["error"]["message"], body
        status, body = server.post("/v1/chat/completions", _chat([odd], QUESTION))
        if mode == "compress_more":
            assert status == 400 and "compress_more cannot merge 2x2 once more" in body["error"]["message"], body
        else:
            assert status == 200, body
        status, body = server.post("/v1/chat/completions", chats[0])
        assert status == 200 and body["choices"][0]["token_ids"] == expected[0], body  # still answering
    for (status, body), tokens, prompt_ids in zip(answers, expected, expected_prompts):
        assert status == 200, body
        assert body["prompt_token_ids"] == prompt_ids
        assert body["choices"][0]["token_ids"] == tokens
