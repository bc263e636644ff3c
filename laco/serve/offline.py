"""Greedy answers from ``vllm.LLM`` (offline, in-process engine) for laco checkpoints; run in the serving env.

    .venv-serve/bin/python -m laco.serve.offline jobs.json results.json

``jobs.json`` is a list of ``{"model": dir, "requests": [...], "max_tokens": int, "max_images": int}`` (``max_images``
optional: the most images one prompt may hold). A request is either
``{"question": str, "image": path}``, rendered with the checkpoint's own :class:`~laco.mllm.LacoProcessor` prompt
(chat template and system prompt included: exactly the text ``laco generate`` tokenizes), or ``{"prompt": str,
"images": [path, ...]}``, a prompt already rendered by the model's chat template with one image placeholder per
image (a checkpoint whose processor expands its own placeholders, e.g. a LaCo Qwen-VL one: ``<|vision_start|>
<|image_pad|><|vision_end|>``). All requests of a job go to the engine at once, so vLLM batches them.
``results.json`` gets, per job, the generated token ids, texts and log-probabilities (of each generated token, to
compare with another engine beyond the argmax), the prompt token ids vLLM built, or the error that stopped the model
from loading. The ``__main__`` guard matters:
vLLM starts worker processes that re-import the main module.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    model = job["model"]
    try:
        llm = LLM(
            model=model,
            dtype="float32",
            enforce_eager=True,
            max_model_len=job.get("max_model_len", 1024),
            max_num_seqs=job.get("max_num_seqs", 8),
            seed=0,
            # several images per prompt only where the job asks (laco's LLaVA model takes one)
            **({"limit_mm_per_prompt": {"image": job["max_images"]}} if "max_images" in job else {}),
        )
    except Exception as error:  # the root cause is in the worker's log; the test reads both
        return {"model": model, "error": f"{type(error).__name__}: {error}"}
    prompts = [_prompt(request, model) for request in job["requests"]]
    params = SamplingParams(temperature=0.0, max_tokens=job.get("max_tokens", 8), logprobs=0)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result = {
        "model": model,
        "token_ids": [list(output.outputs[0].token_ids) for output in outputs],
        "texts": [output.outputs[0].text.strip() for output in outputs],
        "prompt_token_ids": [list(output.prompt_token_ids) for output in outputs],
        "logprobs": [
            [step[token].logprob for step, token in zip(output.outputs[0].logprobs, output.outputs[0].token_ids)]
            for output in outputs
        ],
    }
    del llm
    return result


def _prompt(request: dict[str, Any], model: str) -> dict[str, Any]:
    """vLLM's input for one request: a rendered prompt with its images, or a question on one image."""
    from PIL import Image

    from ..mllm import LacoProcessor

    if "prompt" in request:
        images = [Image.open(path).convert("RGB") for path in request["images"]]
        return {"prompt": request["prompt"], "multi_modal_data": {"image": images}}
    processor = LacoProcessor.from_pretrained(model)
    image = Image.open(request["image"]).convert("RGB")
    return {"prompt": processor.prompt(request["question"]), "multi_modal_data": {"image": image}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m laco.serve.offline JOBS.json RESULTS.json", file=sys.stderr)
        return 2
    jobs = json.loads(Path(argv[0]).read_text())
    results = []
    for job in jobs:
        try:
            results.append(run_job(job))
        except Exception:
            results.append({"model": job["model"], "error": traceback.format_exc()})
        Path(argv[1]).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
