"""The variants of a run and their baselines."""

import pytest

from laco import Placement
from laco.bench.variants import build_variants, headline_variant


def test_variants_and_their_baselines():
    variants = {v.name: v for v in build_variants(27)}
    assert variants["laco@1/4"].placement.layers == (7,)
    assert variants["laco@1/2"].placement.layers == (14,)
    assert variants["external"].placement.layers == (27,) and variants["external"].baseline is None
    assert variants["laco@1/4+1/2"].placement.layers == (7, 14)
    assert variants["laco@1/4+1/2"].baseline == "external-16x"
    assert variants["external-16x"].placement.factor == 4
    assert variants["tokenpacker@1/4"].placement == Placement((7,), "tokenpacker")
    assert not variants["none"].same_tokens_as_baseline
    # On a 4-layer encoder 1/12, 1/6 and 1/4 all resolve to layer 1: kept once, under the first name.
    shallow = [v.name for v in build_variants(4, methods=["laco"], two_stage=None)]
    assert shallow == ["none", "external", "laco@1/12", "laco@1/2"]


def test_variant_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown method"):
        build_variants(12, methods=["laco", "tome"])
    with pytest.raises(ValueError, match="at least two depths"):
        build_variants(12, two_stage=["1/4"])
    with pytest.raises(ValueError, match="reach the last layer"):
        build_variants(12, two_stage=["1/2", "12"])


def test_the_headline_is_laco_at_a_quarter_or_the_first_one_stage_placement():
    names = [(v.name, v.group) for v in build_variants(12)]
    assert headline_variant(names) == "laco@1/4"
    assert headline_variant((v.name, v.group) for v in build_variants(12, depths=["1/2", "1/6"])) == "laco@1/2"
    assert headline_variant((v.name, v.group) for v in build_variants(12, methods=["avgpool"])) is None


def test_method_options_reach_the_placement_and_its_flop_count():
    """``--method-options init=ffn_reuse`` builds (and counts) the merge a run trained, not the default-width one."""
    from laco.bench.settings import BenchSettings, parse_options
    from laco.cost import EncoderGeometry, encoder_flops

    plain, reused = (
        build_variants(12, depths=(), methods=("laco-window",), method_depth="6", two_stage=None, method_options=o)[-1]
        for o in (None, parse_options(["init=ffn_reuse"]))
    )
    assert dict(reused.placement.options) == {"init": "ffn_reuse"} and not plain.placement.options
    tower = EncoderGeometry("dinov2-s-112", "dinov2", 384, 12, 6, 1536, 14, 112, prefix=1)
    assert encoder_flops(tower, reused.placement).total > encoder_flops(tower, plain.placement).total
    with pytest.raises(ValueError, match="--method-options 'init'"):
        BenchSettings(method_options=("init",))
