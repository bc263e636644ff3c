"""Built-in and YAML presets, and their per-device defaults."""

from pathlib import Path

import pytest

from laco.bench.presets import PRESETS, load_preset, preset_from_dict

REPO = Path(__file__).resolve().parents[2]


def test_the_frontier_preset_is_the_default_mllms_tower():
    preset = load_preset(REPO / "configs" / "bench" / "frontier-dinov2-s.yaml")
    assert preset.llm is None and preset.encoder.image_size == 112 and preset.encoder.layers == 12
    assert preset.default("cpu", "measure") == ("encoder",)


def test_yaml_preset_and_builtin_presets():
    preset = load_preset(REPO / "configs" / "bench" / "internvl-0.5b.yaml")
    assert preset.encoder.name == "internvit-300m" and preset.llm.name == "qwen2-0.5b"
    assert preset.default("cpu", "llm_layers") == 6 and preset.default("cuda", "precision") == "bf16"
    assert preset.default("cpu", "measure") == ("encoder", "train", "prefill", "decode")
    assert PRESETS["llava-ov-0.5b"].encoder.layers == 27 and PRESETS["llava-ov-0.5b"].llm.name == "qwen2-0.5b"
    assert PRESETS["llava-ov-7b"].llm.width == 3584
    assert PRESETS["siglip-so400m"].default("cpu", "measure") == ("encoder",)
    for name in ("siglip-l16", "internvit-300m", "dinov2-s"):
        assert PRESETS[name].llm is None
    inline = preset_from_dict(
        {"encoder": {"name": "mine", "family": "siglip", "width": 64, "layers": 4, "heads": 4, "mlp": 128, "patch": 4, "image_size": 32},
         "llm": "qwen2-0.5b", "defaults": {"cpu": {"measure": "encoder, prefill"}}},
        name="inline",
    )  # fmt: skip
    assert inline.encoder.grid() == (8, 8) and inline.default("cpu", "measure") == ("encoder", "prefill")
    with pytest.raises(ValueError, match="unknown EncoderGeometry field"):
        preset_from_dict({"encoder": {"name": "x", "depth": 3}})
