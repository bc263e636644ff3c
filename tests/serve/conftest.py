"""Fixtures for the serving tests: laco checkpoints (tiny random ones and the quick-trained default) and what
``laco generate`` answers on them, computed in this (laco's own) environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from laco import Placement
from laco.evaluate import answer, load_model
from laco.mllm import build_mllm
from laco.serve.launch import ServeUnavailable, check_serving, repo_root, run_in_serve_env

from tiny_models import COLORS, IMAGE, tiny_encoder, tiny_llm, tiny_tokenizer

QUESTION = "what color is the shape?"


def tiny_llm_for_vllm(vocab_size: int):
    """A tiny Llama with 64-wide attention heads: vLLM's CPU attention kernels take only common head sizes."""
    return tiny_llm(vocab_size, width=128, heads=2, max_positions=1024)


def save_tiny_laco(directory: Path, family: str, layers) -> Path:
    """A random-weight laco checkpoint (tiny ``family`` encoder, compressed at ``layers``) saved as laco train does."""
    tokenizer = tiny_tokenizer()
    llm = tiny_llm_for_vllm(len(tokenizer) + 1)  # room for the <image> token build_mllm adds
    model, processor = build_mllm(
        tiny_encoder(family), (llm, tokenizer), Placement(layers), image_size=IMAGE, system_prompt=""
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def color_images(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rgb in COLORS.items():
        image = Image.new("RGB", (48, 40), rgb)  # not square and not the model's size: the processor resizes
        image.paste((255, 255, 255), (10, 10, 30, 26))
        paths.append(directory / f"{name}.png")
        image.save(paths[-1])
    return paths


@torch.inference_mode()
def laco_generate(model_dir: Path, requests: list[tuple[str, Path]], max_new_tokens: int) -> list[list[int]]:
    """Greedy token ids, one request at a time, exactly as ``laco generate`` (``laco.evaluate.answer``) runs."""
    model, processor = load_model(model_dir)
    ids = []
    for question, image_path in requests:
        image = Image.open(image_path).convert("RGB")
        inputs = processor([question], [image])
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
        )
        new = output[0, inputs["input_ids"].shape[1] :].tolist()
        assert processor.decode(torch.tensor([new])) == answer(model, processor, [image], [question], max_new_tokens)
        ids.append(new)
    return ids


@pytest.fixture(scope="session")
def serving_python() -> Path:
    """The serving environment's Python, or a skip that says exactly why vLLM cannot run here."""
    try:
        return check_serving()
    except ServeUnavailable as reason:
        pytest.skip(str(reason))


@pytest.fixture(scope="session")
def default_model(tmp_path_factory, serving_python) -> Path:
    """The default model (DINOv2-S + SmolLM2-135M, LaCo at 1/4), trained by ``laco train --quick`` (no eval)."""
    run = tmp_path_factory.mktemp("default-run")
    command = [sys.executable, "-m", "laco", "train", "--quick", "--no-eval", "--output-dir", str(run)]
    process = subprocess.run(command, cwd=repo_root(), capture_output=True, text=True, timeout=1200)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return run / "final"


@pytest.fixture(scope="session")
def easyvqa_examples(default_model) -> list[tuple[str, Path, str]]:
    """Four easy-VQA test questions ``(question, image, reference answer)``, as ``laco eval`` reads them."""
    from laco.config import load_config
    from laco.data import eval_examples
    from laco.mllm import LacoProcessor

    config = load_config(None, ["eval.limit=4"])
    examples, _ = eval_examples(config.data, "test", LacoProcessor.from_pretrained(default_model), 4)
    return [(example.question, Path(example.image), example.answer) for example in examples]


def offline_answers(jobs: list[dict], tmp_path: Path) -> list[dict]:
    """``python -m laco.serve.offline`` in the serving environment on ``jobs``; its results, one per job."""
    jobs_path, results_path = tmp_path / "jobs.json", tmp_path / "results.json"
    jobs_path.write_text(json.dumps(jobs))
    process = run_in_serve_env(["-m", "laco.serve.offline", str(jobs_path), str(results_path)], timeout=1500)
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(results_path.read_text())
