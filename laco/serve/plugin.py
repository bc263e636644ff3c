"""The ``vllm.general_plugins`` entry point (``laco = "laco.serve:register"``, re-exported by :mod:`laco.serve`)."""

from __future__ import annotations

from .checkpoint import ARCHITECTURE

VLLM_MODEL = "laco.serve.vllm_model:LacoLlavaForVllm"
QWEN_VLLM_MODEL = "laco.serve.qwen_vllm:LacoQwenVLForVllm"
QWEN3_VLLM_MODEL = "laco.serve.qwen3_vllm:LacoQwen3VLForVllm"
QWEN_MODELS = {
    "LacoQwen2VLForConditionalGeneration": QWEN_VLLM_MODEL,
    "LacoQwen2_5_VLForConditionalGeneration": QWEN_VLLM_MODEL,
    "LacoQwen3VLForConditionalGeneration": QWEN3_VLLM_MODEL,
}
"""The architectures ``laco convert`` writes for Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints (laco.mllm.types)."""


def register() -> None:
    """The vLLM plugin: safe to call more than once (vLLM loads plugins in every process it starts)."""
    from vllm import ModelRegistry

    # register laco's configs (laco_llava, the LaCo Qwen-VL types) and processors with transformers' Auto classes
    from ..mllm import modeling, types  # noqa: F401
    from . import guards

    guards.install_defaults()
    guards.register_renderer()
    supported = ModelRegistry.get_supported_archs()
    for architecture, model in {ARCHITECTURE: VLLM_MODEL, **QWEN_MODELS}.items():
        if architecture not in supported:
            ModelRegistry.register_model(architecture, model)


__all__ = ["QWEN3_VLLM_MODEL", "QWEN_MODELS", "QWEN_VLLM_MODEL", "VLLM_MODEL", "register"]
