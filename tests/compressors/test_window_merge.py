"""The window-attention merge ("laco-window") and the FFN-reuse init ("ffn_reuse"): exact from the block they follow,
trainable, bf16, odd grids, cost; and what each init does to the norm of the merged tokens."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import laco
from laco import functional as F
from laco.compressors import build

from tiny_models import PATCH, pixels, tiny_encoder

EXACT = ["siglip", "clip", "dinov2", "internvit"]  # plain two-Linear MLPs and plain attention
BLOCKS = {"dinov2": "encoder.layer", "internvit": "encoder.layer"}


def _block(model, index):
    return model.get_submodule(BLOCKS.get(_family(model), "encoder.layers"))[index]


def _family(model):
    return {"Dinov2Model": "dinov2", "InternVLVisionModel": "internvit"}.get(type(model).__name__, "other")


def _merge_after_block(family, method, layer=2, **options):
    """A merge built by laco.apply after ``layer`` of a tiny encoder whose layer scales are not 1 (so folding them
    matters), and that block."""
    model = tiny_encoder(family, **({"layerscale_value": 0.5} if family == "dinov2" else {}))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lambda" in name:  # layer-scale gammas: distinct per channel
                parameter.uniform_(0.2, 1.5)
    laco.apply(model, layer, method=method, **options)
    merge = laco.attached_compressors(model)[0]
    laco.remove(model)  # the block alone, for references (the merge keeps the weights it copied)
    return merge, _block(model, layer - 1)


def _run_block(block, tokens):
    import inspect

    takes_mask = "attention_mask" in inspect.signature(block.forward).parameters
    out = block(tokens, None) if takes_mask else block(tokens)
    return out[0] if isinstance(out, tuple) else out


def _windows(x, size):
    """(B, H*W, C) -> (B * windows, 4, C): each 2x2 window as its own sequence, in the merge's slot order."""
    stacked, _ = F.space_to_channel(x, size, 2)
    return stacked.reshape(-1, 4, x.shape[-1])


@pytest.mark.parametrize("family", EXACT)
def test_window_merge_from_a_block_is_that_block_on_each_window(family):
    """Reference: the encoder's own block run on each 2x2 window as a 4-token sequence, its outputs averaged."""
    merge, block = _merge_after_block(family, "laco-window", init="ffn_reuse")
    x = torch.randn(2, 6 * 8, merge.dim)
    y, size = merge(x, (6, 8))
    with torch.no_grad():
        reference = _run_block(block, _windows(x, (6, 8))).mean(dim=1).reshape(2, -1, merge.dim)
    assert size == (3, 4)
    torch.testing.assert_close(y, reference, atol=1e-5, rtol=1e-5)


def test_window_merge_matches_the_written_formula_on_identical_tokens():
    """On a window of 4 identical tokens t the merge is DINOv2's block on t, written out from its weights."""
    merge, block = _merge_after_block("dinov2", "laco-window", init="ffn_reuse")
    tokens = torch.randn(3, merge.dim)  # one token per window, 3 windows in a 2x6 grid
    x = tokens[:, None, None, :].expand(3, 2, 2, merge.dim).permute(1, 0, 2, 3).reshape(1, 12, merge.dim)
    y, _ = merge(x, (2, 6))
    attn, mlp = block.attention, block.mlp
    with torch.no_grad():
        value = attn.v_proj(block.norm1(tokens))  # softmax over 4 equal keys: every weight is 1/4
        hidden = tokens + block.layer_scale1.lambda1 * attn.o_proj(value)
        ffn = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(block.norm2(hidden))))
        expected = hidden + block.layer_scale2.lambda1 * ffn
    torch.testing.assert_close(y[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", EXACT)
def test_ffn_reuse_patch_merge_is_the_mean_of_the_block_mlp(family):
    merge, block = _merge_after_block(family, "laco", init="ffn_reuse")
    mlp = laco.adapters.resolve_encoder(tiny_encoder(family))[1].mlp_parts(block)
    from laco.compressors.from_block import mlp_activation

    act = mlp_activation(block, mlp.fc1)
    x = torch.randn(2, 4 * 4, merge.dim)
    y, _ = merge(x, (4, 4))
    with torch.no_grad():
        windows = _windows(x, (4, 4))
        branch = mlp.fc2(act(mlp.fc1(mlp.norm(windows))))
        if mlp.scale is not None:
            branch = branch * mlp.scale
        expected = (windows + branch).mean(dim=1).reshape(2, -1, merge.dim)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert merge.hidden_dim == 4 * mlp.fc1.out_features


def test_ffn_reuse_weights_are_block_diagonal_with_layer_scale_folded():
    merge, block = _merge_after_block("dinov2", "laco", init="ffn_reuse")
    f1, f2, gamma = block.mlp.fc1.weight, block.mlp.fc2.weight, block.layer_scale2.lambda1
    hidden, dim = f1.shape
    for i in range(4):
        for j in range(4):
            part = merge.fc1.weight[i * hidden : (i + 1) * hidden, j * dim : (j + 1) * dim]
            torch.testing.assert_close(part, f1 if i == j else torch.zeros_like(f1))
        torch.testing.assert_close(merge.fc2.weight[:, i * hidden : (i + 1) * hidden], gamma[:, None] * f2 / 4)
    torch.testing.assert_close(merge.fc1.bias, block.mlp.fc1.bias.repeat(4))
    torch.testing.assert_close(merge.fc2.bias, gamma * block.mlp.fc2.bias)  # unscaled by 1/4


@pytest.mark.parametrize("method", ["laco", "laco-window"])
def test_odd_grids_average_real_tokens_only(method):
    """On a 5x7 grid, a border window of 1 or 2 real tokens is the block on those tokens alone, averaged."""
    merge, block = _merge_after_block("dinov2", method, init="ffn_reuse")
    x = torch.randn(1, 5 * 7, merge.dim)
    y, size = merge(x, (5, 7))
    assert size == (3, 4)
    grid = x.reshape(5, 7, merge.dim)
    for i in range(3):
        for j in range(4):
            window = grid[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(1, -1, merge.dim)
            with torch.no_grad():
                if method == "laco-window":
                    expected = _run_block(block, window).mean(dim=1)
                else:
                    mlp = block.mlp
                    ffn = mlp.fc2(mlp.activation_fn(mlp.fc1(block.norm2(window))))
                    expected = (window + block.layer_scale2.lambda1 * ffn).mean(dim=1)
            torch.testing.assert_close(y[0, i * 4 + j], expected[0], atol=1e-5, rtol=1e-5)


def test_zero_init_window_merge_is_exact_average_pooling():
    merge = build("laco-window", 16, num_heads=2)
    x = torch.randn(2, 5 * 6, 16)
    y, _ = merge(x, (5, 6))
    assert torch.equal(y, F.avg_pool_tokens(x, (5, 6), 2)[0])


def test_gradients_reach_the_attention_and_the_mlp():
    merge, _ = _merge_after_block("dinov2", "laco-window", init="ffn_reuse")
    merge.train()
    x = torch.randn(2, 64, merge.dim, requires_grad=True)
    merge(x, (8, 8))[0].square().mean().backward()
    for name in ("qkv.weight", "proj.weight", "attn_norm.weight", "fc1.weight", "fc2.weight", "norm.weight"):
        assert merge.get_parameter(name).grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_bfloat16_follows_float32():
    merge, _ = _merge_after_block("dinov2", "laco-window", init="ffn_reuse")
    x = torch.randn(2, 7 * 7, merge.dim)
    expected, _ = merge(x, (7, 7))
    got, _ = merge.to(torch.bfloat16)(x.bfloat16(), (7, 7))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)


def test_merge_stacked_equals_the_grid_call():
    merge = build("laco-window", 16, init="default", num_heads=4)
    x = torch.randn(2, 6 * 4, 16)
    expected, _ = merge(x, (6, 4))
    stacked, _ = F.space_to_channel(x, (6, 4), 2)
    torch.testing.assert_close(merge.merge_stacked(stacked), expected)


@pytest.mark.parametrize("options", [{}, {"init": "default", "branch_scale": 0.1}])
def test_flops_formula_matches_counted_flops(options):
    merge = build("laco-window", 32, num_heads=4, **options)
    x = torch.randn(1, 64, 32)
    with FlopCounterMode(display=False) as counter:
        merge(x, (8, 8))
    counted, predicted = counter.get_total_flops(), merge.flops((8, 8))
    assert counted <= predicted <= counted * 1.1 + 64 * 32 * 4


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="init='ffn_reuse'"):
        build("laco-window", 16, init="layer")
    with pytest.raises(ValueError, match="num_heads=3 does not divide the token width 16"):
        build("laco-window", 16, num_heads=3)
    with pytest.raises(ValueError, match="init='ffn_reuse' needs a plain two-Linear MLP, which aimv2"):
        laco.apply(tiny_encoder("aimv2"), 2, method="laco-window", init="ffn_reuse")
    with pytest.raises(ValueError, match="only defined for the patch-merge methods"):
        laco.apply(tiny_encoder("dinov2"), 2, method="avgpool", init="ffn_reuse")


def test_qk_norm_attention_is_refused_for_ffn_reuse():
    model = tiny_encoder("internvit", use_qk_norm=True)
    with pytest.raises(ValueError, match="qk-norm"):
        laco.apply(model, 2, method="laco-window", init="ffn_reuse")
    laco.apply(tiny_encoder("internvit", use_qk_norm=True), 2, method="laco-window")  # the zero init still runs


def _norms(method, **options):
    """Mean per-token norms of (input, shortcut, learned branch) at the merge after block 2 of a tiny SigLIP."""
    model = tiny_encoder("siglip")
    laco.apply(model, 2, method=method, **options)
    merge, captured = laco.attached_compressors(model)[0], {}
    hook = model.encoder.layers[1].register_forward_hook(
        lambda m, a, out: captured.setdefault("x", out[0] if isinstance(out, tuple) else out), prepend=True
    )
    with torch.no_grad():
        model(pixels(4))
        hook.remove()
        x, grid = captured["x"], (32 // PATCH, 32 // PATCH)
        y, _ = merge(x, grid)
        pool, _ = F.avg_pool_tokens(x, grid, 2)
    return [t.norm(dim=-1).mean().item() for t in (x, pool, y - pool)]


@pytest.mark.parametrize(
    "method,options", [("laco", {"init": "ffn_reuse"}), ("laco-window", {"init": "ffn_reuse"}), ("laco-window", {})]
)
def test_inits_keep_the_merged_tokens_on_the_scale_of_the_input(method, options):
    """What the issue saw after training: a learned branch 4-5x the shortcut's norm. At init these stay below it,
    and the merged tokens stay on the scale of the tokens the next block was trained on."""
    inputs, shortcut, branch = _norms(method, **options)
    assert branch <= shortcut
    assert 0.5 * shortcut <= (shortcut + branch) <= 1.5 * inputs


@pytest.mark.parametrize("init", ["default", "ffn_reuse"])
def test_laco_cost_counts_the_window_merge_inside_an_encoder(init):
    """laco.cost builds the merge from the placement alone; with the usual MLP ratio 4 (this geometry's) the
    FFN-reuse width it assumes is the block's, and the total holds against FlopCounterMode."""
    from laco import Placement, cost
    from laco.bench.models import CompressionSwitch, random_encoder
    from laco.cost import EncoderGeometry
    from laco.measure.flop_counting import flop_counter_mode

    geometry = EncoderGeometry("t-dinov2", "dinov2", 48, 6, 4, 192, 4, 32, prefix=1)
    model = random_encoder(geometry, dtype=torch.float32, device=torch.device("cpu"))
    placement = Placement(2, "laco-window", 2, {"init": init}).resolve(geometry.layers)
    CompressionSwitch(model).activate(placement)
    pixels = torch.randn(2, 3, geometry.image_size, geometry.image_size)
    with torch.no_grad(), flop_counter_mode() as counter:
        model(pixel_values=pixels)
    predicted = cost.encoder_flops(geometry, placement, images=2).total
    assert abs(counter.get_total_flops() / predicted - 1) < 0.02


@pytest.mark.parametrize("init", ["zero", "ffn_reuse"])
def test_window_merge_inside_idefics3_padded_tiles(init):
    """Idefics3's tower (its own adapter, padded tiles): the merge runs, generates, and comes out bit for bit; from
    a block it is that block on each window."""
    from tiny_mllms import idefics3, round_trip

    tiny = idefics3()
    logits = round_trip(tiny, 1, method="laco-window", init=init)
    assert torch.isfinite(logits).all()
    laco.apply(tiny.model, 1, method="laco-window", init=init, processor=tiny.processor)
    merge, block = laco.attached_compressors(tiny.model)[0], tiny.model.model.vision_model.encoder.layers[0]
    laco.remove(tiny.model)
    x = torch.randn(1, 16, merge.dim)
    y, _ = merge(x, (4, 4))
    with torch.no_grad():
        expected = _run_block(block, _windows(x, (4, 4))).mean(dim=1)[None]
    if init == "zero":
        expected = F.avg_pool_tokens(x, (4, 4), 2)[0]
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_branch_scale_scales_the_mlp_branch_only():
    x = torch.randn(2, 16, 32)
    full, _ = _merge_after_block("dinov2", "laco-window", init="ffn_reuse")
    unit, _ = _merge_after_block("dinov2", "laco-window", init="ffn_reuse", branch_scale=1.0)
    none, block = _merge_after_block("dinov2", "laco-window", init="ffn_reuse", branch_scale=0.0)
    torch.testing.assert_close(unit(x, (4, 4))[0], full(x, (4, 4))[0])
    with torch.no_grad():  # without the MLP branch: the average of the window attention's output
        attended = none.prepare_windows(F.space_to_channel(x, (4, 4), 2)[0], (4, 4))
        torch.testing.assert_close(none(x, (4, 4))[0], F.channel_average(attended, 2))
        assert not torch.allclose(attended, F.space_to_channel(x, (4, 4), 2)[0])
    assert none.branch_scale.requires_grad and block is not None


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    factor=st.integers(2, 3),
    init=st.sampled_from(["zero", "default"]),
)
def test_any_grid_and_factor(height, width, factor, init):
    merge = build("laco-window", 8, factor, init=init, num_heads=2)
    x = torch.randn(2, height * width, 8)
    y, size = merge(x, (height, width))
    assert size == F.merged_size((height, width), factor) and y.shape == (2, size[0] * size[1], 8)
    assert torch.isfinite(y).all()
    if init == "zero":
        torch.testing.assert_close(y, F.avg_pool_tokens(x, (height, width), factor)[0])
    # a padded slot never changes a window's output: the same grid padded with other values merges the same
    if height % factor or width % factor:
        bigger = torch.randn(2, -(-height // factor) * factor, -(-width // factor) * factor, 8)
        bigger[:, :height, :width] = x.reshape(2, height, width, 8)
        alone = merge(x, (height, width))[0]
        for i in range(size[0]):
            for j in range(size[1]):
                rows, cols = min(factor, height - i * factor), min(factor, width - j * factor)
                window = bigger[:, i * factor : i * factor + rows, j * factor : j * factor + cols].reshape(2, -1, 8)
                torch.testing.assert_close(merge(window, (rows, cols))[0][:, 0], alone[:, i * size[1] + j])
