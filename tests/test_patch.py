"""laco.apply / laco.remove on every supported encoder family (tiny random configs): token counts, prefixes, methods,
grids. The invariants every adapter passes (remove, SDPA, gradients, checkpointing, bf16, deepcopy, save/reload) are
in tests/adapters/test_conformance.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

import laco

from tiny_models import FAMILIES, IMAGE, LAYERS, PATCH, PREFIX, WIDTH, pixels, tiny_encoder

GRID = IMAGE // PATCH  # 8


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def token_counts(model, x):
    return [h.shape[1] for h in model(x, output_hidden_states=True).hidden_states]


@pytest.mark.parametrize(
    "layer,expected_layer", [(2, 2), (0.5, 2), ("1/4", 1), ("3", 3), (LAYERS, LAYERS), (1.0, LAYERS)]
)
def test_token_counts_after_each_layer(family, layer, expected_layer):
    model = laco.apply(tiny_encoder(family), layer)
    prefix = PREFIX[family]
    counts = token_counts(model, pixels())
    full, merged = GRID * GRID + prefix, (GRID // 2) ** 2 + prefix
    # hidden_states[0] is the embedding output, hidden_states[k] the output of layer k (after its merge)
    assert counts == [full] * expected_layer + [merged] * (LAYERS + 1 - expected_layer)
    assert laco.num_tokens(model) == merged
    assert laco.placement_of(model).layers == (expected_layer,)


def test_prefix_tokens_pass_through_unchanged(family):
    if PREFIX[family] == 0:
        pytest.skip("no prefix tokens in this family")
    x = pixels()
    reference = tiny_encoder(family)(x, output_hidden_states=True).hidden_states
    patched = laco.apply(tiny_encoder(family), 2)(x, output_hidden_states=True).hidden_states
    assert torch.equal(patched[2][:, :1], reference[2][:, :1])
    assert torch.equal(patched[1], reference[1])


def test_multi_stage_compression_is_sixteen_fold(family):
    model = laco.apply(tiny_encoder(family), [1, 3])
    prefix = PREFIX[family]
    assert token_counts(model, pixels()) == [64 + prefix, 16 + prefix, 16 + prefix, 4 + prefix, 4 + prefix]
    assert laco.num_tokens(model, include_prefix=False) == GRID * GRID // 16


def test_zero_init_laco_equals_average_pooling_inside_the_encoder(family):
    x = pixels()
    laco_out = laco.apply(tiny_encoder(family), 2)(x).last_hidden_state
    pool_out = laco.apply(tiny_encoder(family), 2, method="avgpool")(x).last_hidden_state
    assert torch.equal(laco_out, pool_out)


@pytest.mark.parametrize("method", ["laco", "pixel_shuffle", "avgpool", "ldpv2", "tokenpacker"])
def test_every_method_fits_inside_every_encoder(family, method):
    model = laco.apply(tiny_encoder(family), 2, method=method)
    assert model(pixels()).last_hidden_state.shape[1] == 16 + PREFIX[family]


def test_non_square_and_odd_grids(family):
    # each family's own way of taking other image sizes: interpolated or sinusoidal position embeddings
    overrides = {"aimv2": {"is_native": True}}.get(family, {})
    kwargs = {"interpolate_pos_encoding": True} if family in ("siglip", "clip") else {}
    model = laco.apply(tiny_encoder(family, **overrides), 2)
    x = pixels(1, 7 * PATCH, 10 * PATCH)  # 7 x 10 grid -> padded to 8 x 10 -> 4 x 5
    assert model(x, **kwargs).last_hidden_state.shape[1] == 20 + PREFIX[family]
    assert laco.output_grid(model, (7 * PATCH, 10 * PATCH)) == (4, 5)


def test_odd_grid_at_configured_size():
    # SigLIP-so400m/14 @384 has a 27 x 27 grid: the default pad policy merges it to 14 x 14
    model = laco.apply(tiny_encoder("siglip", image_size=27 * PATCH), "1/4")
    assert model(pixels(1, 27 * PATCH, 27 * PATCH)).last_hidden_state.shape[1] == 14 * 14
    assert laco.num_tokens(model) == 196


def test_pad_error_policy_is_reported_at_forward_time():
    model = laco.apply(tiny_encoder("siglip", image_size=27 * PATCH), 1, pad="error")
    with pytest.raises(ValueError, match="27x27 is not divisible by factor 2"):
        model(pixels(1, 27 * PATCH, 27 * PATCH))


def test_torch_compile():
    model = laco.apply(tiny_encoder("siglip"), 2, init="default")
    x = pixels()
    expected = model(x).last_hidden_state
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(compiled(x).last_hidden_state, expected)


def test_composite_models_are_searched_for_their_vision_encoder():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=CLIPTextConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        vision_config=CLIPVisionConfig(
            hidden_size=WIDTH,
            intermediate_size=64,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            image_size=IMAGE,
            patch_size=PATCH,
        ),
        projection_dim=WIDTH,
    )
    model = CLIPModel(config).eval()
    laco.apply(model, 2)
    assert laco.is_patched(model) and laco.is_patched(model.vision_model)
    assert laco.num_tokens(model) == 17
    features = model.get_image_features(pixel_values=pixels())
    assert torch.isfinite(features.pooler_output if hasattr(features, "pooler_output") else features).all()
    laco.remove(model)
    assert not laco.is_patched(model.vision_model)


class TinyViT(torch.nn.Module):
    """A ViT laco has no adapter for: blocks in self.blocks, `prefix` learned prefix tokens."""

    def __init__(self, dim=16, depth=4, prefix=2, patch=4):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, dim, patch, patch)
        self.prefix = torch.nn.Parameter(torch.randn(1, prefix, dim)) if prefix else None
        self.blocks = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True) for _ in range(depth)
        )

    def forward(self, pixel_values):
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        if self.prefix is not None:
            x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return x


def test_generic_vit_with_prefix_tokens():
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = pixels(2, 24, 32)  # 6 x 8 grid
    before = model(x)
    laco.apply(model, "1/2", blocks="blocks", num_prefix_tokens=2, patch_size=4)
    after = model(x)
    assert after.shape == (2, 2 + 12, 16)
    laco.remove(model)
    assert torch.equal(model(x), before)


class TimmShapedBlock(torch.nn.Module):
    """timm's ViT block layout: pre-norm attention and MLP, each a residual branch, on (B, N, C) tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attn = torch.nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TimmShapedViT(torch.nn.Module):
    """The attributes timm's ``VisionTransformer`` has: ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``num_prefix_tokens``, ``embed_dim``, blocks in an ``nn.Sequential`` and a final ``norm``."""

    def __init__(self, dim=16, depth=4, patch=4, grid=6):
        super().__init__()
        self.embed_dim, self.num_prefix_tokens = dim, 1
        self.patch_embed = torch.nn.Module()
        self.patch_embed.proj = torch.nn.Conv2d(3, dim, patch, patch)
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = torch.nn.Sequential(*(TimmShapedBlock(dim) for _ in range(depth)))
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, pixel_values):
        x = self.patch_embed.proj(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))


def test_generic_adapter_takes_a_timm_shaped_vit_with_sequential_blocks():
    torch.manual_seed(0)
    model = TimmShapedViT().eval()
    x = pixels(2, 24, 24)  # 6 x 6 grid + CLS
    before = model(x)
    laco.apply(model, "1/2", blocks="blocks", num_prefix_tokens=model.num_prefix_tokens, patch_size=4)
    assert laco.num_tokens(model, 24) == 1 + 9
    after = model(x)
    assert after.shape == (2, 1 + 9, 16)
    laco.remove(model)
    assert torch.equal(model(x), before)


def test_generic_blocks_must_be_a_block_container():
    with pytest.raises(ValueError, match="nn.ModuleList or nn.Sequential"):
        laco.apply(TimmShapedViT(), 1, blocks="norm", patch_size=4)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    factor=st.integers(2, 3),
    prefix=st.integers(0, 3),
    layer=st.integers(1, 3),
)
def test_generic_properties(batch, height, width, factor, prefix, layer):
    torch.manual_seed(0)
    model = TinyViT(prefix=prefix, depth=3).eval()
    x = pixels(batch, 4 * height, 4 * width)
    laco.apply(model, layer, factor=factor, blocks="blocks", num_prefix_tokens=prefix, patch_size=4)
    out = model(x)
    expected_grid = (-(-height // factor), -(-width // factor))
    assert out.shape == (batch, prefix + expected_grid[0] * expected_grid[1], 16)
    assert laco.output_grid(model, (4 * height, 4 * width)) == expected_grid
    laco.remove(model)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m: laco.apply(m, 0), r"layer 0 is out of range for an encoder with 4 layers"),
        (lambda m: laco.apply(m, 5), r"layer 5 is out of range"),
        (lambda m: laco.apply(m, 1.5), r"must lie in \(0, 1\]"),
        (lambda m: laco.apply(m, "quarter"), "cannot read layer 'quarter'"),
        (lambda m: laco.apply(m, [2, 0.5]), "names the same layer twice"),
        (lambda m: laco.apply(m, 2, method="tome"), "unknown compression method 'tome'"),
        (lambda m: laco.apply(m, 2, factor=1), "factor must be an integer >= 2"),
        (lambda m: laco.apply(m, 2, heads=4), r"does not take option\(s\) \['heads'\]"),
        (lambda m: laco.remove(m), "not compressed by laco"),
        (lambda m: laco.apply(laco.apply(m, 1), 2), "already compressed"),
        (lambda m: laco.apply(m, 2, num_prefix_tokens=1), "describe a generic ViT"),
        (lambda m: laco.apply(torch.nn.Linear(2, 2), 1), "laco has no adapter for Linear"),
    ],
)
def test_bad_calls_get_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_encoder("siglip"))


def test_wrong_prefix_count_is_reported():
    model = TinyViT(prefix=1).eval()
    laco.apply(model, 1, blocks="blocks", num_prefix_tokens=0, patch_size=4)
    with pytest.raises(ValueError, match="is num_prefix_tokens right"):
        model(pixels(1, 16, 16))


def test_attention_mask_is_refused_on_a_patched_encoder():
    model = laco.apply(tiny_encoder("dinov2"), 2)
    with pytest.raises(ValueError, match="cannot take an attention_mask"):
        model(pixels(), attention_mask=torch.ones(2, 65))


def test_layer_init_starts_from_the_layer_mlp():
    model = laco.apply(tiny_encoder("dinov2"), 2, init="layer")
    merge = laco.attached_compressors(model)[0]
    block = model.encoder.layer[1]
    assert merge.hidden_dim == block.mlp.fc1.out_features
    torch.testing.assert_close(merge.fc1.weight[:, :WIDTH] * 4, block.mlp.fc1.weight)


def test_layer_init_is_refused_for_swiglu_encoders():
    with pytest.raises(ValueError, match="init='layer' needs a plain two-Linear MLP"):
        laco.apply(tiny_encoder("aimv2"), 2, init="layer")


def test_a_torch_compile_wrapper_is_refused_with_the_fix():
    compiled = torch.compile(tiny_encoder("siglip"), backend="aot_eager")
    with pytest.raises(ValueError, match=r"torch.compile wrapper.*_orig_mod"):
        laco.apply(compiled, 2)


def test_patching_a_module_that_has_run_compiled_warns_and_reset_recovers():
    # Dynamo does not guard on module hooks: without the warning the graph traced before apply runs on, uncompressed.
    model = tiny_encoder("siglip")
    model.compile(backend="aot_eager")
    x = pixels()
    assert model(x).last_hidden_state.shape[1] == GRID * GRID
    with pytest.warns(UserWarning, match=r"laco.apply on a compiled module.*torch.compiler.reset\(\)"):
        laco.apply(model, 2)
    torch.compiler.reset()
    assert model(x).last_hidden_state.shape[1] == GRID * GRID // 4
    with pytest.warns(UserWarning, match="laco.remove on a compiled module"):
        laco.remove(model)
    torch.compiler.reset()
    assert model(x).last_hidden_state.shape[1] == GRID * GRID


def test_no_warning_for_a_model_that_was_never_compiled(recwarn):
    model = laco.apply(tiny_encoder("siglip"), 2)
    laco.remove(model)
    assert not [w for w in recwarn if "compiled" in str(w.message)]


# -- the window-attention merge ("laco-window") in every family -----------------------------------------------------

WINDOW_INITS = {"aimv2": ["zero", "default"]}  # SwiGLU MLP: no FFN reuse


@pytest.mark.parametrize("init", ["zero", "default", "ffn_reuse"])
def test_window_merge_runs_in_every_family(family, init):
    if init not in WINDOW_INITS.get(family, [init]):
        with pytest.raises(ValueError, match="needs a plain two-Linear MLP"):
            laco.apply(tiny_encoder(family), 2, method="laco-window", init=init)
        return
    model, x = tiny_encoder(family), pixels()
    reference = model(x).last_hidden_state
    laco.apply(model, 2, method="laco-window", init=init)
    out = model(x).last_hidden_state
    assert out.shape[1] == 16 + PREFIX[family] and torch.isfinite(out).all()
    if init == "zero":
        pooled = laco.apply(tiny_encoder(family), 2, method="avgpool")(x).last_hidden_state
        assert torch.equal(out, pooled)
    laco.remove(model)
    assert torch.equal(model(x).last_hidden_state, reference)


def test_window_merge_eager_and_sdpa_agree(family):
    x = pixels()
    outputs = []
    for implementation in ("eager", "sdpa"):
        model = tiny_encoder(family, attn_implementation=implementation)
        outputs.append(laco.apply(model, 2, method="laco-window", init="default")(x).last_hidden_state)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)


def test_window_merge_trains_and_takes_odd_grids(family):
    init = "default" if family == "aimv2" else "ffn_reuse"
    model = laco.apply(tiny_encoder(family), 2, method="laco-window", init=init).train()
    model(pixels()).last_hidden_state.square().mean().backward()
    merge = laco.attached_compressors(model)[0]
    assert merge.qkv.weight.grad.abs().sum() > 0 and merge.fc1.weight.grad.abs().sum() > 0
    overrides = {"aimv2": {"is_native": True}}.get(family, {})
    kwargs = {"interpolate_pos_encoding": True} if family in ("siglip", "clip") else {}
    odd = laco.apply(tiny_encoder(family, **overrides), 2, method="laco-window", init=init)
    out = odd(pixels(1, 7 * PATCH, 5 * PATCH), **kwargs).last_hidden_state
    assert out.shape[1] == 4 * 3 + PREFIX[family] and torch.isfinite(out).all()


def test_window_merge_saves_and_reloads(tmp_path, family):
    init = "default" if family == "aimv2" else "ffn_reuse"
    model, x = laco.apply(tiny_encoder(family), 2, method="laco-window", init=init), pixels()
    expected = model(x).last_hidden_state
    model.save_pretrained(tmp_path)
    reloaded = laco.load(tmp_path)
    torch.testing.assert_close(reloaded(x).last_hidden_state, expected)


# ----------------------------------------------------------------------------------------------------------------
# laco.patch.stock_twin: the stock encoder beside the compressed one, on the same tensors


def _same_tensors(model, twin):
    ours = dict(model.named_parameters())
    return all(parameter is ours[name] for name, parameter in twin.named_parameters())


def test_stock_twin_runs_the_stock_encoder_on_the_same_tensors(family):
    x = pixels()
    model = tiny_encoder(family)
    with torch.no_grad():
        stock = model(x).last_hidden_state
        laco.apply(model, 2, init="default")  # a random merge, so compressed differs from a pooled stock
        compressed = model(x).last_hidden_state
        twin = laco.patch.stock_twin(model)
        assert torch.equal(twin(x).last_hidden_state, stock)  # bit-identical, as laco.remove is
        assert torch.equal(model(x).last_hidden_state, compressed)  # the model stays compressed
    assert laco.is_patched(model) and not laco.is_patched(twin)
    assert _same_tensors(model, twin) and not hasattr(twin.config, "laco") and hasattr(model.config, "laco")
    with torch.no_grad():
        laco.attached_compressors(model)[0].fc2.weight.add_(1.0)
        next(twin.parameters()).mul_(0.5)  # a shared tensor: the model sees it too
        assert not torch.equal(model(x).last_hidden_state, compressed)
    with pytest.raises(ValueError, match="not compressed by laco"):
        laco.patch.stock_twin(twin)


@pytest.mark.parametrize("qwen", ["qwen2", "qwen2.5", "qwen3"])
def test_stock_twin_of_a_qwen_tower_keeps_the_stock_mergers_and_the_models_flags(qwen):
    from qwen_models import grid, packed_pixels, tiny_tower

    grid_thw = grid((1, 8, 12), (1, 4, 4))
    x = packed_pixels(grid_thw)
    tower = tiny_tower(qwen)
    with torch.no_grad():
        stock = tower(x, grid_thw=grid_thw).pooler_output
        laco.apply(tower, 2, mode="keep_llm_tokens")  # the stock merger stays, a 1x copy of it runs
        compressed = tower(x, grid_thw=grid_thw).pooler_output
        flags = {name: parameter.requires_grad for name, parameter in tower.named_parameters()}
        twin = laco.patch.stock_twin(tower)
        assert torch.equal(twin(x, grid_thw=grid_thw).pooler_output, stock)
        assert torch.equal(tower(x, grid_thw=grid_thw).pooler_output, compressed)
        with pytest.raises((RuntimeError, IndexError)):  # a stock forward that raises (too few patches) ...
            twin(x[:-4], grid_thw=grid_thw)
        # ... leaves nothing to restore: neither tower was switched
        assert torch.equal(tower(x, grid_thw=grid_thw).pooler_output, compressed)
        assert torch.equal(twin(x, grid_thw=grid_thw).pooler_output, stock)
    assert stock.shape == compressed.shape  # keep_llm_tokens: the LLM gets as many tokens either way
    assert {name: parameter.requires_grad for name, parameter in tower.named_parameters()} == flags
    stock_merger = [p for name, p in tower.merger.named_parameters() if not name.startswith("laco_one_to_one")]
    assert stock_merger and not any(p.requires_grad for p in stock_merger)  # still frozen, as apply left it
    assert _same_tensors(tower, twin) and not any("laco" in name for name, _ in twin.named_parameters())
