"""The ``vllm.general_plugins`` entry point (``laco = "laco.serve:register"``, re-exported by :mod:`laco.serve`)."""

from __future__ import annotations

from .checkpoint import ARCHITECTURE

VLLM_MODEL = "laco.serve.vllm_model:LacoLlavaForVllm"


def register() -> None:
    """The vLLM plugin: safe to call more than once (vLLM loads plugins in every process it starts)."""
    from vllm import ModelRegistry

    from ..mllm import modeling  # noqa: F401  registers the "laco_llava" config with transformers' AutoConfig
    from . import guards

    guards.install_defaults()
    guards.register_renderer()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, VLLM_MODEL)


__all__ = ["VLLM_MODEL", "register"]
