"""What a client sends a laco model served by vLLM's OpenAI API: an image chat request, the image inline as a data URL
(laco's server fetches no URLs by default), with laco's training system prompt (empty)."""

from __future__ import annotations

import base64
from typing import Any


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


__all__ = ["data_url", "image_chat"]
