"""The ``vllm`` engine: LaCo against external compression, both served by vLLM, side by side.

Two random-weight checkpoints at a batched preset's geometry (default LLaVA-OneVision-0.5B), identical but for where
the 2x2 merge sits (LaCo at ``--depth``, or after the last layer), are saved with a small tokenizer and each served
by its own ``vllm serve`` (the serving environment; float32, eager on CPU). Both servers stay up and every round
measures each once, interleaved like every engine (:func:`~laco.measure.timing.run_interleaved`: the start rotates,
so the order alternates per round):

* TTFT: one request at a time (an image, a prompt, ``max_tokens=1``), the client's wall time to the answer;
* throughput: ``requests`` concurrent requests of ``output_tokens`` tokens each (``ignore_eos``): requests/s and
  output tokens/s.

Every request carries an image no request has used before (the same images for both models in a round), so vLLM's
encoder and processor caches cannot skip work. The ratios are set next to the FLOP bound of :mod:`laco.cost`.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cost import mllm_flops
from ..measure.machine import RunStart
from ..measure.timing import Samples, run_interleaved
from ..placement import Placement
from ..serve.client import data_url, image_chat
from .options import FLAG, option
from .presets import load_preset
from .results import Result, Row
from .variants import BenchVariant, build_variants

PROMPT = "Describe the image in one sentence."
METRICS = (("ttft", "ttft_s", "TTFT (s)"), ("requests_per_s", "requests_per_s", "requests/s"),
           ("output_tokens_per_s", "output_tokens_per_s", "output tokens/s"))  # fmt: skip
"""Each measurement, the metric it times and its label. Rows hold seconds (TTFT; and per request or per output
token for the rates), so every speed-up is external's seconds over LaCo's, per round."""


@dataclass
class ServingSettings:
    preset: str = "llava-ov-0.5b"
    depth: str = option("1/4", "LaCo's merge depth (external is after the last layer)")
    requests: int = option(4, "concurrent requests per round", int)
    output_tokens: int = option(16, "tokens per answer", int)
    rounds: int = option(3, "timed rounds (the order alternates)", int)
    warmup: int = 1
    llm_layers: int | None = None  # None: the full LLM
    device: str = "cpu"
    serve_python: str | None = option(None, "Python of the vLLM environment (default .venv-serve)")
    seed: int = 0
    keep_models: bool = option(False, "keep the saved checkpoints for another run (kept per variant and depth)", FLAG)

    def __post_init__(self) -> None:
        if self.requests < 1 or self.rounds < 1 or self.output_tokens < 1:
            raise ValueError("--requests, --rounds and --output-tokens must be >= 1")


def serving_variants(settings: ServingSettings) -> list[BenchVariant]:
    """LaCo at ``settings.depth`` and external compression, as the batched engine builds them (its label follows
    the depth: ``laco@1/2`` for ``--depth 1/2``)."""
    depth = load_preset(settings.preset).encoder.layers
    variants = build_variants(depth, depths=(settings.depth,), methods=("laco",), two_stage=None)
    return [variants[2], variants[1]]


def variant_names(settings: ServingSettings | None = None) -> tuple[str, str]:
    return tuple(v.name for v in serving_variants(settings or ServingSettings()))


VARIANTS = variant_names()
"""The variants at the default depth: LaCo's first, then external."""


def serving_result(
    settings: ServingSettings,
    machine: dict,
    image_tokens: int,
    prompt_tokens: int,
    samples: dict[str, Samples],
    start: RunStart | None = None,
) -> Result:
    """The result of a run: per metric, each server's per-round seconds (the rates inverted), their FLOPs."""
    laco, external = variants = serving_variants(settings)
    preset, flops = load_preset(settings.preset), flop_costs(settings, prompt_tokens)

    def row(key: str, metric: str, name: str) -> Row:
        values = samples[name].phases[metric]
        seconds = values if key == "ttft" else [1 / value for value in values]
        return Row(samples[name].with_seconds(seconds, {metric: values}), flops[name][key != "ttft"], image_tokens)

    rows = {key: {name: row(key, metric, name) for name in samples} for key, metric, _ in METRICS}
    runs = samples[laco.name]
    order = [sorted(samples, key=lambda n, r=r: samples[n].slots[samples[n].rounds.index(r)]) for r in runs.rounds]
    s = settings
    note = (
        f"served by vLLM ({'float32, eager' if s.device == 'cpu' else 'bfloat16'}, LLM layers: {s.llm_layers or 'all'}), "
        f"{image_tokens} image + {prompt_tokens} text tokens per request; TTFT: one request alone, max_tokens 1; "
        f"throughput: {s.requests} concurrent requests of {s.output_tokens} tokens; {s.rounds} rounds after "
        f"{s.warmup} warm-up (order: {', '.join('/'.join(o) for o in order)}); speed-ups are medians of per-round ratios"
    )
    titles = {key: key.replace("_", " ") for key, _, _ in METRICS}
    payload = {"image_tokens": image_tokens, "prompt_tokens": prompt_tokens, "order": order}
    return Result(
        "vllm", preset, variants, asdict(settings), machine, rows, titles, laco.name,
        preset_fields={"image_size": preset.resolution}, payload=payload, notes=[note], start=start or RunStart(),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_key(settings: ServingSettings, variant: BenchVariant) -> dict[str, Any]:
    """Everything a saved checkpoint depends on: a kept one is reused only where all of it matches."""
    return {
        "preset": str(settings.preset),
        "placement": variant.placement.to_dict(),
        "llm_layers": settings.llm_layers,
        "seed": settings.seed,
    }


KEY_FILE = "bench_checkpoint.json"


def build_checkpoints(settings: ServingSettings, directory: Path) -> dict[str, Path]:
    """Save one random-weight checkpoint per variant (same seed: same weights but for the merge's place), in a
    folder named after the variant (so ``laco@1/4`` and ``laco@1/2`` never share one); a checkpoint kept by
    ``--keep-models`` is reused only when its recorded :func:`checkpoint_key` matches this run's."""
    paths = {}
    for variant in serving_variants(settings):
        path = directory / variant.name.replace("@", "-").replace("/", "-").replace("+", "-")
        paths[variant.name] = path
        key = checkpoint_key(settings, variant)
        if _kept(path, key):
            continue
        job = {"settings": asdict(settings), "placement": variant.placement.to_dict(), "path": str(path)}
        build_in_child(json.dumps(job), variant.name)
        (path / KEY_FILE).write_text(json.dumps(key, indent=1) + "\n")
    return paths


def _kept(path: Path, key: dict[str, Any]) -> bool:
    if not (path / KEY_FILE).exists() or not list(path.glob("*.safetensors")):
        return False
    return json.loads((path / KEY_FILE).read_text()) == key


def build_in_child(job: str, name: str) -> None:
    """Build one checkpoint in a child process, so this process never holds a 0.9B-parameter model while the
    servers run."""
    import subprocess
    import sys

    code = f"from laco.bench.serving import _build_one; _build_one({job!r})"
    if subprocess.run([sys.executable, "-c", code]).returncode != 0:
        raise RuntimeError(f"building the {name} checkpoint failed; see its output above.")


def _build_one(job: str) -> None:
    """Build and save one checkpoint (run in a child process by :func:`build_checkpoints`)."""
    import torch

    from ..mllm import LacoProcessor
    from ..mllm.processing import ImageTransform
    from .models import random_mllm
    from .tokenizer import bench_tokenizer

    data = json.loads(job)
    settings, placement = ServingSettings(**data["settings"]), Placement.from_dict(data["placement"])
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
    model.save_pretrained(data["path"])
    processor.save_pretrained(data["path"])


# ----------------------------------------------------------------------------------------------------------------
# Requests


def image_url(seed: int, size: int) -> str:
    """A PNG data URL of a random image no other request uses (so no cache can serve it)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return data_url(buffer.getvalue())


def chat_request(model: str, url: str, max_tokens: int) -> dict[str, Any]:
    """Exactly ``max_tokens`` answer tokens per request, so every variant decodes the same amount."""
    return image_chat(model, url, PROMPT, max_tokens, min_tokens=max_tokens, ignore_eos=True)


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


def flop_costs(settings: ServingSettings, prompt_tokens: int) -> dict[str, tuple[float, float]]:
    """Per variant, the FLOPs of TTFT (the prefill) and of a request (prefill + decode of ``output_tokens``)."""
    preset = load_preset(settings.preset)
    llm = preset.llm if settings.llm_layers is None else preset.llm.with_layers(settings.llm_layers)
    costs = {}
    for variant in serving_variants(settings):
        common = dict(mode="prefill", prompt_tokens=prompt_tokens, answer_tokens=settings.output_tokens)
        prefill = mllm_flops(preset.encoder, llm, variant.placement, **common).total
        decode = mllm_flops(preset.encoder, llm, variant.placement, **{**common, "mode": "decode"}).total
        costs[variant.name] = (prefill, prefill + decode)
    return costs


def flop_bounds(settings: ServingSettings, prompt_tokens: int) -> dict[str, float]:
    """FLOP-bound speed-ups of LaCo over external, per measurement."""
    laco, external = flop_costs(settings, prompt_tokens).values()
    return {key: external[key != "ttft"] / laco[key != "ttft"] for key, _, _ in METRICS}


def run(settings: ServingSettings, out: Path, progress: bool = True) -> Result:
    import torch

    from ..measure.machine import Machine
    from ..serve.launch import check_serving, vllm_server

    python = check_serving(settings.serve_python)  # fail before minutes of model building
    out.mkdir(parents=True, exist_ok=True)
    start = RunStart()
    paths = build_checkpoints(settings, out / "models")
    names = variant_names(settings)
    spec = json.loads((paths[names[0]] / "laco_processor.json").read_text())
    machine = Machine.describe(torch.device(settings.device)).to_dict()
    machine["vllm"] = _vllm_version(python)
    args = ["--no-enable-prefix-caching", "--mm-processor-cache-gb", "0", "--max-num-seqs", str(settings.requests)]
    on_cpu = settings.device == "cpu"
    with ExitStack() as stack:
        servers = {}
        dtype = {"dtype": "float32" if on_cpu else "bfloat16", "eager": on_cpu}
        for name in names:  # one at a time: loading is the memory peak
            log = out / f"serve-{name.replace('/', '-')}.log"
            server = vllm_server(paths[name], python=python, name=name, extra_args=args, log=log, **dtype)
            servers[name] = stack.enter_context(server)
        samples = _time_servers(servers, settings, load_preset(settings.preset).resolution, progress)
    result = serving_result(
        settings, machine, spec["num_image_tokens"], _prompt_tokens(paths[names[0]]), samples, start
    )
    if not settings.keep_models:
        for path in paths.values():
            for file in path.glob("*.safetensors"):
                file.unlink()
    return result


def _time_servers(servers: dict[str, Any], settings: ServingSettings, size: int, progress: bool) -> dict[str, Samples]:
    """Every server once per round, interleaved; round ``r`` sends both servers the same fresh images."""
    calls: dict[str, int] = {}

    def workload(name: str):
        def call() -> dict[str, float]:
            index = calls[name] = calls.get(name, -1) + 1
            seeds = [settings.seed * 100_000 + index * 1000 + i for i in range(settings.requests + 1)]
            row = measure_round(servers[name], [image_url(seed, size) for seed in seeds], settings)
            if progress:
                label = "warm-up" if index < settings.warmup else f"round {index + 1 - settings.warmup}"
                print(f"{label:8s} {name:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            return row

        return call

    return run_interleaved({name: workload(name) for name in servers}, reps=settings.rounds, warmup=settings.warmup)


def _vllm_version(python: Path) -> str | None:
    from ..serve.launch import run_in_serve_env

    process = run_in_serve_env(["-c", "import vllm; print(vllm.__version__)"], python=python, timeout=300)
    return process.stdout.strip().splitlines()[-1] if process.returncode == 0 and process.stdout.strip() else None


def _prompt_tokens(checkpoint: Path) -> int:
    """Text tokens around the image in each request (chat template included), for the FLOP bound."""
    from PIL import Image

    from ..mllm import LacoProcessor

    processor = LacoProcessor.from_pretrained(checkpoint)
    size = processor.image_transform.size
    ids = processor([PROMPT], [Image.new("RGB", (size, size))])["input_ids"]
    return int(ids.shape[1]) - processor.num_image_tokens
