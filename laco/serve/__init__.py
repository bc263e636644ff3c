"""Serve laco checkpoints with vLLM: ``vllm serve runs/<run>/final`` and ``vllm.LLM(...)``.

laco ships a ``vllm.general_plugins`` entry point (``laco = "laco.serve:register"``) that vLLM calls in each of
its processes. It registers laco's model type with ``transformers`` (so vLLM can read the config) and laco's
architecture with vLLM's ``ModelRegistry`` in the lazy ``"module:Class"`` form, so nothing heavy is imported
until vLLM builds the model. It also installs laco's request checks (:mod:`laco.serve.guards`: no URL fetching
unless allowed, laco's pixel budget, 400 for bad images and for image placeholders typed without an image). See
docs/serving.md for the design and scripts/install-serve.sh for the environment.
"""

from __future__ import annotations

from .checkpoint import ARCHITECTURE, CheckpointError, ServeSpec, placeholder_count, read_checkpoint

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


__all__ = [
    "ARCHITECTURE",
    "VLLM_MODEL",
    "CheckpointError",
    "ServeSpec",
    "placeholder_count",
    "read_checkpoint",
    "register",
]
