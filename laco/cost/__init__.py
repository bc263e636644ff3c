"""Analytic FLOP model of MLLMs whose vision encoder may be compressed at any depth (pure arithmetic on geometry).

* :mod:`laco.cost.geometry`: encoder and LLM geometries, and the public configs by name;
* :mod:`laco.cost.flops`: batched ViTs (LLaVA-style): encoder, compressor, projector, LLM, training multipliers,
  predicted speed-ups, activation memory;
* :mod:`laco.cost.native`: packed native-resolution towers (Qwen2/2.5/3-VL: window attention, mergers).

Every count follows ``torch.utils.flop_counter.FlopCounterMode``'s convention, so the model and a counted run
can be compared; :mod:`laco.cost.flops` explains it.
"""

from .flops import (
    ATTENTION_TRAIN_MULTIPLIER,
    INPUT_LAYER_TRAIN_MULTIPLIER,
    MODES,
    TRAIN_MULTIPLIER,
    Cost,
    compressor_flops,
    encoder_flops,
    encoder_layer_flops,
    image_tokens,
    llm_flops,
    mllm_flops,
    predicted_speedup,
    training_activation_bytes,
)
from .geometry import ENCODERS, LLMS, EncoderGeometry, LLMGeometry, encoder_geometry, llm_geometry
from .native import PACKED_ENCODERS, PACKED_LLMS, PackedEncoderGeometry, packed_encoder_flops, packed_mllm_flops

__all__ = [
    "ATTENTION_TRAIN_MULTIPLIER",
    "ENCODERS",
    "INPUT_LAYER_TRAIN_MULTIPLIER",
    "LLMS",
    "MODES",
    "PACKED_ENCODERS",
    "PACKED_LLMS",
    "TRAIN_MULTIPLIER",
    "Cost",
    "EncoderGeometry",
    "LLMGeometry",
    "PackedEncoderGeometry",
    "compressor_flops",
    "encoder_flops",
    "encoder_geometry",
    "encoder_layer_flops",
    "image_tokens",
    "llm_flops",
    "llm_geometry",
    "mllm_flops",
    "packed_encoder_flops",
    "packed_mllm_flops",
    "predicted_speedup",
    "training_activation_bytes",
]
