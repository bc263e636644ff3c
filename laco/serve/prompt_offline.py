"""Greedy answers from ``vllm.LLM`` for prompts already rendered (any checkpoint whose processor expands its own image
placeholders, e.g. a LaCo Qwen-VL one); run in the serving environment.

    .venv-serve/bin/python -m laco.serve.prompt_offline jobs.json results.json

``jobs.json`` is a list of ``{"model": dir, "requests": [{"prompt": str, "images": [path, ...]}], "max_tokens": int}``;
each prompt is the text the model's chat template renders (with one image placeholder per image, e.g. Qwen-VL's
``<|vision_start|><|image_pad|><|vision_end|>``). All requests of a job go to the engine at once, so vLLM batches
them. ``results.json`` gets, per job, the generated token ids with their log-probabilities, the prompt token ids
vLLM built, or the error that stopped the model from loading. The ``__main__`` guard matters: vLLM starts worker processes that re-import it.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image
    from vllm import LLM, SamplingParams

    model = job["model"]
    try:
        llm = LLM(
            model=model,
            dtype="float32",
            enforce_eager=True,
            max_model_len=job.get("max_model_len", 1024),
            max_num_seqs=job.get("max_num_seqs", 8),
            limit_mm_per_prompt={"image": job.get("max_images", 4)},
            seed=0,
        )
    except Exception as error:  # the root cause is in the worker's log; the test reads both
        return {"model": model, "error": f"{type(error).__name__}: {error}"}
    prompts = [
        {
            "prompt": request["prompt"],
            "multi_modal_data": {"image": [Image.open(path).convert("RGB") for path in request["images"]]},
        }
        for request in job["requests"]
    ]
    params = SamplingParams(temperature=0.0, max_tokens=job.get("max_tokens", 8), logprobs=0)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result = {
        "model": model,
        "token_ids": [list(output.outputs[0].token_ids) for output in outputs],
        "prompt_token_ids": [list(output.prompt_token_ids) for output in outputs],
        # the log-probability of each generated token, to compare with another engine's beyond the argmax
        "logprobs": [
            [step[token].logprob for step, token in zip(output.outputs[0].logprobs, output.outputs[0].token_ids)]
            for output in outputs
        ],
    }
    del llm
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m laco.serve.prompt_offline JOBS.json RESULTS.json", file=sys.stderr)
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
