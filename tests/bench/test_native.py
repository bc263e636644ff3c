"""laco bench on packed native-resolution towers: the tiny preset end to end through the command line, the real
presets' variants and FLOP bounds (no timing), and the options that do not apply."""

import json
import re

import pytest

from laco.bench import SCHEMA, main
from laco.bench.native import IMAGE_SETS, NATIVE_PRESETS, packed_inputs
from laco.bench.presets import load_preset
from laco.bench.variants import packed_tower_variants
from laco.cost.native import packed_encoder_flops

VARIANTS = ["original", "keep_llm_tokens", "compress_more"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("native")
    args = ["--preset", "tiny-qwen-tower", "--sizes", "448,mixed", "--reps", "2", "--threads", "1"]
    status = main([*args, "--precision", "fp32", "--no-progress", "--out", str(out)])
    return out, status


def test_the_tiny_preset_times_three_variants_per_image_set_next_to_their_flop_bounds(tiny_run):
    out, status = tiny_run
    assert status == 0
    data = json.loads((out / "native.json").read_text())
    assert data["schema"] == SCHEMA and data["engine"] == "packed" and data["preset"]["name"] == "tiny-qwen-tower"
    assert data["settings"]["dtype"] == "float32" and data["machine"]["torch_threads"] == 1
    assert [v["name"] for v in data["variants"]] == VARIANTS
    assert list(data["sizes"]) == list(data["measurements"]) == ["448", "mixed"]
    mixed = data["sizes"]["mixed"]
    assert mixed["grid_thw"] == [[1, 32, 32], [1, 64, 48], [1, 32, 96]] and mixed["patches"] == 7168
    rows = data["measurements"]["mixed"]
    # interleaved: every variant once per round, the start rotating
    assert all(rows[name]["rounds"] == [0, 1] for name in VARIANTS)
    assert all(sorted(rows[name]["slots"][r] for name in VARIANTS) == [0, 1, 2] for r in (0, 1))
    assert rows["original"]["slots"][0] != rows["original"]["slots"][1]
    assert [sum(rows[name]["tokens"]) for name in VARIANTS] == [1792, 1792, 448]
    for name in VARIANTS[1:]:
        speedup = rows[name]["speedup"]
        assert speedup["baseline"] == "original" and speedup["bound"] > 1
        assert speedup["efficiency"] == pytest.approx(speedup["measured"] / speedup["bound"])
        assert speedup["cpu_time"]["measured"] > 0 and rows[name]["ttft_flop_bound"] > 1
        assert set(rows[name]["overhead_seconds"]) == {"layout", "merge", "block_inputs"}
    assert rows["original"]["speedup"] is None and "overhead_seconds" not in rows["original"]


def test_the_markdown_table_has_a_row_per_image_set_and_names_the_machine(tiny_run):
    out, _ = tiny_run
    text = (out / "native.md").read_text()
    assert "1 thread(s)" in text and "float32" in text and "commit " in text
    table = [line for line in text.splitlines() if line.startswith("| 448 ") or line.startswith("| mixed ")]
    assert len(table) == 2 and "| 1792/1792/448 |" in table[1]


def test_the_qwen_presets_measure_the_sizes_and_modes_the_docs_quote():
    """No timing: the 7B preset's variants and cost model give the bounds docs/native-resolution.md lists."""
    preset = NATIVE_PRESETS["qwen2.5-vl-7b-tower"]
    assert preset.sizes == ("448", "1344") and preset.layer == "1/4"
    variants = packed_tower_variants(preset.encoder.layers, preset.layer)
    assert [v.placement.layers for v in variants] == [(), (8,), (8,)]
    assert [v.same_tokens_as_baseline for v in variants[1:]] == [True, False]
    original, keep = (
        packed_encoder_flops(preset.encoder, v.placement, images=IMAGE_SETS["1344"]) for v in variants[:2]
    )
    assert original.total / keep.total == pytest.approx(2.36, abs=0.01)
    pixels, grid_thw = packed_inputs(preset.encoder, IMAGE_SETS["1344"], seed=1)
    assert grid_thw.tolist() == [[1, 96, 96]] and pixels.shape == (9216, 3 * 2 * 14 * 14)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "tiny-qwen-tower", "--methods", "laco"], r"--methods do\(es\) not apply .* --sizes, --reps"),
        (["--preset", "tiny-qwen-tower", "--sizes", "512"], r"unknown image set\(s\) \['512'\]"),
        (["--preset", "tiny", "--sizes", "448"], "--sizes is for packed-tower presets"),
    ],
)
def test_options_that_do_not_apply_are_refused_naming_them(args, message, capsys):
    assert main([*args, "--no-progress", "--out", "unused"]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_packed_tower_is_not_a_batched_preset():
    with pytest.raises(ValueError, match="packed native-resolution tower: run it with `laco bench --preset"):
        load_preset("qwen2.5-vl-7b-tower")


def test_list_presets_shows_the_packed_towers(capsys):
    assert main(["--list-presets"]) == 0
    assert "qwen2.5-vl-7b-tower" in capsys.readouterr().out
