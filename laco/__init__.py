"""laco: compress visual tokens inside the vision encoder of multimodal LLMs (LaCo), and measure what it buys.

>>> import laco
>>> laco.apply(vision_model, layer="1/4")      # LaCo's patch merge after a quarter of the layers
>>> laco.num_tokens(vision_model)              # tokens per image, for sizing image placeholders
>>> laco.remove(vision_model)                  # back to the original, bit for bit
>>> laco.apply(mllm, "1/4", processor=processor)  # a whole LLaVA / InternVL / Idefics3 / Gemma3 ... and its processor
>>> laco.convert("llava-dir", "laco-dir", "1/4")  # a LaCo checkpoint that AutoModelForImageTextToText reloads
"""

from . import compressors, functional
from .compressors import PatchMerge, TokenCompressor, build
from .convert import convert
from .loading import load
from .mllm import types as _types  # noqa: F401  (registers the LaCo model types with the Auto classes)
from .patch import (
    apply,
    apply_from_config,
    is_patched,
    num_tokens,
    output_grid,
    placement_of,
    remove,
)
from .patch import compressors as attached_compressors
from .placement import Placement, resolve_layers

__version__ = "0.1.0"

__all__ = [
    "PatchMerge",
    "Placement",
    "TokenCompressor",
    "apply",
    "apply_from_config",
    "attached_compressors",
    "build",
    "compressors",
    "convert",
    "functional",
    "is_patched",
    "load",
    "num_tokens",
    "output_grid",
    "placement_of",
    "remove",
    "resolve_layers",
]
