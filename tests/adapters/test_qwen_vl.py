"""LaCo inside Qwen2-VL, Qwen2.5-VL and Qwen3-VL vision towers (tiny random configs, see qwen_models.py).

The central check is an independent reference: run the unmodified tower to layer k, average every merge unit, then
run the later blocks the way the tower runs an image of half the resolution (transformers' own helpers for its
positions, attention segments and windows of the same image regions) and its mergers.
"""

import copy

import pytest
import torch
from qwen_models import DEPTH, PATCH, grid, packed_pixels, tiny_config, tiny_tower
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

import laco
from laco.adapters.qwen_merger import one_to_one_merger

FAMILIES = ["qwen2", "qwen2.5", "qwen3"]
MODES = ["keep_llm_tokens", "compress_more"]
LAYER = 2
# Two images of different sizes (several windows each in Qwen2.5-VL) and a 2-frame video; even merge-unit grids.
EVEN = grid((1, 12, 16), (2, 8, 8), (1, 8, 20))
# Keep mode takes any grid: 2x3 and 3x5 merge units.
ODD = grid((1, 4, 6), (2, 6, 10), (1, 12, 16))


def _half_grid_order(grid_thw):
    """The merged grid (one token per merge unit, row-major per frame) seen as an image of half the resolution:
    that image's own token order (merge-unit order) as indices into the merged tokens, and its rotary positions."""
    half = grid_thw.clone()
    half[:, 1:] //= 2
    positions = get_vision_position_ids(half, 2)
    base, width = [], []
    offset = 0
    for t, h, w in half.tolist():
        for _ in range(t):
            base.append(torch.full((h * w,), offset))
            width.append(torch.full((h * w,), w))
            offset += h * w
    return torch.cat(base) + positions[:, 0] * torch.cat(width) + positions[:, 1], positions, half


def _window_size(tower):
    return tower.config.window_size if hasattr(tower.config, "fullatt_block_indexes") else None


def reference(tower, pixels, grid_thw, mode):
    """(pooler_output, DeepStack features) of LaCo@LAYER with an untrained merge (exact average pooling)."""
    width, config = tower.blocks[0].norm1.weight.shape[0], tower.config
    captured = {}
    hook = tower.blocks[LAYER - 1].register_forward_hook(lambda m, a, out: captured.setdefault("hidden", out))
    with torch.no_grad():
        original = tower(pixels, grid_thw=grid_thw)
    hook.remove()
    units = captured["hidden"].reshape(-1, 4, width).mean(1)  # in the tower's stream order
    window = _window_size(tower)
    if window:
        units = units[torch.argsort(get_vision_window_index(grid_thw, 2, window, PATCH)[0])]
    order, positions, half = _half_grid_order(grid_thw)
    x = units[order]
    rotary = tower.rotary_pos_emb(x, positions)
    windows = torch.arange(len(x) // 4)
    if window:  # windows over the same image regions: half the pixels of the half-resolution image
        windows, cu_windows = get_vision_window_index(half, 2, window // 2, PATCH)
        rotary = tuple(r.reshape(-1, 4, r.shape[-1])[windows].reshape(-1, r.shape[-1]) for r in rotary)

    def by_windows(tokens, index):
        return tokens.reshape(-1, 4, tokens.shape[-1])[index].reshape(-1, tokens.shape[-1])

    def one_x(merger, tokens):  # keep_llm_tokens: back to one token per merge unit, row-major
        return one_to_one_merger(merger, width)(by_windows(tokens, torch.argsort(windows))[torch.argsort(order)])

    x = by_windows(x, windows)
    taps = list(getattr(tower, "deepstack_visual_indexes", []))
    deepstack = list(getattr(original, "deepstack_features", None) or [])
    with torch.no_grad():
        for index in range(LAYER, DEPTH):
            full = not window or index in config.fullatt_block_indexes
            x = tower.blocks[index](x, cu_seqlens=get_vision_cu_seqlens(half) if full else cu_windows,
                                    position_embeddings=rotary)  # fmt: skip
            if index in taps:
                merger = tower.deepstack_merger_list[taps.index(index)]
                deepstack[taps.index(index)] = one_x(merger, x) if mode == MODES[0] else merger(x)
        if mode == MODES[0]:
            return one_x(tower.merger, x), deepstack
        early = [f[order].reshape(-1, 4, f.shape[-1]).mean(1) for i, f in zip(taps, deepstack) if i < LAYER - 1]
        return tower.merger(x)[torch.argsort(windows)], early + deepstack[len(early) :]


def run(tower, pixels, grid_thw):
    with torch.no_grad():
        out = tower(pixels, grid_thw=grid_thw)
    return out.pooler_output, list(getattr(out, "deepstack_features", None) or [])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_an_independent_reference(family, mode):
    tower, pixels = tiny_tower(family), packed_pixels(EVEN)
    expected, expected_deepstack = reference(tower, pixels, EVEN, mode)
    laco.apply(tower, LAYER, mode=mode)
    pooled, deepstack = run(tower, pixels, EVEN)
    factor = 16 if mode == "compress_more" else 4
    assert pooled.shape[0] == int(EVEN.prod(-1).sum()) // factor
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    assert len(deepstack) == len(expected_deepstack)
    for got, want in zip(deepstack, expected_deepstack):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batch_equals_each_image_alone(family, mode):
    grid_thw = ODD if mode == "keep_llm_tokens" else EVEN
    tower, pixels = laco.apply(tiny_tower(family), LAYER, mode=mode, init="default"), packed_pixels(grid_thw)
    pooled, deepstack = run(tower, pixels, grid_thw)
    counts = [int(t * h * w) // (16 if mode == "compress_more" else 4) for t, h, w in grid_thw.tolist()]
    pieces = torch.split(pixels, grid_thw.prod(-1).tolist())
    alone = [run(tower, piece, grid_thw[i : i + 1]) for i, piece in enumerate(pieces)]
    torch.testing.assert_close(pooled, torch.cat([a[0] for a in alone]), rtol=1e-5, atol=1e-5)
    assert list(map(len, torch.split(pooled, counts))) == counts
    for tap, features in enumerate(deepstack):
        torch.testing.assert_close(features, torch.cat([a[1][tap] for a in alone]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_remove_restores_bit_identical_outputs(family, mode):
    tower, pixels = tiny_tower(family), packed_pixels(EVEN)
    merger, merge_size = tower.merger, tower.spatial_merge_size
    before = run(tower, pixels, EVEN)
    laco.apply(tower, LAYER, mode=mode, init="default")
    assert tower.config.laco["mode"] == mode
    assert not torch.equal(run(tower, pixels, EVEN)[0][:4], before[0][:4])
    laco.remove(tower)
    after = run(tower, pixels, EVEN)
    assert tower.merger is merger and tower.spatial_merge_size == merge_size
    assert torch.equal(after[0], before[0]) and all(map(torch.equal, after[1], before[1]))
    assert not hasattr(tower.config, "laco") and not tower.merger._forward_hooks and not tower._forward_hooks


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_eager_equals_sdpa(family, mode):
    pixels = packed_pixels(EVEN)
    eager = run(laco.apply(tiny_tower(family, "eager"), LAYER, mode=mode, init="default"), pixels, EVEN)
    sdpa = run(laco.apply(tiny_tower(family, "sdpa"), LAYER, mode=mode, init="default"), pixels, EVEN)
    torch.testing.assert_close(sdpa[0], eager[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", ["qwen2.5", "qwen3"])
def test_fast_path_equals_general_path(family, mode, monkeypatch):
    """Merge units are stacked neighbourhoods (a reshape); the row-major path through the compressor agrees."""
    tower, pixels = laco.apply(tiny_tower(family), LAYER, mode=mode, init="default"), packed_pixels(EVEN)
    fast = run(tower, pixels, EVEN)
    monkeypatch.setattr(laco.attached_compressors(tower)[0], "neighbourhood_wise", False)
    general = run(tower, pixels, EVEN)
    torch.testing.assert_close(general[0], fast[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["ldpv2", "avgpool", "tokenpacker"])
def test_other_compressors_run_inside_a_packed_tower(method):
    tower, pixels = laco.apply(tiny_tower("qwen2.5"), LAYER, method=method), packed_pixels(ODD)
    pooled, _ = run(tower, pixels, ODD)
    assert pooled.shape[0] == int(ODD.prod(-1).sum()) // 4 and torch.isfinite(pooled).all()


def test_rotary_positions_after_the_merge_are_block_indices():
    """Block k+1 receives, for each merged token, the rotary embedding of its merge unit's (i, j) on the merged grid:
    the positions the tower gives an image of half the resolution, and those the LLM's M-RoPE gives the merger's
    tokens."""
    tower = laco.apply(tiny_tower("qwen2"), LAYER)
    seen = {}
    tower.blocks[LAYER].register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    grid_thw = grid((1, 4, 6), (2, 8, 4))
    run(tower, packed_pixels(grid_thw), grid_thw)
    rows = [(i, j) for t, h, w in grid_thw.tolist() for _ in range(t) for i in range(h // 2) for j in range(w // 2)]
    expected = tower.rotary_pos_emb(torch.zeros(1), torch.tensor(rows))
    torch.testing.assert_close(seen["position_embeddings"], expected)
    assert seen["cu_seqlens"].tolist() == [0, 6, 14, 22]


@pytest.mark.parametrize("mode", MODES)
def test_window_attention_stays_inside_its_image_region(mode):
    """With every block windowed, changing the pixels of one 32 px window leaves every other window's output alone,
    as in the original tower: merges never cross windows, and each window keeps its image region."""
    config = tiny_config("qwen2.5").vision_config
    config.fullatt_block_indexes = []
    torch.manual_seed(0)
    tower = type(tiny_tower("qwen2.5"))(config).eval()
    laco.apply(tower, LAYER, mode=mode, init="default")
    grid_thw = grid((1, 16, 16))  # 2x2 windows of 8x8 patches
    pixels = packed_pixels(grid_thw)
    changed = pixels.clone()
    changed[:4] += 1.0  # the first merge unit: top-left window
    before, after = run(tower, pixels, grid_thw)[0], run(tower, changed, grid_thw)[0]
    per_side = 8 if mode == "keep_llm_tokens" else 4  # LLM tokens per side of the image, row-major
    moved = (after - before).abs().amax(-1).reshape(per_side, per_side) > 1e-6
    window = per_side // 2
    assert moved[:window, :window].all() and not moved[window:].any() and not moved[:, window:].any()


def test_one_to_one_mergers_map_an_average_as_the_four_tokens():
    """On merge units of four equal tokens, the 1x merger of their average equals the original merger."""
    tokens = torch.randn(6, 32).repeat_interleave(4, dim=0)
    for family in FAMILIES:
        tower = tiny_tower(family)
        mergers = [tower.merger, *getattr(tower, "deepstack_merger_list", [])]
        for merger in mergers:  # Qwen3-VL's DeepStack mergers normalise the concatenation
            with torch.no_grad():
                torch.testing.assert_close(one_to_one_merger(merger, 32)(tokens[::4]), merger(tokens))


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_the_merge_every_later_block_and_the_1x_merger(family):
    tower = laco.apply(tiny_tower(family).train(), LAYER, init="default")
    out = tower(packed_pixels(EVEN), grid_thw=EVEN)
    (
        out.pooler_output.square().mean() + sum(f.square().mean() for f in getattr(out, "deepstack_features", []))
    ).backward()
    one_to_one = tower.merger.laco_one_to_one  # the stock merger stays, inactive and frozen, beside its 1x copy
    assert not any(p.requires_grad for name, p in tower.merger.named_parameters() if "laco_one_to_one" not in name)
    for name, module in [("merge", laco.attached_compressors(tower)[0]), ("merger", one_to_one)]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    for index in range(LAYER, DEPTH):
        assert tower.blocks[index].attn.qkv.weight.grad.abs().sum() > 0, index


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        tower = laco.apply(tiny_tower("qwen2.5").train(), LAYER, init="default", mode="compress_more")
        if checkpointing:
            tower.gradient_checkpointing_enable()
        tower(packed_pixels(EVEN), grid_thw=EVEN).pooler_output.square().mean().backward()
        grads.append(laco.attached_compressors(tower)[0].fc1.weight.grad)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_stays_close_to_float32(family):
    """bf16 keeps 8 bits of mantissa: over 4 blocks and two mergers, outputs stay within 5% of their scale."""
    pixels = packed_pixels(EVEN)
    full = run(laco.apply(tiny_tower(family), LAYER, init="default"), pixels, EVEN)[0]
    half = run(laco.apply(tiny_tower(family).to(torch.bfloat16), LAYER, init="default"), pixels, EVEN)[0]
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()


def test_a_deep_copy_runs_its_own_hooks():
    tower = laco.apply(tiny_tower("qwen2.5"), LAYER, mode="compress_more", init="default")
    pixels = packed_pixels(EVEN)
    expected = run(tower, pixels, EVEN)[0]
    torch.testing.assert_close(run(copy.deepcopy(tower), pixels, EVEN)[0], expected)


def test_odd_merge_unit_grids_are_refused_in_compress_more_naming_the_image():
    tower = laco.apply(tiny_tower("qwen2"), LAYER, mode="compress_more")
    grid_thw = grid((1, 8, 8), (1, 4, 6))
    with pytest.raises(ValueError, match=r"image 1 has grid_thw \[1, 4, 6\], a 2x3 grid .* multiples of 16 px"):
        tower(packed_pixels(grid_thw), grid_thw=grid_thw)


@pytest.mark.parametrize(
    "grid_thw, message",
    [
        (torch.tensor([1, 8, 8]), "shape \\(images, 3\\)"),
        (torch.tensor([[1.0, 8.0, 8.0]]), "integers"),
        (grid((1, 8, 7)), "image 0 has grid_thw \\[1, 8, 7\\]"),
        (grid((1, 8, 8), (0, 4, 4)), "image 1"),
        (grid((1, 8, 12)), "describes 96 patches but the tower got 64 rows"),
    ],
)
def test_bad_grid_thw_gets_a_clear_error(grid_thw, message):
    tower = laco.apply(tiny_tower("qwen2.5"), LAYER)
    with pytest.raises(ValueError, match=message):
        tower(packed_pixels(grid((1, 8, 8))), grid_thw=grid_thw)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(factor=3), "use factor=2"), (dict(), "takes one LaCo merge")],
)
def test_unsupported_placements_are_refused(kwargs, message):
    layers = LAYER if kwargs else [1, 3]
    tower = tiny_tower("qwen3")
    with pytest.raises(ValueError, match=message):
        laco.apply(tower, layers, **kwargs)
    assert not laco.is_patched(tower)


def test_num_tokens_of_a_tower_counts_its_hidden_tokens():
    tower = tiny_tower("qwen3")
    assert laco.num_tokens(tower, (32, 48)) == 8 * 12
    laco.apply(tower, LAYER)
    assert laco.num_tokens(tower, (32, 48)) == 4 * 6
    with pytest.raises(ValueError, match="no default size"):
        laco.num_tokens(tower)
    with pytest.raises(ValueError, match="multiple of 8 px"):
        laco.num_tokens(tower, (30, 48))


def test_later_blocks_get_the_merged_segments_windows_and_flash_attention_lengths():
    tower = laco.apply(tiny_tower("qwen2.5"), LAYER)
    seen = {}
    for block in (2, 3):  # block 2 windowed, block 3 full attention
        hook = lambda m, a, kw, block=block: seen.__setitem__(block, kw)  # noqa: E731
        tower.blocks[block].register_forward_pre_hook(hook, with_kwargs=True)
    grid_thw = grid((1, 16, 12))  # 8x6 merge units: windows of 4x4 units, 4x4 / 4x2 / 4x4 / 4x2
    # FlashAttention computes max_seqlen / max_window_seqlen; passed in, they show what the blocks get then
    with torch.no_grad():
        tower(packed_pixels(grid_thw), grid_thw=grid_thw, max_seqlen=192, max_window_seqlen=64)
    assert seen[2]["cu_seqlens"].tolist() == [0, 16, 24, 40, 48] and seen[2]["max_seqlen"] == 16
    assert seen[3]["cu_seqlens"].tolist() == [0, 48] and seen[3]["max_seqlen"] == 48


def test_a_tower_saved_after_apply_reloads_with_laco_load(tmp_path):
    """Qwen2-VL's tower class is not exported by transformers; laco.load finds it from its config's module."""
    tower = laco.apply(tiny_tower("qwen2"), LAYER, init="default")
    pixels = packed_pixels(EVEN)
    expected = run(tower, pixels, EVEN)[0]
    tower.save_pretrained(tmp_path)
    reloaded = laco.load(tmp_path, attn_implementation="eager")
    assert type(reloaded) is type(tower) and laco.placement_of(reloaded) == laco.placement_of(tower)
    torch.testing.assert_close(run(reloaded, pixels, EVEN)[0], expected)


# -- the window-attention merge ("laco-window"): a merge unit is a 2x2 window, so the packed fast path takes it ------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_window_merge_runs_packed_and_equals_the_general_path(family, mode, monkeypatch):
    init = "default" if family == "qwen2.5" else "ffn_reuse"  # Qwen2.5-VL's SwiGLU MLP has no FFN reuse
    tower, pixels = (
        laco.apply(tiny_tower(family), LAYER, mode=mode, method="laco-window", init=init),
        packed_pixels(EVEN),
    )
    fast = run(tower, pixels, EVEN)
    factor = 16 if mode == "compress_more" else 4
    assert fast[0].shape[0] == int(EVEN.prod(-1).sum()) // factor and torch.isfinite(fast[0]).all()
    monkeypatch.setattr(laco.attached_compressors(tower)[0], "neighbourhood_wise", False)
    general = run(tower, pixels, EVEN)
    torch.testing.assert_close(general[0], fast[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_window_merge_packed_batch_equals_each_image_alone_and_removes_cleanly(family):
    tower, pixels = tiny_tower(family), packed_pixels(ODD)
    before = run(tower, pixels, ODD)
    laco.apply(tower, LAYER, method="laco-window", init="default")
    pooled, _ = run(tower, pixels, ODD)
    pieces = torch.split(pixels, ODD.prod(-1).tolist())
    alone = [run(tower, piece, ODD[i : i + 1])[0] for i, piece in enumerate(pieces)]
    torch.testing.assert_close(pooled, torch.cat(alone), rtol=1e-5, atol=1e-5)
    laco.remove(tower)
    assert torch.equal(run(tower, pixels, ODD)[0], before[0])


def test_window_merge_from_a_qwen_block_is_that_block_on_identical_tokens():
    """On a merge unit of 4 identical tokens t, the merge is Qwen2-VL's block on t (no rotation matters: the four
    keys are equal), written out from the block's weights."""
    tower = tiny_tower("qwen2")
    laco.apply(tower, LAYER, method="laco-window", init="ffn_reuse")
    merge, block = laco.attached_compressors(tower)[0], tower.blocks[LAYER - 1]
    tokens = torch.randn(5, merge.dim)
    with torch.no_grad():
        got = merge.merge_stacked(tokens.repeat(1, 4)[None])[0]
        value = block.attn.qkv(block.norm1(tokens))[:, 2 * merge.dim :]
        hidden = tokens + block.attn.proj(value)
        expected = hidden + block.mlp.fc2(block.mlp.act(block.mlp.fc1(block.norm2(hidden))))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_window_merge_ffn_reuse_is_refused_for_swiglu_towers():
    with pytest.raises(ValueError, match="init='ffn_reuse' needs a plain two-Linear MLP, which qwen2.5-vl"):
        laco.apply(tiny_tower("qwen2.5"), LAYER, method="laco-window", init="ffn_reuse")
