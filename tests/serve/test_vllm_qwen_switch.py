"""The per-request tower switch of laco's vLLM plugin for LaCo Qwen-VL checkpoints (``keep_llm_tokens``):
``mm_processor_kwargs={"laco": false}`` sends a request's images through the stock tower, whose answers equal
transformers' *unconverted* model's; without it (or with true) through LaCo's, whose answers equal transformers'
LaCo model's; a batch mixing both gives each request its own. Refused: the stock tower of a ``compress_more``
checkpoint, and a value that is not a boolean, as errors of that request while the engine keeps answering.

One ``vllm.LLM`` per checkpoint in one serving-env process, and one ``vllm serve``, shared by the tests below
(module-scoped fixtures). Skipped, with the exact reason, where the serving environment is missing.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

import laco
from laco.serve.launch import run_in_serve_env, vllm_server

from serve.test_vllm_qwen import MAX_TOKENS, QUESTION, _chat, image_files, prompt, save_converted, transformers_answers

FAMILIES = ["qwen2.5", "qwen2", "qwen3"]
# (question, indices into image_files, the request's mm_processor_kwargs); all go to the engine in one call
# (vLLM encoded them in two embed_multimodal calls, each with both towers interleaved: seen by hand with a print)
MIXED = [
    (QUESTION, [0], {}),
    ("compare the two shapes", [1, 2], {"laco": False}),  # two images, one choice for both
    ("what is in the picture?", [3], {"laco": True}),
    (QUESTION, [0], {"laco": False}),  # request 0's image and text, the other tower: its own cache entry
    ("compare the two shapes", [1, 2], {}),
]
# the engine-wide default (LLM(mm_processor_kwargs=...), vllm serve --mm-processor-kwargs): qwen2's is the stock tower
DEFAULTS = {"qwen2.5": {}, "qwen2": {"laco": False}, "qwen3": {}}
NOT_BOOLEAN = [{"laco": "maybe"}, {"laco": "false"}, {"laco": 0}]
STOCK_REFUSED = "asks for the stock vision tower, but this checkpoint was converted in compress_more"
NOT_BOOLEAN_REFUSED = '"laco" takes true (LaCo\'s compressed vision tower, the default) or false (the stock tower)'

# Run in the serving env. An "engine" job: one vllm.LLM, the mixed requests in one generate call, then each refused
# request alone (its error recorded), then the first request again (the engine still answers). A "processor" job:
# vLLM's multimodal processor of the checkpoint alone (no engine), each case's per-image tower field and image
# hash, or its error.
RUNNER = """
import json, sys
from PIL import Image

def request(item):
    images = [Image.open(path).convert("RGB") for path in item["images"]]
    return {"prompt": item["prompt"], "multi_modal_data": {"image": images},
            "mm_processor_kwargs": item["mm_processor_kwargs"]}

def answers(llm, items, params):
    outputs = llm.generate([request(item) for item in items], params, use_tqdm=False)
    return [{"tokens": list(o.outputs[0].token_ids), "prompt": list(o.prompt_token_ids),
             "logprobs": [step[t].logprob for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]}
            for o in outputs]

def engine(job):
    from vllm import LLM, SamplingParams
    llm = LLM(model=job["model"], dtype="float32", enforce_eager=True, max_model_len=1024, max_num_seqs=8,
              seed=0, limit_mm_per_prompt={"image": 4}, mm_processor_kwargs=job["default"] or None)
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], logprobs=0)
    result = {"answers": answers(llm, job["requests"], params), "refused": []}
    for item in job["refused"]:
        try:
            answers(llm, [item], params)
            result["refused"].append(None)
        except Exception as error:
            result["refused"].append(f"{type(error).__name__}: {error}")
    result["after"] = answers(llm, job["requests"][:1], params)[0]
    del llm
    return result

def processor(job):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.plugins import load_general_plugins
    load_general_plugins()
    made = MULTIMODAL_REGISTRY.create_processor(ModelConfig(model=job["model"], dtype="float32"))
    item = request(job["requests"][0])
    images = made.info.parse_mm_data(item["multi_modal_data"])
    cases = []
    for kwargs in job["cases"]:
        try:
            out = made(item["prompt"], images, hf_processor_mm_kwargs=kwargs)
            fields = [bool(image["laco_compressed"].data) for image in out["mm_kwargs"]["image"]]
            cases.append({"compressed": fields, "hashes": out["mm_hashes"]["image"]})
        except Exception as error:
            cases.append({"error": f"{type(error).__name__}: {error}"})
    return {"cases": cases}

if __name__ == "__main__":
    jobs = json.loads(open(sys.argv[1]).read())
    results = [engine(job) if job["kind"] == "engine" else processor(job) for job in jobs]
    open(sys.argv[2], "w").write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Per family: the source checkpoint and its keep_llm_tokens conversion; qwen2.5's compress_more one too."""
    root = tmp_path_factory.mktemp("switch")
    made = {family: save_converted(root, family, "keep_llm_tokens") for family in FAMILIES}
    made["qwen2.5 compress_more"] = save_converted(root, "qwen2.5", "compress_more")
    images = image_files(root / "images")
    # image 3 as noise: on image_files' own, a plain square aligned to the merge units, both towers agree to 1e-5
    # (four equal tokens merge into one that attends as the four did), which would not tell them apart
    noise = torch.randint(0, 256, (24, 40, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(noise.numpy()).save(images[3])
    return root, made, images


def _rendered(model_dir: Path, images: list[Path], requests) -> list[tuple[str, list[Path]]]:
    processor = AutoProcessor.from_pretrained(model_dir)
    return [(prompt(processor, len(indices), text), [images[i] for i in indices]) for text, indices, _ in requests]


def _stock_reference(root: Path, family: str, converted: Path) -> Path:
    """The unconverted model (save_converted saved it as ``{family}-src``) beside the converted checkpoint's
    processor: the source's own processor class is the tests' image-only one, which AutoProcessor cannot rebuild,
    and in keep_llm_tokens the LaCo processor counts the stock placeholders. transformers_answers loads the model
    with laco.load: transformers' own class under a LaCo model_type, nothing patched, the weights
    AutoModelForImageTextToText loads (checked here)."""
    from transformers import AutoModelForImageTextToText

    source, stock_dir = root / f"{family}-src", root / f"{family}-stock"
    stock_dir.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(source / name, stock_dir / name)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(converted / name, stock_dir / name)
    stock, loaded = AutoModelForImageTextToText.from_pretrained(source), laco.load(stock_dir)
    assert isinstance(loaded, type(stock)) and not laco.is_patched(loaded)
    ours = loaded.state_dict()
    assert all(torch.equal(tensor, ours[name]) for name, tensor in stock.state_dict().items())
    return stock_dir


@pytest.fixture(scope="module")
def references(checkpoints):
    """Per family and request of MIXED: transformers' (tokens, prompt ids, log-probabilities), stock and LaCo."""
    root, made, images = checkpoints
    found = {}
    for family in FAMILIES:
        requests = _rendered(made[family], images, MIXED)
        stock = transformers_answers(_stock_reference(root, family, made[family]), requests)
        compressed = transformers_answers(made[family], requests)
        found[family] = {False: list(zip(*stock)), True: list(zip(*compressed))}
    return found


def _job(model_dir: Path, images, default: dict, requests, refused, kind: str = "engine") -> dict:
    rendered = _rendered(model_dir, images, requests)
    items = [
        {"prompt": text, "images": [str(path) for path in paths], "mm_processor_kwargs": kwargs}
        for (text, paths), (_, _, kwargs) in zip(rendered, requests)
    ]
    refusals = [{**items[0], "mm_processor_kwargs": kwargs} for kwargs in refused]
    common = {"model": str(model_dir), "kind": kind, "requests": items}
    if kind == "processor":
        return {**common, "cases": refused}
    return {**common, "default": default, "max_tokens": MAX_TOKENS, "refused": refusals}


@pytest.fixture(scope="module")
def offline(checkpoints, serving_python, tmp_path_factory):
    """What the serving env answered: per family (keep_llm_tokens) an engine's mixed batch and (qwen2.5) its
    refusals of non-booleans; vLLM's processor of qwen2.5 keep_llm_tokens and compress_more on request 1's images."""
    root, made, images = checkpoints
    jobs = [
        _job(made[family], images, DEFAULTS[family], MIXED, NOT_BOOLEAN if family == "qwen2.5" else [])
        for family in FAMILIES
    ]
    cases = [{}, {"laco": True}, {"laco": False}]
    jobs.append(_job(made["qwen2.5"], images, {}, MIXED[1:2], cases, kind="processor"))
    jobs.append(_job(made["qwen2.5 compress_more"], images, {}, MIXED[1:2], cases, kind="processor"))
    work = tmp_path_factory.mktemp("switch-offline")
    (work / "runner.py").write_text(RUNNER)
    (work / "jobs.json").write_text(json.dumps(jobs))
    command = [str(work / "runner.py"), str(work / "jobs.json"), str(work / "results.json")]
    process = run_in_serve_env(command, timeout=1500)
    assert process.returncode == 0, process.stderr[-4000:]
    names = [*FAMILIES, "qwen2.5 processor", "qwen2.5 compress_more processor"]
    return dict(zip(names, json.loads((work / "results.json").read_text())))


def _compressed(family: str, kwargs: dict) -> bool:
    return {**DEFAULTS[family], **kwargs}.get("laco", True)


def _assert_same(served: dict, reference: tuple, where: str) -> None:
    tokens, prompt_ids, logprobs = reference
    assert served["prompt"] == prompt_ids, where  # the same placeholders either way (keep_llm_tokens)
    assert served["tokens"] == tokens, f"{where}: vLLM {served['tokens']} != transformers {tokens}"
    torch.testing.assert_close(torch.tensor(served["logprobs"]), torch.tensor(logprobs), rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_mixed_batch_gives_each_request_the_answer_of_its_tower(offline, references, family):
    """One vllm.LLM.generate call holding requests for both towers (two images in one of each): a request asking
    for the stock tower has the tokens and log-probabilities of transformers' unconverted model, the others those
    of transformers' LaCo model. The log-probabilities tell the towers apart where tokens alone might not (checked:
    the two references differ for every request). qwen2's engine has the stock tower as its default."""
    for index, ((_, _, kwargs), served) in enumerate(zip(MIXED, offline[family]["answers"])):
        compressed = _compressed(family, kwargs)
        _assert_same(served, references[family][compressed][index], f"request {index}, compressed={compressed}")
        stock, laco_model = references[family][False][index][2], references[family][True][index][2]
        assert (torch.tensor(stock) - torch.tensor(laco_model)).abs().max() > 1e-3, index


@pytest.mark.slow
def test_refusals_are_errors_of_the_request_and_the_engine_keeps_answering(offline, references):
    """A "laco" that is not a JSON boolean is refused with the value as sent and what it takes; the same engine
    answers the next request as before."""
    keep = offline["qwen2.5"]
    for kwargs, refusal in zip(NOT_BOOLEAN, keep["refused"]):
        assert refusal is not None and refusal.startswith("VLLMValidationError"), (kwargs, refusal)
        assert NOT_BOOLEAN_REFUSED in refusal, refusal
        assert f'{{"laco": {json.dumps(kwargs["laco"])}}}' in refusal, refusal
    _assert_same(keep["after"], references["qwen2.5"][_compressed("qwen2.5", MIXED[0][2])][0], "after the refusals")


@pytest.mark.slow
def test_the_processor_marks_each_image_and_refuses_the_stock_tower_of_compress_more(offline):
    """vLLM's processor of the checkpoint: every image carries the request's tower, and an image sent both ways has
    two cache keys (vLLM hashes the mm_processor_kwargs with it), so neither tower's features are reused for the
    other. A compress_more checkpoint refuses the stock tower with the fix (raised where the "maybe" above is, so
    a 400 for the request); true and the default still pass."""
    default, true, false = offline["qwen2.5 processor"]["cases"]
    assert default["compressed"] == true["compressed"] == [True, True] and false["compressed"] == [False, False]
    assert not set(false["hashes"]) & set(true["hashes"]) and not set(false["hashes"]) & set(default["hashes"])
    default, true, false = offline["qwen2.5 compress_more processor"]["cases"]
    assert default["compressed"] == true["compressed"] == [True, True]
    refusal = false.get("error", "")
    assert STOCK_REFUSED in refusal and "--mode keep_llm_tokens" in refusal, false


@pytest.mark.slow
def test_vllm_serve_switches_per_request_through_the_openai_api(checkpoints, references, serving_python, tmp_path):
    """`vllm serve --trust-request-mm-kwargs` of the qwen2.5 keep_llm_tokens conversion, OpenAI chat requests sent
    concurrently, some with `"mm_processor_kwargs": {"laco": false}` (what the OpenAI client's extra_body adds to the
    body): each has its tower's prompt and greedy tokens. A value that is not a boolean is a 400 naming it; the
    server keeps answering."""
    _, made, images = checkpoints
    chats = []
    for question, indices, kwargs in MIXED:
        chat = _chat([images[i] for i in indices], question)
        chats.append({**chat, "mm_processor_kwargs": kwargs} if kwargs else chat)
    # vLLM refuses every per-request mm_processor_kwargs without --trust-request-mm-kwargs (a 400 of its own)
    options = ["--limit-mm-per-prompt", '{"image": 4}', "--trust-request-mm-kwargs"]
    with vllm_server(made["qwen2.5"], log=tmp_path / "serve.log", extra_args=options) as server:
        with ThreadPoolExecutor(len(chats)) as pool:
            answers = list(pool.map(lambda chat: server.post("/v1/chat/completions", chat), chats))
        status, body = server.post("/v1/chat/completions", {**chats[0], "mm_processor_kwargs": {"laco": "maybe"}})
        assert status == 400 and NOT_BOOLEAN_REFUSED in body["error"]["message"], body
        assert '{"laco": "maybe"}' in body["error"]["message"], body
        status, body = server.post("/v1/chat/completions", chats[0])
        expected = references["qwen2.5"][_compressed("qwen2.5", MIXED[0][2])][0][0]
        assert status == 200 and body["choices"][0]["token_ids"] == expected, body  # still answering
    for index, ((_, _, kwargs), (status, body)) in enumerate(zip(MIXED, answers)):
        tokens, prompt_ids, _ = references["qwen2.5"][_compressed("qwen2.5", kwargs)][index]
        assert status == 200, body
        assert body["prompt_token_ids"] == prompt_ids, index
        assert body["choices"][0]["token_ids"] == tokens, index
