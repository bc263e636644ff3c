"""``laco bench --engine vllm``: LaCo against external compression, both served by vLLM, side by side.

Two random-weight checkpoints at a preset's geometry (default LLaVA-OneVision-0.5B: SigLIP-so400m/14 @384 +
Qwen2-0.5B), identical but for where the 2x2 merge sits (LaCo after layer 7 of 27, or after the last layer), are
saved with a small tokenizer and each served by its own ``vllm serve`` (the serving environment, float32, eager on
CPU). Both servers stay up and every round measures them one after the other, the order alternating per round:

* TTFT: one request at a time (an image, a prompt, ``max_tokens=1``), the client's wall time to the answer;
* throughput: ``requests`` concurrent requests of ``output_tokens`` tokens each (``ignore_eos``): requests/s and
  output tokens/s.

Every request carries an image no request has used before (same images for both models), so vLLM's encoder and
processor caches cannot skip work. The ratios are set next to the FLOP bound of :mod:`laco.cost`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cost import mllm_flops
from ..placement import Placement
from .presets import load_preset

VARIANTS = ("laco@1/4", "external")  # measured, then reported as external / laco
PROMPT = "Describe the image in one sentence."


@dataclass
class ServingSettings:
    preset: str = "llava-ov-0.5b"
    depth: str = "1/4"
    requests: int = 4
    output_tokens: int = 16
    rounds: int = 3
    warmup: int = 1
    llm_layers: int | None = None  # None: the full LLM
    device: str = "cpu"
    serve_python: str | None = None
    seed: int = 0
    keep_models: bool = False


@dataclass
class ServingResult:
    settings: dict[str, Any]
    machine: dict[str, Any]
    image_tokens: int
    prompt_tokens: int
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # variant -> metric -> per round
    medians: dict[str, dict[str, float]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)  # LaCo's speed-up over external, per metric
    bounds: dict[str, float] = field(default_factory=dict)  # the FLOP bound of each ratio
    order: list[list[str]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def build_checkpoints(settings: ServingSettings, directory: Path) -> dict[str, Path]:
    """Save one random-weight checkpoint per variant (same seed: same weights but for the merge's place).

    Each is built in a child process, so this process never holds a 0.9B-parameter model while the servers run.
    """
    import subprocess
    import sys

    preset = load_preset(settings.preset)
    depth = preset.encoder.layers
    placements = {VARIANTS[0]: Placement(settings.depth).resolve(depth), VARIANTS[1]: Placement("last").resolve(depth)}
    paths = {}
    for name, placement in placements.items():
        path = directory / name.replace("@", "-").replace("/", "-")
        paths[name] = path
        if (path / "laco_processor.json").exists() and list(path.glob("*.safetensors")):
            continue  # kept from an earlier run with --keep-models
        job = json.dumps({"settings": asdict(settings), "placement": placement.to_dict(), "path": str(path)})
        code = f"from laco.bench.serving import _build_one; _build_one({job!r})"
        if subprocess.run([sys.executable, "-c", code]).returncode != 0:
            raise RuntimeError(f"building the {name} checkpoint failed; see its output above.")
    return paths


def _build_one(job: str) -> None:
    """Build and save one checkpoint (run in a child process by :func:`build_checkpoints`)."""
    import torch

    from ..mllm import LacoProcessor
    from ..mllm.processing import ImageTransform
    from .models import random_mllm
    from .tokenizer import bench_tokenizer

    data = json.loads(job)
    settings, placement, path = (
        ServingSettings(**data["settings"]),
        Placement.from_dict(data["placement"]),
        data["path"],
    )
    preset = load_preset(settings.preset)
    model = random_mllm(
        preset.encoder, preset.llm, llm_layers=settings.llm_layers, dtype=torch.float32,
        device=torch.device("cpu"), placement=placement, seed=settings.seed,
    )  # fmt: skip
    processor = LacoProcessor(
        bench_tokenizer(), ImageTransform(preset.resolution, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), system_prompt=""
    )
    processor.num_image_tokens = model.num_image_tokens(preset.resolution)
    model.config.image_token_index = processor.image_token_id  # the tokenizer's <image>, inside the vocabulary
    model.config.image_seq_length = processor.num_image_tokens
    model.save_pretrained(path)
    processor.save_pretrained(path)


# ----------------------------------------------------------------------------------------------------------------
# Requests


def image_url(seed: int, size: int) -> str:
    """A PNG data URL of a random image no other request uses (so no cache can serve it)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_request(model: str, url: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": ""},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}],
            },
        ],
    }


def _send(server, payload: dict[str, Any]) -> tuple[float, int]:
    started = time.perf_counter()
    status, body = server.post("/v1/chat/completions", payload, timeout=1800)
    if status != 200:
        raise RuntimeError(f"{server.url} answered {status}: {body}")
    return time.perf_counter() - started, int(body["usage"]["completion_tokens"])


def measure_round(server, urls: list[str], settings: ServingSettings) -> dict[str, float]:
    """One round on one server: TTFT of a lone request, then ``len(urls) - 1`` concurrent requests."""
    ttft, _ = _send(server, chat_request(server.model, urls[0], 1))
    batch = urls[1:]
    started = time.perf_counter()
    with ThreadPoolExecutor(len(batch)) as pool:
        results = list(
            pool.map(lambda url: _send(server, chat_request(server.model, url, settings.output_tokens)), batch)
        )
    wall = time.perf_counter() - started
    tokens = sum(count for _, count in results)
    return {"ttft_s": ttft, "requests_per_s": len(batch) / wall, "output_tokens_per_s": tokens / wall}


# ----------------------------------------------------------------------------------------------------------------
# The run


def flop_bounds(settings: ServingSettings, prompt_tokens: int) -> dict[str, float]:
    """FLOP-bound speed-ups: TTFT from the prefill; throughput from prefill + decode of ``output_tokens``."""
    preset = load_preset(settings.preset)
    llm = preset.llm if settings.llm_layers is None else preset.llm.with_layers(settings.llm_layers)
    costs = {}
    for name, spec in zip(VARIANTS, (settings.depth, "last")):
        common = dict(mode="prefill", prompt_tokens=prompt_tokens, answer_tokens=settings.output_tokens)
        prefill = mllm_flops(preset.encoder, llm, spec, **common).total
        decode = mllm_flops(preset.encoder, llm, spec, **{**common, "mode": "decode"}).total
        costs[name] = (prefill, prefill + decode)
    laco, external = costs[VARIANTS[0]], costs[VARIANTS[1]]
    throughput = external[1] / laco[1]
    return {"ttft": external[0] / laco[0], "requests_per_s": throughput, "output_tokens_per_s": throughput}


def run(settings: ServingSettings, out: Path, progress: bool = True) -> ServingResult:
    import torch

    from ..serve.launch import check_serving, vllm_server
    from .machine import Machine, checkout_commit

    python = check_serving(settings.serve_python)  # fail before minutes of model building
    out.mkdir(parents=True, exist_ok=True)
    paths = build_checkpoints(settings, out / "models")
    preset = load_preset(settings.preset)
    spec = json.loads((paths[VARIANTS[0]] / "laco_processor.json").read_text())
    machine = Machine.describe(torch.device(settings.device)).to_dict()
    # Other processes share the CPU with the servers; the load average says how busy the machine was.
    machine.update(commit=checkout_commit(), vllm=_vllm_version(python), load_average_start=os.getloadavg())
    result = ServingResult(asdict(settings), machine, spec["num_image_tokens"], _prompt_tokens(paths))
    result.bounds = flop_bounds(settings, result.prompt_tokens)
    args = ["--no-enable-prefix-caching", "--mm-processor-cache-gb", "0", "--max-num-seqs", str(settings.requests)]
    on_cpu = settings.device == "cpu"
    with ExitStack() as stack:
        servers = {}
        for name in VARIANTS:  # one at a time: loading is the memory peak
            log = out / f"serve-{name.replace('/', '-')}.log"
            servers[name] = stack.enter_context(
                vllm_server(
                    paths[name],
                    python=python,
                    name=name,
                    extra_args=args,
                    log=log,
                    dtype="float32" if on_cpu else "bfloat16",
                    eager=on_cpu,
                )  # fmt: skip
            )
        for index in range(settings.warmup + settings.rounds):
            order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
            seeds = [settings.seed * 100_000 + index * 1000 + i for i in range(settings.requests + 1)]
            urls = [image_url(seed, preset.resolution) for seed in seeds]
            for name in order:
                row = measure_round(servers[name], urls, settings)
                if index >= settings.warmup:
                    for metric, value in row.items():
                        result.samples.setdefault(name, {}).setdefault(metric, []).append(value)
                if progress:
                    label = "warm-up" if index < settings.warmup else f"round {index + 1 - settings.warmup}"
                    print(f"{label:8s} {name:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            if index >= settings.warmup:
                result.order.append(order)
    result.machine["load_average_end"] = os.getloadavg()
    _summarise(result)
    if not settings.keep_models:
        for path in paths.values():
            for file in path.glob("*.safetensors"):
                file.unlink()
    return result


def _vllm_version(python: Path) -> str | None:
    from ..serve.launch import run_in_serve_env

    process = run_in_serve_env(["-c", "import vllm; print(vllm.__version__)"], python=python, timeout=300)
    return process.stdout.strip().splitlines()[-1] if process.returncode == 0 and process.stdout.strip() else None


def _prompt_tokens(paths: dict[str, Path]) -> int:
    """Text tokens around the image in each request (chat template included), for the FLOP bound."""
    from PIL import Image

    from ..mllm import LacoProcessor

    processor = LacoProcessor.from_pretrained(paths[VARIANTS[0]])
    size = processor.image_transform.size
    ids = processor([PROMPT], [Image.new("RGB", (size, size))])["input_ids"]
    return int(ids.shape[1]) - processor.num_image_tokens


def _summarise(result: ServingResult) -> None:
    for name, metrics in result.samples.items():
        result.medians[name] = {metric: statistics.median(values) for metric, values in metrics.items()}
    laco, external = result.medians[VARIANTS[0]], result.medians[VARIANTS[1]]
    result.ratios = {
        "ttft": external["ttft_s"] / laco["ttft_s"],
        "requests_per_s": laco["requests_per_s"] / external["requests_per_s"],
        "output_tokens_per_s": laco["output_tokens_per_s"] / external["output_tokens_per_s"],
    }
