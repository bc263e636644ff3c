import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laco.placement import FORMAT, LAST, Placement, parse_layers, resolve_layers


@pytest.mark.parametrize(
    "spec,expected",
    [
        (None, ()),
        ("none", ()),
        ("None", ()),
        ([], ()),
        (3, (3,)),
        ("3", (3,)),
        ("1/4", (Fraction(1, 4),)),
        (0.25, (Fraction(1, 4),)),
        (1.0, (LAST,)),
        ("1", (1,)),
        ("last", (LAST,)),
        ("external", (LAST,)),
        ("ext", (LAST,)),
        (["1/4", "1/2"], (Fraction(1, 4), Fraction(1, 2))),
        ("1/4,1/2", (Fraction(1, 4), Fraction(1, 2))),
        ((3, "last"), (3, LAST)),
    ],
)
def test_one_parser_reads_every_spelling(spec, expected):
    assert parse_layers(spec) == expected


@pytest.mark.parametrize(
    "spec,depth,layers",
    [("1/4", 27, (7,)), ("1/4", 12, (3,)), ("1/12", 27, (2,)), ("last", 27, (27,)), (["1/2", 2], 12, (2, 6))],
)
def test_resolving_rounds_fractions_to_the_nearest_layer(spec, depth, layers):
    assert Placement(spec).resolve(depth).layers == layers
    assert resolve_layers(spec, depth) == layers


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: Placement("1/0"), "cannot read layer '1/0'"),
        (lambda: Placement("abc"), "cannot read layer 'abc'"),
        (lambda: Placement(True), "cannot read layer True"),
        (lambda: Placement(1.5), r"must lie in \(0, 1\]"),
        (lambda: Placement(float("nan")), "finite"),
        (lambda: Placement(2, factor=1), "factor must be an integer >= 2"),
        (lambda: Placement(2, method=""), "compressor name"),
        (lambda: Placement(2, mode="more"), "unknown mode 'more'"),
        (lambda: Placement(13).resolve(12), "out of range for an encoder with 12 layers"),
        (lambda: Placement(0).resolve(12), "out of range"),
        (lambda: Placement([12, "last"]).resolve(12), "names the same layer twice"),
        (lambda: Placement.from_dict({"layers": [3], "heads": 2}), r"unknown LaCo setting\(s\) \['heads'\]"),
        (lambda: Placement.from_dict({"layers": [3], "format": FORMAT + 1}), "newer than this laco reads"),
        (lambda: Placement("1/4").block_layers, "not resolved"),
    ],
)
def test_bad_placements_get_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_options_are_stored_sorted_so_placements_hash_and_compare():
    first = Placement(3, "ldpv2", 2, {"shortcut": True, "pad": "zero"})
    second = Placement((3,), "ldpv2", 2, (("pad", "zero"), ("shortcut", True)))
    assert first == second and hash(first) == hash(second)
    assert first.option_dict == {"pad": "zero", "shortcut": True}
    assert first.with_options(shortcut=False).option_dict == {"pad": "zero", "shortcut": False}
    assert not Placement().compressed and Placement(3).compressed


@given(
    layers=st.lists(st.one_of(st.integers(1, 40), st.sampled_from(["1/12", "1/6", "1/4", "1/2", "last"])), max_size=3),
    factor=st.integers(2, 4),
    shortcut=st.booleans(),
    mode=st.sampled_from(["auto", "keep_llm_tokens", "compress_more"]),
)
def test_to_dict_round_trips(layers, factor, shortcut, mode):
    placement = Placement(layers, "laco", factor, {"shortcut": shortcut}, mode)
    assert Placement.from_dict(placement.to_dict()) == placement


def test_labels_name_method_factor_and_layers():
    assert Placement().label() == "none"
    assert Placement("1/4").label() == "laco@1/4"
    assert Placement([3, 6], "avgpool", 3).label() == "avgpoolx3@3+6"


def test_the_placement_module_stays_on_the_ground_floor():
    """Configs and the cost model import it; loading it must not pull torch or transformers in."""
    path = Path(__file__).resolve().parents[1] / "laco" / "placement.py"
    probe = (
        f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('placement', {str(path)!r}); "
        "module = sys.modules['placement'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
