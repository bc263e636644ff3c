"""The ``vllm`` engine: LaCo against its baseline, both served by vLLM, side by side.

A pair of random-weight checkpoints at a preset's geometry (:mod:`laco.bench.serving_models`: LLaVA-OneVision
presets compare LaCo with external compression, Qwen2.5-VL presets a ``laco convert``-ed model with the stock one),
each served by its own ``vllm serve`` (the serving environment; float32, eager on CPU). Both servers stay up and
every round measures each once, interleaved like every engine (:func:`~laco.measure.timing.run_interleaved`: the
start rotates, so the order alternates per round). Where a speed-up comes from, per round:

* **ViT**: the served checkpoint's vision tower alone, as laco's vLLM class builds it, timed in the serving
  environment before the servers start (packed presets);
* **TTFT**: one request alone (an image, a prompt, ``max_tokens=1``), the client's wall time to the answer;
* **prefill** and **decode**: vLLM's own per-request times (``vllm:request_prefill_time_seconds``: scheduled to
  first token, the tower included; ``vllm:request_decode_time_seconds`` per output token), read from the server's
  ``/metrics`` around the lone request and the single-request throughput run;
* **requests/s** at each ``concurrency``: that many concurrent requests of ``output_tokens`` tokens (``ignore_eos``).

Every request carries an image no request has used before (the same images for both models in a round), so vLLM's
encoder and processor caches cannot skip work. Each ratio is set next to the FLOP bound of :mod:`laco.cost`.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..measure.machine import RunStart
from ..measure.timing import Samples, run_interleaved
from ..placement import KEEP, MORE
from ..serve.client import DECODE, PREFILL, histogram, image_chat, random_image_url
from .options import FLAG, csv, option
from .presets import any_preset
from .results import Result, Row
from .serving_models import STOCK, ServedPair, build_in_child, flop_costs, served_pair, tower_timing_job

PROMPT = "Describe the image in one sentence."
BASELINES = ("laco-class", "vllm")


def _levels(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in csv(text))


@dataclass
class ServingSettings:
    preset: str = "llava-ov-0.5b"
    depth: str = option("1/4", "LaCo's merge depth (the baseline merges after the last layer, or is the stock model)")
    mode: str = option(
        KEEP, "Qwen-VL presets: keep_llm_tokens (the stock token count) or compress_more", str, (KEEP, MORE)
    )
    concurrency: tuple[int, ...] = option((1, 4, 16), "concurrent requests of each throughput run", _levels)
    output_tokens: int = option(16, "tokens per answer", int)
    rounds: int = option(3, "timed rounds (the order alternates)", int)
    warmup: int = 1
    image_size: int | None = option(None, "Qwen-VL presets: image side in px (default 224 on a CPU, 448 on a GPU)", int)
    llm_layers: int | None = None  # None: the preset's (a CPU default may be fewer than the full LLM)
    dtype: str | None = option(None, "served dtype (default float32 on a CPU, bfloat16 on a GPU)")
    baseline: str = option(
        "laco-class", "Qwen-VL presets: the stock model served by laco's class or vLLM's", str, BASELINES
    )
    device: str = "cpu"
    serve_python: str | None = option(None, "Python of the vLLM environment (default .venv-serve)")
    seed: int = 0
    keep_models: bool = option(False, "keep the saved checkpoints for another run (kept per variant and depth)", FLAG)

    def __post_init__(self) -> None:
        self.concurrency = tuple(int(c) for c in self.concurrency)
        if not self.concurrency or min(self.concurrency) < 1 or self.rounds < 1 or self.output_tokens < 2:
            raise ValueError("--concurrency levels and --rounds must be >= 1, --output-tokens >= 2")
        if self.baseline not in BASELINES:
            raise ValueError(f"--baseline {self.baseline!r}: choose one of {BASELINES}.")

    @property
    def served_dtype(self) -> str:
        return self.dtype or ("float32" if self.device == "cpu" else "bfloat16")


def pair_of(settings: ServingSettings) -> ServedPair:
    return served_pair(settings.preset, settings.depth, settings.mode, settings.image_size, settings.device)


def variant_names(settings: ServingSettings | None = None) -> tuple[str, str]:
    return tuple(v.name for v in pair_of(settings or ServingSettings()).variants)


VARIANTS = variant_names()
"""The variants at the default settings: LaCo's first, then external."""


def metrics(settings: ServingSettings, packed: bool) -> list[tuple[str, str, str, str]]:
    """Each measurement: its key, the per-round value a row holds, its label and its FLOP cost (a rate's value
    is inverted into seconds, so every speed-up is the baseline's seconds over LaCo's)."""
    rows = [("vit", "vit_s", "ViT (s)", "vit")] if packed else []
    rows += [
        ("ttft", "ttft_s", "TTFT (s)", "prefill"),
        ("prefill", "prefill_s", "prefill, vLLM (s)", "prefill"),
        ("decode", "decode_s", "decode (s/token)", "decode"),
    ]
    return rows + [(f"rps@{c}", f"rps@{c}", f"requests/s at {c}", "request") for c in settings.concurrency]


def serving_result(
    settings: ServingSettings,
    machine: dict,
    image_tokens: int,
    prompt_tokens: int,
    samples: dict[str, Samples],
    start: RunStart | None = None,
) -> Result:
    """The result of a run: per metric, each server's per-round seconds (the rates inverted), their FLOPs."""
    pair = pair_of(settings)
    laco = pair.variants[0]
    preset = any_preset(settings.preset)
    costs = flop_costs(settings.preset, pair, settings.llm_layers, prompt_tokens, settings.output_tokens)
    measured = [m for m in metrics(settings, pair.packed) if m[1] in samples[laco.name].phases]

    def row(metric: str, cost: str, name: str) -> Row:
        values = samples[name].phases[metric]
        seconds = [1 / value for value in values] if metric.startswith("rps@") else values
        return Row(samples[name].with_seconds(seconds, {metric: values}), costs[name][cost], image_tokens)

    rows = {key: {name: row(metric, cost, name) for name in samples} for key, metric, _, cost in measured}
    runs = samples[laco.name]
    order = [sorted(samples, key=lambda n, r=r: samples[n].slots[samples[n].rounds.index(r)]) for r in runs.rounds]
    s = settings
    note = (
        f"served by vLLM ({s.served_dtype}{', eager' if s.device == 'cpu' else ''}, LLM layers: "
        f"{s.llm_layers or 'all'}), {pair.image_size} px images, {image_tokens} image + {prompt_tokens} text tokens "
        f"per request for {laco.name}; TTFT: one request alone, max_tokens 1; prefill/decode: vLLM's per-request "
        f"times; requests/s: {'/'.join(map(str, s.concurrency))} concurrent requests of {s.output_tokens} tokens; "
        f"{s.rounds} rounds after {s.warmup} warm-up (order: {', '.join('/'.join(o) for o in order)}); speed-ups are "
        "medians of per-round ratios"
    )
    if pair.packed:
        note += f"; the stock model is served by {'laco' if s.baseline == 'laco-class' else 'vLLM'}'s class"
    payload = {"image_tokens": image_tokens, "prompt_tokens": prompt_tokens, "order": order,
               "metrics": [list(m[:3]) for m in measured]}  # fmt: skip
    return Result(
        "vllm", preset, pair.variants, asdict(settings), machine, rows, {m[0]: m[2] for m in measured}, laco.name,
        preset_fields={"image_size": pair.image_size}, payload=payload, notes=[note], start=start or RunStart(),
    )  # fmt: skip


def flop_bounds(settings: ServingSettings, prompt_tokens: int) -> dict[str, float]:
    """FLOP-bound speed-ups of LaCo over its baseline, per measurement."""
    pair = pair_of(settings)
    laco, base = (flop_costs(settings.preset, pair, settings.llm_layers, prompt_tokens, settings.output_tokens)[v.name]
                  for v in pair.variants)  # fmt: skip
    return {key: base[cost] / laco[cost] for key, _, _, cost in metrics(settings, pair.packed)}


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_key(settings: ServingSettings, placement: dict[str, Any] | None) -> dict[str, Any]:
    """Everything a saved checkpoint depends on: a kept one is reused only where all of it matches."""
    pair = pair_of(settings)
    key = {"preset": str(settings.preset), "placement": placement, "llm_layers": settings.llm_layers,
           "seed": settings.seed}  # fmt: skip
    if pair.packed:
        key.update(image_size=pair.image_size, baseline=settings.baseline)
    return key


KEY_FILE = "bench_checkpoint.json"


def build_checkpoints(settings: ServingSettings, directory: Path) -> dict[str, Path]:
    """One random-weight checkpoint per variant (same seed: same weights but for the merge), in a folder named
    after the variant; one kept by ``--keep-models`` is reused only when its :func:`checkpoint_key` matches."""
    pair, paths = pair_of(settings), {}
    source = directory / "source"
    if pair.packed and not _kept(source, checkpoint_key(settings, None)):
        shutil.rmtree(source, ignore_errors=True)  # another model's source, or its tensors removed after a run
    for variant in pair.variants:
        path = directory / variant.name.replace("@", "-").replace("/", "-").replace("+", "-")
        if pair.packed and variant.name == STOCK and settings.baseline == "vllm":
            path = source  # vLLM's own class serves the unconverted checkpoint
        paths[variant.name] = path
        key = checkpoint_key(settings, variant.placement.to_dict())
        if _kept(path, key):
            continue
        job = {"preset": settings.preset, "llm_layers": settings.llm_layers, "seed": settings.seed,
               "placement": variant.placement.to_dict(), "path": str(path), "packed": pair.packed,
               "source": str(source), "image_size": pair.image_size, "baseline": settings.baseline}  # fmt: skip
        if path != source:
            shutil.rmtree(path, ignore_errors=True)  # nothing of an older build is left to be digested with it
        build_in_child(job, variant.name)
        (path / KEY_FILE).write_text(json.dumps(key, indent=1) + "\n")
        if pair.packed:
            (source / KEY_FILE).write_text(json.dumps(checkpoint_key(settings, None), indent=1) + "\n")
    return paths


def _kept(path: Path, key: dict[str, Any]) -> bool:
    if not (path / KEY_FILE).exists() or not list(path.glob("*.safetensors")):
        return False
    return json.loads((path / KEY_FILE).read_text()) == key


# ----------------------------------------------------------------------------------------------------------------
# Requests


def chat_request(model: str, url: str, max_tokens: int) -> dict[str, Any]:
    """Exactly ``max_tokens`` answer tokens per request, so every variant decodes the same amount."""
    return image_chat(model, url, PROMPT, max_tokens, min_tokens=max_tokens, ignore_eos=True)


def _send(server, payload: dict[str, Any]) -> tuple[float, int]:
    started = time.perf_counter()
    status, body = server.post("/v1/chat/completions", payload, timeout=1800)
    if status != 200:
        raise RuntimeError(f"{server.url} answered {status}: {body}")
    return time.perf_counter() - started, int(body["usage"]["completion_tokens"])


def _mean_since(server, before: str, name: str, per: float = 1.0) -> float:
    after = server.get_text("/metrics")
    (s0, c0), (s1, c1) = histogram(before, name), histogram(after, name)
    if c1 <= c0:
        raise RuntimeError(f"{server.url}/metrics recorded no {name} for the requests just sent.")
    return (s1 - s0) / (c1 - c0) / per


def measure_round(server, urls: list[str], settings: ServingSettings) -> dict[str, float]:
    """One round on one server: a lone request (TTFT, prefill), then each concurrency level's batch (requests/s;
    the first level's decode time per token)."""
    before = server.get_text("/metrics")
    row = {"ttft_s": _send(server, chat_request(server.model, urls[0], 1))[0]}
    row["prefill_s"] = _mean_since(server, before, PREFILL)
    used = 1
    for level in settings.concurrency:
        batch, used = urls[used : used + level], used + level
        before = server.get_text("/metrics")
        started = time.perf_counter()
        with ThreadPoolExecutor(level) as pool:
            counts = list(
                pool.map(lambda u: _send(server, chat_request(server.model, u, settings.output_tokens)), batch)
            )
        row[f"rps@{level}"] = level / (time.perf_counter() - started)
        if "decode_s" not in row:  # vLLM's decode time runs from the first token: output_tokens - 1 steps
            row["decode_s"] = _mean_since(server, before, DECODE, per=settings.output_tokens - 1)
        if any(count != settings.output_tokens for _, count in counts):
            raise RuntimeError(f"{server.url} answered with other than {settings.output_tokens} tokens: {counts}")
    return row


# ----------------------------------------------------------------------------------------------------------------
# The run


def run(settings: ServingSettings, out: Path, progress: bool = True) -> Result:
    from ..serve.launch import check_serving

    python = check_serving(settings.serve_python)  # fail before minutes of model building
    pair = pair_of(settings)
    if pair.packed and settings.baseline == "vllm":
        _check_torchvision(python)
    out.mkdir(parents=True, exist_ok=True)
    start = RunStart()
    try:
        paths = build_checkpoints(settings, out / "models")
        return _measure(settings, pair, paths, out, python, start, progress)
    finally:
        if not settings.keep_models:  # a failed run leaves no multi-GB checkpoints either
            for file in (out / "models").glob("*/*.safetensors"):
                file.unlink()


def _measure(
    settings: ServingSettings, pair: ServedPair, paths: dict[str, Path], out: Path, python, start, progress
) -> Result:
    import torch

    from ..measure.machine import Machine
    from ..serve.launch import vllm_server

    names = [v.name for v in pair.variants]
    machine = Machine.describe(torch.device(settings.device)).to_dict()
    machine["vllm"] = _vllm_version(python)
    towers = _time_towers(settings, pair, paths, python, progress) if pair.packed else {}
    args = [
        "--no-enable-prefix-caching",
        "--mm-processor-cache-gb",
        "0",
        "--max-num-seqs",
        str(max(settings.concurrency)),
    ]
    with ExitStack() as stack:
        servers = {}
        for name in names:  # one at a time: loading is the memory peak
            log = out / f"serve-{name.replace('/', '-')}.log"
            server = vllm_server(paths[name], python=python, name=name, extra_args=args, log=log,
                                 dtype=settings.served_dtype, eager=settings.device == "cpu")  # fmt: skip
            servers[name] = stack.enter_context(server)
        samples = _time_servers(servers, settings, pair.image_size, progress)
    for name, seconds in towers.items():
        samples[name].phases["vit_s"] = seconds
    image_tokens, prompt_tokens = _tokens(paths[names[0]], pair)
    return serving_result(settings, machine, image_tokens, prompt_tokens, samples, start)


def _time_towers(settings, pair: ServedPair, paths: dict[str, Path], python, progress: bool) -> dict[str, list[float]]:
    """Per variant, its tower's seconds per round, timed in the serving environment (no server running)."""
    from ..serve.launch import run_in_serve_env

    job = tower_timing_job(settings.preset, {n: str(p) for n, p in paths.items()}, pair.image_size,
                           settings.rounds, settings.warmup, settings.seed, settings.served_dtype)  # fmt: skip
    code = f"from laco.bench.serving_models import time_towers; time_towers({job!r})"
    if progress:
        print("timing the vision towers alone in the serving environment ...", flush=True)
    process = run_in_serve_env(["-c", code], python=python, timeout=3600)
    if process.returncode != 0:
        raise RuntimeError(f"timing the towers failed:\n{process.stderr[-4000:]}")
    towers = json.loads(process.stdout.strip().splitlines()[-1])
    if progress:
        print("  ".join(f"ViT {name} {np.median(s):.3f} s" for name, s in towers.items()), flush=True)
    return towers


def _time_servers(servers: dict[str, Any], settings: ServingSettings, size: int, progress: bool) -> dict[str, Samples]:
    """Every server once per round, interleaved; round ``r`` sends both servers the same fresh images."""
    calls: dict[str, int] = {}
    per_round = 1 + sum(settings.concurrency)

    def workload(name: str):
        def call() -> dict[str, float]:
            index = calls[name] = calls.get(name, -1) + 1
            seeds = [settings.seed * 100_000 + index * 1000 + i for i in range(per_round)]
            row = measure_round(servers[name], [random_image_url(seed, size) for seed in seeds], settings)
            if progress:
                label = "warm-up" if index < settings.warmup else f"round {index + 1 - settings.warmup}"
                print(f"{label:8s} {name:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            return row

        return call

    return run_interleaved({name: workload(name) for name in servers}, reps=settings.rounds, warmup=settings.warmup)


def _check_torchvision(python) -> None:
    from ..serve.launch import ServeUnavailable, run_in_serve_env

    if run_in_serve_env(["-c", "import torchvision"], python=python, timeout=300).returncode != 0:
        raise ServeUnavailable(
            "--baseline vllm serves the stock checkpoint with vLLM's own Qwen-VL class, which imports torchvision; "
            "the serving environment has none (vLLM's CPU build). Use --baseline laco-class (the default)."
        )


def _vllm_version(python: Path) -> str | None:
    from ..serve.launch import run_in_serve_env

    process = run_in_serve_env(["-c", "import vllm; print(vllm.__version__)"], python=python, timeout=300)
    return process.stdout.strip().splitlines()[-1] if process.returncode == 0 and process.stdout.strip() else None


def _tokens(checkpoint: Path, pair: ServedPair) -> tuple[int, int]:
    """LaCo's image tokens per request, and the text tokens around them (chat template included)."""
    from PIL import Image

    image = Image.new("RGB", (pair.image_size, pair.image_size))
    if not pair.packed:
        from ..mllm import LacoProcessor

        processor = LacoProcessor.from_pretrained(checkpoint)
        ids = processor([PROMPT], [image])["input_ids"]
        return processor.num_image_tokens, int(ids.shape[1]) - processor.num_image_tokens
    from ..convert import load_saved_processor

    processor = load_saved_processor(checkpoint)
    chat = [
        {"role": "system", "content": ""},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
    ]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0]
    image_tokens = int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    return image_tokens, len(ids) - image_tokens
