"""The anatomy of a merge: a block before it, a block after it and the merge itself, timed alone."""

import json

import pytest

from laco import Placement
from laco import patch as laco_patch
from laco.bench.anatomy import Anatomy, measure_anatomy
from laco.bench.models import CompressionSwitch
from laco.bench.presets import TINY_ENCODER
from laco.measure.timing import Clock, Stats

from tiny_models import FAMILIES, PREFIX, tiny_encoder


def test_quick_run_times_the_parts_of_the_headline_merge(quick_run):
    out, _ = quick_run
    parts = json.loads((out / "bench.json").read_text())["anatomy"]
    assert parts["variant"] == "laco@1/4" and parts["layer"] == 3 and parts["depth"] == 12
    assert (parts["tokens_before"], parts["tokens_after"]) == (169, 49)  # 13x13 padded to 14x14, merged 2x2
    assert all(parts["seconds"][part]["median"] > 0 for part in ("block_before", "block_after", "merge"))
    # A SigLIP block's FLOPs: 4 projections + MLP, linear in tokens, plus attention, quadratic.
    width, mlp = TINY_ENCODER.width, TINY_ENCODER.mlp

    def block_flops(tokens):
        return 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width

    assert parts["flops"]["block_before"] == pytest.approx(block_flops(169), rel=0.01)
    assert parts["flops"]["block_after"] == pytest.approx(block_flops(49), rel=0.01)
    assert 0 < parts["merge_share"] < 1 and parts["time_bound"] > 0


def test_time_bound_from_part_times():
    def stats(seconds):
        return Stats.of([seconds])

    parts = Anatomy("laco@1/4", 3, 12, 1, 170, 50, stats(4.0), stats(1.0), stats(2.0), 4e9, 1e9, 1e8)
    # external: 12 blocks before + merge = 50; LaCo: 3 before + merge + 9 after = 23
    assert parts.time_bound == pytest.approx(50 / 23)
    assert parts.merge_share == pytest.approx(2 / 23)
    assert parts.block_time_ratio == pytest.approx(0.25) and parts.block_flop_ratio == pytest.approx(0.25)


@pytest.mark.parametrize("family", FAMILIES)
def test_anatomy_calls_the_blocks_of_every_family(family):
    encoder = tiny_encoder(family, attn_implementation="sdpa")
    switch = CompressionSwitch(encoder)
    prefix = PREFIX[family]
    calls = []
    switch.adapter.blocks(encoder)[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    parts = measure_anatomy(
        switch,
        Placement((2,), "laco", 2),
        "laco@1/2",
        batch=2,
        reps=1,
        warmup=0,
        clock=Clock(),
        repeat=3,
    )
    assert len(calls) == 2 * (1 + 3)  # both token counts: once under the FLOP counter, then 3 runs per timed call
    assert (parts.tokens_before, parts.tokens_after) == (64 + prefix, 16 + prefix)  # the 8x8 grid of its 32px images
    assert parts.flops_block_after < parts.flops_block_before and parts.flops_merge > 0
    assert not laco_patch.is_patched(encoder)  # timed uncompressed: a block call runs the block alone
