"""What laco's vLLM plugin checks in each request before anything is fetched, decoded or run (vLLM processes only).

vLLM's defaults serve a trusted client: it fetches any ``http(s)`` URL a request names, its pixel limit is 179
megapixels, a decompression bomb or an unreachable URL ends as a 500 error, and a text-only request whose text
types the image placeholder (``<image>``) reaches the LLM with the raw placeholder embedding in it. For a laco
checkpoint the plugin (:func:`laco.serve.register`) installs two vLLM extensions from this module:

* :class:`LacoMediaConnector`, vLLM's media connector under the name ``laco`` (selected through
  ``VLLM_MEDIA_CONNECTOR``, unless the user set it): ``http(s)`` URLs are fetched only from the domains the server
  was started with (``--allowed-media-domains``), ``file://`` URLs only under ``--allowed-local-media-path``;
  anything else, a fetch that fails and an image PIL refuses as a decompression bomb are a 400 error naming the
  URL. laco's pixel budget (:data:`laco.data.images.DEFAULT_MAX_IMAGE_PIXELS`, 50 megapixels) becomes vLLM's
  ``VLLM_MAX_IMAGE_PIXELS`` unless set, so an oversized image is refused from its header, before decoding.
* :class:`LacoRenderer`, vLLM's ``hf`` renderer with one check added for laco checkpoints: a prompt without
  images that contains the image token (typed as text) is a 400 error. Other models render exactly as before.

And one check the LaCo Qwen-VL processing (:mod:`laco.serve.qwen_processing`) runs on each request's images:
:func:`compressed_tower_requested` reads ``mm_processor_kwargs`` ``{"laco": false}`` (the stock tower) and refuses
with a 400 a value that is not a boolean, or the stock tower where the checkpoint cannot fall back to it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import aiohttp
from PIL import Image
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.renderers.hf import HfRenderer

from ..data.images import DEFAULT_MAX_IMAGE_PIXELS
from .checkpoint import MODEL_TYPE

CONNECTOR = "laco"
_FETCH_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, OSError)


def install_defaults() -> None:
    """laco's request limits as vLLM's defaults in this process; a value the user set is kept."""
    os.environ.setdefault("VLLM_MEDIA_CONNECTOR", CONNECTOR)
    os.environ.setdefault("VLLM_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_IMAGE_PIXELS))
    try:
        budget = int(os.environ["VLLM_MAX_IMAGE_PIXELS"])
    except ValueError:
        budget = 0
    if budget > 0:
        # PIL refuses images over twice its own limit with an error vLLM does not catch (a 500); vLLM checks the
        # budget from the same header before decoding and refuses with a 400, so PIL's check is left to it
        Image.MAX_IMAGE_PIXELS = None


def _refusal(url: str, why: str) -> VLLMValidationError:
    shown = url if len(url) <= 80 else url[:77] + "..."
    return VLLMValidationError(f"image {shown!r}: {why}", parameter="image_url", value=shown)


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR)
class LacoMediaConnector(MediaConnector):
    """vLLM's connector, fetching only what the server allows and answering a bad image or URL with a 400."""

    def _check_allowed(self, url: str) -> None:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme in ("http", "https") and not self.allowed_media_domains:
            raise _refusal(
                url,
                "this server fetches no URLs (laco's default); send the image inline as a base64 data URL, or start "
                "the server with --allowed-media-domains DOMAIN [DOMAIN ...] to fetch from those domains.",
            )
        if scheme == "file" and self.allowed_local_media_path is None:
            raise _refusal(
                url,
                "this server reads no local files; send the image as a base64 data URL, or start it with "
                "--allowed-local-media-path DIR to read files under DIR.",
            )

    def load_from_url(self, url: str, media_io, *, fetch_timeout: int | None = None):
        self._check_allowed(url)
        try:
            return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)
        except Image.DecompressionBombError as error:
            raise _refusal(url, f"{error}") from None
        except _FETCH_FAILURES as error:
            raise _refusal(url, f"cannot be fetched ({type(error).__name__}: {error}).") from None

    async def load_from_url_async(self, url: str, media_io, *, fetch_timeout: int | None = None):
        self._check_allowed(url)
        try:
            return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
        except Image.DecompressionBombError as error:
            raise _refusal(url, f"{error}") from None
        except _FETCH_FAILURES as error:
            raise _refusal(url, f"cannot be fetched ({type(error).__name__}: {error}).") from None


class LacoRenderer(HfRenderer):
    """vLLM's ``hf`` renderer, refusing an image placeholder typed into a prompt that brings no image."""

    @cached_property
    def _laco_image_token(self) -> int | None:
        config = self.model_config.hf_config
        model_type = getattr(config, "model_type", None)
        if model_type == MODEL_TYPE:
            return int(config.image_token_index)
        if model_type in QWEN_MODEL_TYPES:  # laco's Qwen-VL plugin (laco.serve.qwen_vllm)
            return int(config.image_token_id)
        return None

    def _check_placeholders(self, prompt) -> None:
        token = self._laco_image_token
        if token is None or prompt.get("multi_modal_data"):
            return  # with images, vLLM's own count check applies
        if token in prompt.get("prompt_token_ids", ()):
            raise VLLMValidationError(
                "the prompt contains the image placeholder but the request brings no image; remove the placeholder "
                "text ('<image>', '<|image_pad|>'), or send the image with it (an image_url content part).",
                parameter="messages",
            )

    def _process_tokens(self, prompt, **kwargs):
        self._check_placeholders(prompt)
        return super()._process_tokens(prompt, **kwargs)

    async def _process_tokens_async(self, prompt, **kwargs):
        self._check_placeholders(prompt)
        return await super()._process_tokens_async(prompt, **kwargs)


QWEN_MODEL_TYPES = ("laco_qwen2_vl", "laco_qwen2_5_vl", "laco_qwen3_vl")
"""The LaCo Qwen-VL model types laco's vLLM plugin serves."""


def register_renderer() -> None:
    """Make :class:`LacoRenderer` vLLM's ``hf`` renderer (it renders every other model as its parent does)."""
    from vllm.renderers.registry import RENDERER_REGISTRY

    # the registry's own register() logs an "overwritten" warning in every process; the entry is the same
    RENDERER_REGISTRY.renderers["hf"] = (__name__, LacoRenderer.__name__)


TOWER_KWARG = "laco"
"""The ``mm_processor_kwargs`` key that picks a LaCo Qwen-VL request's vision tower: true (the default) for the
checkpoint's LaCo tower, false for the stock tower."""


def compressed_tower_requested(mm_kwargs: Mapping[str, Any], stock_tower_fits: bool) -> bool:
    """Whether a request's images go through the checkpoint's LaCo tower (``mm_processor_kwargs`` ``"laco"``,
    default true) or the stock one (false); ``stock_tower_fits``: the LLM's placeholders are the stock tower's count
    (keep_llm_tokens and uncompressed checkpoints, where LaCo's factor leaves the LLM's tokens as they were).

    The stock tower is refused where the LLM's placeholders were counted for the compressed one (``compress_more``
    gives the LLM 4x fewer tokens than the stock tower makes); anything but a JSON boolean is refused too, rather
    than guessed (``"false"`` is a string, and truthy)."""
    value = mm_kwargs.get(TOWER_KWARG, True)
    if not isinstance(value, bool):
        shown = json.dumps(value, default=repr)  # as the client wrote it: "false" (a string) is not false
        raise VLLMValidationError(
            f'mm_processor_kwargs {{"{TOWER_KWARG}": {shown}}}: "{TOWER_KWARG}" takes true (LaCo\'s compressed '
            "vision tower, the default) or false (the stock tower), as a JSON boolean.",
            parameter=f"mm_processor_kwargs.{TOWER_KWARG}",
            value=shown,
        )
    if not value and not stock_tower_fits:
        raise VLLMValidationError(
            f'mm_processor_kwargs {{"{TOWER_KWARG}": false}} asks for the stock vision tower, but this checkpoint was '
            "converted in compress_more: its LLM takes 4x fewer tokens per image than the stock tower makes, so its "
            f'images cannot go through the stock tower. Leave "{TOWER_KWARG}" out (or send true), or serve a '
            "keep_llm_tokens conversion (laco convert SRC DST --mode keep_llm_tokens), which keeps the stock merger "
            "and the stock token count, so it can switch per request.",
            parameter=f"mm_processor_kwargs.{TOWER_KWARG}",
            value="false",
        )
    return value
