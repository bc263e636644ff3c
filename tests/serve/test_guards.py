"""What laco's vLLM plugin refuses in a request (laco.serve.guards), on a tiny random checkpoint: typed image
placeholders without an image, images over laco's pixel budget, decompression bombs, local and unreachable URLs,
each a 400 answer while the server keeps serving; media fetching off by default.

Skipped, with the exact reason, where the serving environment is missing or vLLM's CPU backend cannot run.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from laco.serve.client import data_url, image_chat
from laco.serve.launch import run_in_serve_env, vllm_server

from faults.test_records import write_huge_png
from serve.conftest import color_images, save_tiny_laco

MAX_MODEL_LEN = 512


def test_media_fetching_is_off_by_default_and_the_budget_is_lacos(serving_python):
    code = (
        "import asyncio, os\n"
        "from vllm.plugins import load_general_plugins\n"
        "load_general_plugins()\n"
        "from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY\n"
        "from vllm.multimodal.media.image import ImageMediaIO\n"
        "from vllm.renderers.registry import RENDERER_REGISTRY\n"
        "assert os.environ['VLLM_MEDIA_CONNECTOR'] == 'laco' and os.environ['VLLM_MAX_IMAGE_PIXELS'] == '50000000'\n"
        "assert RENDERER_REGISTRY.load_renderer_cls('hf').__name__ == 'LacoRenderer'\n"
        "connector = MEDIA_CONNECTOR_REGISTRY.load('laco')  # as vLLM builds it without any media option\n"
        "for url in ('https://example.com/cat.png', 'file:///etc/hostname'):\n"
        "    for load in (lambda: connector.load_from_url(url, ImageMediaIO()),\n"
        "                 lambda: asyncio.run(connector.load_from_url_async(url, ImageMediaIO()))):\n"
        "        try:\n"
        "            load()\n"
        "        except Exception as error:\n"
        "            print(type(error).__name__, error)\n"
        "        else:\n"
        "            raise AssertionError(url + ' was fetched')\n"
    )
    process = run_in_serve_env(["-c", code], timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    lines = process.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("VLLMValidationError") for line in lines), process.stdout
    assert sum("fetches no URLs" in line and "--allowed-media-domains" in line for line in lines) == 2
    assert sum("reads no local files" in line and "--allowed-local-media-path" in line for line in lines) == 2


def _chat(url: str | None, text: str) -> dict:
    return image_chat("laco", url, text, 4)


def _data_url(path: Path) -> str:
    return data_url(path.read_bytes())


def test_vllm_serve_refuses_bad_input_with_400_and_keeps_serving(tmp_path, serving_python):
    model = save_tiny_laco(tmp_path / "model", "dinov2", "1/2")
    image = color_images(tmp_path / "images")[0]
    write_huge_png(tmp_path / "81mp.png", 9_000)  # decoded per request before: memory exhaustion under load
    write_huge_png(tmp_path / "bomb.png", 20_000)  # over PIL's own bomb limit: a 500 before
    # fetching allowed from one domain, so an unreachable URL is fetched and fails; the processor cache off, as
    # docs/serving.md says (a request refused for its length left vLLM's two caches disagreeing: the next
    # request with the same image got a 500)
    extra = ["--allowed-media-domains", "127.0.0.1", "--mm-processor-cache-gb", "0"]
    with vllm_server(model, log=tmp_path / "serve.log", max_model_len=MAX_MODEL_LEN, extra_args=extra) as server:
        good = _chat(_data_url(image), "what color is the shape?")
        assert server.post("/v1/chat/completions", good)[0] == 200
        refused = {
            "typed placeholder": (_chat(None, "<image> what color is the shape?"), "brings no image"),
            "81 MP": (_chat(_data_url(tmp_path / "81mp.png"), "q"), "exceed the maximum of 50000000 pixels"),
            "bomb": (_chat(_data_url(tmp_path / "bomb.png"), "q"), "400000000 pixels"),
            "file URL": (_chat("file:///etc/hostname", "q"), "reads no local files"),
            "unreachable": (_chat("http://127.0.0.1:9/cat.png", "q"), "cannot be fetched"),
            "other domain": (_chat("http://example.invalid/cat.png", "q"), "allowed domains"),
        }
        for name, (payload, expected) in refused.items():
            status, body = server.post("/v1/chat/completions", payload)
            assert status == 400 and expected in body["error"]["message"], (name, status, body)
        answers = []
        for words in range(440, 530, 6):  # the text fits, text and image do not: refused after processing
            unique = tmp_path / f"unique-{words}.png"
            Image.new("RGB", (40, 40), (words % 256, 7, 99)).save(unique)
            too_long = server.post("/v1/chat/completions", _chat(_data_url(unique), "a " * words))[0]
            answers.append((words, too_long, server.post("/v1/chat/completions", _chat(_data_url(unique), "q"))[0]))
        assert any(too_long == 400 for _, too_long, _ in answers), answers
        assert all(after == 200 for _, _, after in answers), answers
        assert server.post("/v1/chat/completions", good)[0] == 200 and server.process.poll() is None
    assert "Placeholder count is negative" not in (tmp_path / "serve.log").read_text()
