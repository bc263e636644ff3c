"""Serve laco checkpoints with vLLM: ``vllm serve runs/<run>/final`` and ``vllm.LLM(...)``.

laco ships a ``vllm.general_plugins`` entry point (``laco = "laco.serve:register"``) that vLLM calls in each of
its processes. It registers laco's model type with ``transformers`` (so vLLM can read the config) and laco's
architecture with vLLM's ``ModelRegistry`` in the lazy ``"module:Class"`` form, so nothing heavy is imported
until vLLM builds the model. It also installs laco's request checks (:mod:`laco.serve.guards`: no URL fetching
unless allowed, laco's pixel budget, 400 for bad images and for image placeholders typed without an image). See
docs/serving.md for the design and scripts/install-serve.sh for the environment.
"""

from .checkpoint import ARCHITECTURE, CheckpointError, ServeSpec, placeholder_count, read_checkpoint
from .plugin import VLLM_MODEL, register

__all__ = [
    "ARCHITECTURE",
    "VLLM_MODEL",
    "CheckpointError",
    "ServeSpec",
    "placeholder_count",
    "read_checkpoint",
    "register",
]
