"""laco.cost.native against FLOPs counted by torch's FlopCounterMode on the tiny Qwen-VL towers (packed images of
different sizes, a video, windows, DeepStack taps before and after the merge)."""

import pytest
import torch
from qwen_models import grid, packed_pixels, tiny_tower

import laco
from laco.cost.native import PACKED_ENCODERS, PackedEncoderGeometry, packed_encoder_flops, packed_mllm_flops
from laco.measure.flop_counting import flop_counter_mode

TINY = {
    "qwen2": PackedEncoderGeometry("t-qwen2", "qwen2-vl", 32, 4, 4, 64, 32, patch=4),
    "qwen2.5": PackedEncoderGeometry(
        "t-qwen2.5", "qwen2.5-vl", 32, 4, 4, 48, 32, patch=4, mlp_kind="swiglu", window=32, full_blocks=(1, 3)
    ),
    "qwen3": PackedEncoderGeometry("t-qwen3", "qwen3-vl", 32, 4, 4, 48, 32, patch=4, deepstack=(0, 2)),
}
GRID = grid((1, 12, 16), (2, 8, 8), (1, 8, 20))
CASES = [(None, "keep_llm_tokens"), (1, "keep_llm_tokens"), (2, "keep_llm_tokens"), (2, "compress_more")]
CASES += [(3, "compress_more"), (4, "compress_more")]


@pytest.mark.parametrize("layer, mode", CASES)
@pytest.mark.parametrize("family", sorted(TINY))
def test_packed_tower_flops_match_the_counter(family, layer, mode):
    tower, pixels = tiny_tower(family, "sdpa"), packed_pixels(GRID)
    if layer is not None:
        laco.apply(tower, layer, mode=mode)
    with flop_counter_mode() as counter, torch.no_grad():
        out = tower(pixels, grid_thw=GRID)
    predicted = packed_encoder_flops(TINY[family], layer, images=GRID.tolist(), mode=mode)
    assert abs(counter.get_total_flops() / predicted.total - 1) < 0.01, (counter.get_total_flops(), predicted.parts)
    assert sum(predicted.info["llm_tokens"]) == out.pooler_output.shape[0]


def test_window_attention_is_counted_per_window_and_the_merge_keeps_the_windows():
    geometry = PACKED_ENCODERS["qwen2.5-vl-7b"]
    base = packed_encoder_flops(geometry, images=[(1344, 1344)])
    keep = packed_encoder_flops(geometry, "1/4", images=[(1344, 1344)])
    # 96x96 patches: 12x12 windows of 8x8 patches in 28 windowed blocks, the whole frame in 4 full blocks
    windowed, full = 28 * 144 * 4 * 64**2 * 1280, 4 * 4 * 9216**2 * 1280
    assert base.parts["encoder.attention"] == windowed + full
    # LaCo@1/4 = after block 8 (0-based 7, a full block): 7 windowed + 1 full before; 21 windowed + 3 full after, on
    # windows of 16 tokens and frames of 2304
    before = 7 * 144 * 4 * 64**2 * 1280 + 4 * 9216**2 * 1280
    assert keep.parts["encoder.attention"] == before + 21 * 144 * 4 * 16**2 * 1280 + 3 * 4 * 2304**2 * 1280
    assert keep.info["llm_tokens"] == base.info["llm_tokens"] == (2304,)


def test_compress_more_gives_the_llm_16x_fewer_tokens_and_a_cheaper_prefill():
    geometry, images = PACKED_ENCODERS["qwen2.5-vl-7b"], [(448, 448), (896, 672)]
    keep = packed_mllm_flops(geometry, layers="1/4", images=images)
    more = packed_mllm_flops(geometry, layers="1/4", images=images, mode="compress_more")
    assert keep.info["llm_tokens"] == (256, 768) and more.info["llm_tokens"] == (64, 192)
    assert more.parts["llm.layers"] < keep.parts["llm.layers"] / 3
    with pytest.raises(ValueError, match="multiple of 28 px"):
        packed_encoder_flops(geometry, images=[(448, 450)])
