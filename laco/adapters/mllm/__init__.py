"""Whole-model adapters for the MLLMs people already have: one file per family, each registered on import.

``laco.apply(mllm, layer, processor=...)`` goes through them (see :mod:`laco.adapters.model`); ``docs/retrofit.md``
describes what each changes in the model, its config and its processor.
"""

from .base import MllmAdapter
from .gemma3 import Gemma3Adapter
from .idefics3 import Idefics3Adapter, SmolVLMAdapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter, LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen_vl import QwenVLModelAdapter

__all__ = [
    "Gemma3Adapter",
    "Idefics3Adapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "MllmAdapter",
    "QwenVLModelAdapter",
    "SmolVLMAdapter",
]
