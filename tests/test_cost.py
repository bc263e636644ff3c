"""laco.cost against FLOPs counted by torch's FlopCounterMode on tiny random models, and speed-up bound sanity."""

import pytest
import torch

import laco
from laco import Placement, cost
from laco.bench.models import CompressionSwitch, random_encoder, random_mllm
from laco.compressors import build
from laco.cost import EncoderGeometry, LLMGeometry
from laco.measure.flop_counting import flop_counter_mode
from laco.mllm import IGNORE_INDEX
from laco.mllm.loss import answer_loss

CPU = torch.device("cpu")
TOLERANCE = 0.02  # relative; what is left is element-wise work the counter ignores (pooling sums)

# Tiny geometries of every family: odd grids (9x9), CLS tokens, SwiGLU, a width that is not a power of two.
ENCODERS = {
    "siglip": EncoderGeometry("t-siglip", "siglip", 48, 6, 4, 96, 4, 36),
    "dinov2": EncoderGeometry("t-dinov2", "dinov2", 48, 6, 4, 192, 4, 32, prefix=1),
    "internvit": EncoderGeometry("t-internvit", "internvit", 48, 6, 4, 96, 4, 40, prefix=1),
    "aimv2": EncoderGeometry("t-aimv2", "aimv2", 48, 6, 4, 80, 4, 32, mlp_kind="swiglu"),
    "clip": EncoderGeometry("t-clip", "clip", 48, 6, 4, 96, 4, 28, prefix=1),
}
LLM = LLMGeometry("t-qwen2", 64, 2, 4, 2, 112, 300, tied=True)
LLM_UNTIED = LLMGeometry("t-qwen2-untied", 64, 2, 8, 2, 112, 300, tied=False)

PLACEMENTS = [
    None,  # no compression
    "external",
    2,
    "1/2",
    [1, 3],  # two-stage
]


def counted(fn) -> float:
    with flop_counter_mode() as counter:
        fn()
    return float(counter.get_total_flops())


def assert_close(counted_flops: float, predicted: float) -> None:
    assert predicted > 0
    assert abs(counted_flops / predicted - 1) < TOLERANCE, (counted_flops, predicted)


@pytest.mark.parametrize("family", sorted(ENCODERS))
@pytest.mark.parametrize("spec", PLACEMENTS, ids=str)
def test_encoder_forward_flops_match_counter(family, spec):
    geometry = ENCODERS[family]
    model = random_encoder(geometry, dtype=torch.float32, device=CPU)
    placement = Placement(spec).resolve(geometry.layers)
    CompressionSwitch(model).activate(placement)
    pixels = torch.randn(2, 3, geometry.image_size, geometry.image_size)
    with torch.no_grad():
        flops = counted(lambda: model(pixel_values=pixels))
    predicted = cost.encoder_flops(geometry, placement, images=2)
    assert_close(flops, predicted.total)
    assert predicted.info["output_tokens"] == laco.num_tokens(model)


@pytest.mark.parametrize("method", laco.compressors.available())
def test_every_compressor_inside_the_encoder(method):
    geometry = ENCODERS["siglip"]  # 9x9: the padded-border path of every method
    model = random_encoder(geometry, dtype=torch.float32, device=CPU)
    CompressionSwitch(model).activate(Placement((2,), method))
    pixels = torch.randn(1, 3, 36, 36)
    with torch.no_grad():
        flops = counted(lambda: model(pixel_values=pixels))
    assert_close(flops, cost.encoder_flops(geometry, 2, method=method).total)


def test_encoder_training_flops_match_counter():
    geometry = ENCODERS["dinov2"]
    model = random_encoder(geometry, dtype=torch.float32, device=CPU).train()
    CompressionSwitch(model).activate(Placement([1, 3]).resolve(geometry.layers))
    pixels = torch.randn(1, 3, 32, 32)
    flops = counted(lambda: model(pixel_values=pixels).last_hidden_state.square().mean().backward())
    assert_close(flops, cost.encoder_flops(geometry, [1, 3]).training().total)


def test_compressor_flops_come_from_the_compressors():
    for method in laco.compressors.available():
        module = build(method, 96, 2)
        assert cost.compressor_flops(method, 96, (9, 7)) == module.flops((9, 7))
    assert cost.compressor_flops("laco", 96, (8, 8), factor=4, images=3) == build("laco", 96, 4).flops((8, 8), batch=3)


@pytest.fixture(scope="module", params=["siglip", "internvit"])
def mllm(request):
    encoder = ENCODERS[request.param]
    llm = LLM if request.param == "siglip" else LLM_UNTIED
    model = random_mllm(encoder, llm, dtype=torch.float32, device=CPU)
    return encoder, llm, model


def _inputs(model, encoder, llm, text: int, batch: int = 2):
    image = model.num_image_tokens(encoder.image_size)
    ids = torch.cat([torch.full((batch, image), llm.vocab - 1), torch.randint(0, llm.vocab - 1, (batch, text))], 1)
    return ids, torch.randn(batch, 3, encoder.image_size, encoder.image_size)


@pytest.mark.parametrize("spec", [None, "external", "1/2", [1, 3]], ids=str)
def test_mllm_train_prefill_decode_flops_match_counter(mllm, spec):
    from transformers import DynamicCache

    encoder, llm, model = mllm
    placement = Placement(spec).resolve(encoder.layers)
    CompressionSwitch(model).activate(placement)
    prompt, answer = 5, 3
    kwargs = dict(images=2, prompt_tokens=prompt, answer_tokens=answer)

    ids, pixels = _inputs(model, encoder, llm, prompt + answer)
    labels = ids.clone()
    labels[:, : ids.shape[1] - answer] = IGNORE_INDEX  # the loss projects the answer tokens only
    model.train()
    batch = {"input_ids": ids, "pixel_values": pixels, "labels": labels}
    train = counted(lambda: answer_loss(model, batch)[0].backward())
    model.zero_grad(set_to_none=True)
    assert_close(train, cost.mllm_flops(encoder, llm, placement, mode="train", **kwargs).total)

    model.eval()
    ids, pixels = _inputs(model, encoder, llm, prompt)
    cache = DynamicCache(config=model.config.text_config)
    with torch.inference_mode():
        prefill = counted(
            lambda: model(input_ids=ids, pixel_values=pixels, cache=cache, use_cache=True, logits_to_keep=1)
        )
        assert_close(prefill, cost.mllm_flops(encoder, llm, placement, mode="prefill", **kwargs).total)

        def decode():
            token = ids[:, -1:]
            for _ in range(answer):
                token = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)

        assert_close(counted(decode), cost.mllm_flops(encoder, llm, placement, mode="decode", **kwargs).total)
    assert cost.mllm_flops(encoder, llm, placement, mode="train").info["image_tokens"] == model.num_image_tokens()


def test_layer_formula_at_the_so400m_geometry():
    dense, attention = cost.encoder_layer_flops(729, 1152, 4304)
    assert dense == 2 * 729 * (4 * 1152**2 + 2 * 1152 * 4304)
    assert attention == 4 * 729**2 * 1152
    swiglu_dense, _ = cost.encoder_layer_flops(256, 1024, 2816, "swiglu")
    assert swiglu_dense == 2 * 256 * (4 * 1024**2 + 3 * 1024 * 2816)


def test_llm_cost_is_gqa_aware():
    qwen = cost.LLMS["qwen2-0.5b"]  # 14 heads of 64, 2 KV heads
    one = cost.llm_flops(qwen.with_layers(1), 10, logits=0)
    assert one.parts["llm.layers"] == 2 * 10 * (2 * 896 * 896 + 2 * 896 * 128) + 2 * 10 * 3 * 896 * 4864
    assert one.parts["llm.attention"] == 4 * 10 * 10 * 896
    assert cost.llm_flops(qwen, 1, context=500).parts["llm.attention"] == 24 * 4 * 500 * 896


def test_placements_resolve_like_laco_apply():
    so400m = cost.ENCODERS["siglip-so400m"]
    assert Placement("1/4").resolve(27).layers == (7,)
    assert Placement("external").resolve(27).layers == (27,)
    assert Placement(None).resolve(27).layers == ()
    assert Placement(["1/4", "1/2"]).resolve(27).layers == (7, 14)
    assert cost.encoder_flops(so400m, "1/4").info["output_grid"] == (14, 14)
    assert cost.encoder_flops(so400m, ["1/4", "1/2"]).info["output_grid"] == (7, 7)
    internvit = cost.ENCODERS["internvit-300m"]
    tokens = cost.mllm_flops(internvit, cost.LLMS["qwen2-0.5b"], "1/4", mode="prefill").info["image_tokens"]
    assert tokens == 256  # 32x32 -> 16x16; LLaVA's default strategy drops the CLS token
    with pytest.raises(ValueError, match="out of range"):
        Placement(28).resolve(27)


def test_speedup_bound_sanity():
    so400m, qwen = cost.ENCODERS["siglip-so400m"], cost.LLMS["qwen2-0.5b"]
    # External compression is the same placement as LaCo after the last layer.
    assert cost.predicted_speedup(so400m, qwen, 27, "external") == pytest.approx(1.0)
    # Earlier is cheaper, and every internal placement beats external.
    for mode in ("encoder", "train", "prefill"):
        bounds = [cost.predicted_speedup(so400m, qwen, k, mode=mode) for k in range(1, 28)]
        assert all(a > b for a, b in zip(bounds, bounds[1:]))
        assert bounds[-1] == pytest.approx(1.0) and bounds[0] > 2
    # The LLM sees the same tokens, so the encoder-only gain is the largest and decoding gains nothing.
    encoder_only = cost.predicted_speedup(so400m, None, "1/4")
    assert encoder_only > cost.predicted_speedup(so400m, qwen, "1/4", mode="prefill") > 1.5
    assert cost.predicted_speedup(so400m, qwen, "1/4", mode="decode") == pytest.approx(1.0)
    # No compression costs more than external (4x more visual tokens in the LLM).
    assert cost.predicted_speedup(so400m, qwen, None, "external", mode="train") < 1
    # Two stages (16x) against external 16x.
    two_stage = cost.predicted_speedup(so400m, qwen, ["1/4", "1/2"], Placement((27,), factor=4), mode="train")
    assert two_stage > cost.predicted_speedup(so400m, qwen, "1/4", mode="train")
    # Training: dense 3x, attention 3.5x, patch embedding 2x.
    forward = cost.encoder_flops(so400m, "1/4")
    train = forward.training()
    assert train.parts["encoder.layers"] == 3 * forward.parts["encoder.layers"]
    assert train.parts["encoder.attention"] == 3.5 * forward.parts["encoder.attention"]
    assert train.parts["encoder.patch_embed"] == 2 * forward.parts["encoder.patch_embed"]


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="choose one of"):
        cost.encoder_geometry("vit-huge")
    with pytest.raises(ValueError, match="mode"):
        cost.mllm_flops(cost.ENCODERS["dinov2-s"], LLM, mode="inference")
    with pytest.raises(ValueError, match="needs an LLM"):
        cost.predicted_speedup(cost.ENCODERS["dinov2-s"], None, "1/4", mode="train")
