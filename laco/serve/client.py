"""What a client sends a laco model served by vLLM's OpenAI API: an image chat request, the image inline as a data URL
(laco's server fetches no URLs by default), with laco's training system prompt (empty); and what a benchmark reads
back from the server's ``/metrics``."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np


def data_url(png: bytes) -> str:
    """A PNG as a base64 data URL, the way to send an image to a server that fetches nothing."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image_chat(model: str, url: str | None, text: str, max_tokens: int, **options: Any) -> dict[str, Any]:
    """A greedy ``/v1/chat/completions`` request: one user turn with the image (``url``; none: text only) before
    ``text``, after an empty system turn; ``options`` (``min_tokens``, ``ignore_eos``, ...) join the request."""
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}] if url else text
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        **options,
        "messages": [{"role": "system", "content": ""}, {"role": "user", "content": content}],
    }


PREFILL, DECODE = "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds"


def random_image_url(seed: int, size: int) -> str:
    """A PNG data URL of a random image no other request uses (so no cache can serve it)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return data_url(buffer.getvalue())


def histogram(text: str, name: str) -> tuple[float, float]:
    """``(sum, count)`` of a Prometheus histogram in ``/metrics`` text, over all its label sets."""
    totals = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        for suffix in totals:
            if line.startswith((f"{name}{suffix}{{", f"{name}{suffix} ")):
                totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals["_sum"], totals["_count"]


__all__ = ["DECODE", "PREFILL", "data_url", "histogram", "image_chat", "random_image_url"]
