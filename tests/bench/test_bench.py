"""laco bench: the --quick path end to end, the interleaved timer and its statistics on fake workloads."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import sdpa_backward_flop_count

from laco import Placement
from laco import patch as laco_patch
from laco.bench import main, run_benchmark
from laco.bench import runner as runner_module
from laco.bench.anatomy import Anatomy, measure_anatomy
from laco.bench.counting import _sdpa_backward_flop, flop_counter_mode
from laco.bench.models import CompressionSwitch, build_mllm
from laco.bench.presets import PRESETS, TINY_ENCODER, TINY_LLM, load_preset, preset_from_dict
from laco.bench.report import host_bound_warning
from laco.bench.runner import BenchResult, Measurement, _scale, _scale_phase, build_variants
from laco.bench.timing import Clock, Samples, StackTimer, Stats, paired_ratios, quantile, run_interleaved
from laco.cost import training_activation_bytes

from tiny_models import FAMILIES, PREFIX, WIDTH, tiny_encoder

REPO = Path(__file__).resolve().parents[2]
MEASURES = ["encoder", "train", "prefill", "decode"]


# ---------------------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, main(["--quick", "--no-progress", "--out", str(out)])


def test_quick_run_writes_json_and_png(quick_run, capsys):
    out, status = quick_run
    assert status == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == "laco-bench/1"
    assert data["preset"]["name"] == "tiny"
    assert set(data["machine"]) >= {"cpu", "logical_cores", "torch_threads", "torch", "transformers", "gpu"}
    assert data["settings"]["threads"] == 1 and data["settings"]["reps"] == 3
    assert list(data["measurements"]) == MEASURES
    names = [v["name"] for v in data["variants"]]
    assert names[:2] == ["none", "external"] and "laco@1/4" in names and "external-16x" in names
    for _kind, rows in data["measurements"].items():
        assert list(rows) == names
        for name, row in rows.items():
            assert len(row["seconds"]) == 3 and all(s > 0 for s in row["seconds"])
            assert row["rounds"] == [0, 1, 2]
            assert row["stats_seconds"]["q1"] <= row["stats_seconds"]["median"] <= row["stats_seconds"]["q3"]
            assert row["flops_counted"] == pytest.approx(row["flops_predicted"], rel=0.02)
            variant = next(v for v in data["variants"] if v["name"] == name)
            if variant["baseline"] is None:
                assert row["speedup"] is None
            else:
                assert row["speedup"]["baseline"] == variant["baseline"]
                assert row["speedup"]["flop_bound"] > 0
    train = data["measurements"]["train"]["laco@1/4"]
    assert set(train["phases_seconds"]) >= {"forward", "backward", "optimizer", "stack_forward", "stack_backward"}
    assert train["memory"]["kind"] == "saved_for_backward" and train["memory"]["bytes"] > 0
    # LaCo at 1/4 and external feed the LLM the same number of tokens; no compression 4x more (odd 13x13 grid).
    prefill = data["measurements"]["prefill"]
    assert prefill["laco@1/4"]["image_tokens"] == prefill["external"]["image_tokens"] == 49
    assert prefill["none"]["image_tokens"] == 169
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


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


def test_quick_run_prints_tables_and_summary(tmp_path, capsys):
    run_benchmark(
        quick=True,
        measure=["encoder", "prefill"],
        methods=["laco", "avgpool"],
        two_stage=None,
        progress=False,
        out=tmp_path,
        plot=False,
    )
    text = capsys.readouterr().out
    assert "== encoder" in text and "== prefill" in text and "== train" not in text
    assert "== summary" in text and "laco@1/4 (after layer 3 of 12) vs external" in text
    assert "FLOP bound" in text and "avgpool@1/4" in text
    assert (tmp_path / "bench.json").exists() and not (tmp_path / "bench.png").exists()


def test_llm_layer_scaling_is_stated(tmp_path, capsys):
    result = run_benchmark(
        quick=True, llm_layers=1, measure=["prefill"], methods=["laco"], depths=["1/4"], two_stage=None, progress=False
    )
    assert result.settings["llm_layers"] == 1 and result.settings["llm_layers_full"] == TINY_LLM.layers
    row = result.measurements["prefill"]["laco@1/4"]
    assert all(scaled > raw for scaled, raw in zip(row.scaled_seconds, row.samples.seconds))
    assert row.flops_predicted < row.flops_predicted_full
    assert "LLM timed with 1 of 2" in capsys.readouterr().out


def test_errors_name_the_fix():
    assert main(["--quick", "--no-progress", "--measure", "encoder,inference", "--out", "/nonexistent/x"]) == 2
    with pytest.raises(ValueError, match="only 'encoder'"):
        run_benchmark("dinov2-s", measure=["train"], progress=False, echo=False)
    with pytest.raises(ValueError, match="unknown preset"):
        run_benchmark("llava-ov-13b", progress=False, echo=False)
    with pytest.raises(ValueError, match="unknown method"):
        build_variants(12, methods=["laco", "tome"])


def test_activation_estimate_covers_what_a_training_step_saves(quick_run):
    out, _ = quick_run
    saved = json.loads((out / "bench.json").read_text())["measurements"]["train"]["none"]["memory"]["bytes"]
    tiny = PRESETS["tiny"]
    estimate = training_activation_bytes(
        TINY_ENCODER, TINY_LLM, element_bytes=4, prompt_tokens=tiny.prompt_tokens, answer_tokens=tiny.answer_tokens
    )
    assert saved <= estimate <= 1.5 * saved  # covers it, with the loss's transients, and not wildly more


def test_a_training_step_that_cannot_fit_is_refused_before_it_starts(monkeypatch, capsys):
    monkeypatch.setattr(runner_module, "_memory_gib", lambda field: 0.001)
    with pytest.raises(MemoryError, match=r"at batch 3 needs .*--batch"):
        run_benchmark(quick=True, batch=3, measure=["train"], two_stage=None, progress=False, echo=False)
    assert main(["--quick", "--no-progress", "--no-plot", "--measure", "train", "--out", "/nonexistent/x"]) == 2
    assert "activations" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Variants, presets, model switching


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


def test_switched_model_matches_one_built_from_config():
    model = build_mllm(TINY_ENCODER, TINY_LLM, dtype=torch.float32, device=torch.device("cpu"))
    switch = CompressionSwitch(model)
    placement = Placement((3, 6))
    first = switch.activate(placement)
    switch.activate(Placement())
    assert model.num_image_tokens() == 169
    again = switch.activate(placement)
    assert [id(m) for m in first] == [id(m) for m in again]  # the same compressor weights come back
    reference = build_mllm(TINY_ENCODER, TINY_LLM, dtype=torch.float32, device=torch.device("cpu"), placement=placement)
    assert dict((n, p.shape) for n, p in model.named_parameters()) == dict(
        (n, p.shape) for n, p in reference.named_parameters()
    )
    assert model.num_image_tokens() == reference.num_image_tokens() == 16


def test_yaml_preset_and_builtin_presets():
    preset = load_preset(REPO / "configs" / "bench" / "internvl-0.5b.yaml")
    assert preset.encoder.name == "internvit-300m" and preset.llm.name == "qwen2-0.5b"
    assert preset.default("cpu", "llm_layers") == 6 and preset.default("cuda", "dtype") == "bfloat16"
    assert preset.default("cpu", "measure") == ("encoder", "train", "prefill", "decode")
    assert PRESETS["llava-ov-0.5b"].encoder.layers == 27 and PRESETS["llava-ov-0.5b"].llm.name == "qwen2-0.5b"
    assert PRESETS["llava-ov-7b"].llm.width == 3584
    assert PRESETS["siglip-so400m"].default("cpu", "measure") == ("encoder",)
    for name in ("siglip-l16", "internvit-300m", "dinov2-s"):
        assert PRESETS[name].llm is None
    inline = preset_from_dict(
        {"encoder": {"name": "mine", "family": "siglip", "width": 64, "layers": 4, "heads": 4, "mlp": 128, "patch": 4, "image_size": 32},
         "llm": "qwen2-0.5b", "defaults": {"cpu": {"measure": "encoder, prefill"}}},
        name="inline",
    )  # fmt: skip
    assert inline.encoder.grid() == (8, 8) and inline.default("cpu", "measure") == ("encoder", "prefill")
    with pytest.raises(ValueError, match="unknown EncoderGeometry field"):
        preset_from_dict({"encoder": {"name": "x", "depth": 3}})


# ---------------------------------------------------------------------------------------------------------------
# Timer and statistics on fake workloads


def test_rounds_interleave_with_a_rotating_start():
    log: list[str] = []
    workloads = {name: (lambda name=name: log.append(name)) for name in "abc"}
    prepared: list[str] = []
    samples = run_interleaved(workloads, reps=3, warmup=1, prepare={"b": lambda: prepared.append("b")})
    assert log == list("abcbcacababc")  # warm-up round, then rounds rotated by 1, 2, 0
    assert prepared == ["b"] * 4
    assert samples["a"].rounds == [0, 1, 2] and samples["a"].slots == [2, 1, 0]
    assert all(len(s.seconds) == 3 for s in samples.values())


def test_timer_measures_a_known_workload_and_its_phases():
    import time

    def sleepy():
        time.sleep(0.02)
        return {"inner": 0.5}

    samples = run_interleaved({"fast": lambda: None, "slow": sleepy}, reps=4, warmup=0)
    assert samples["slow"].stats().median >= 0.02 > samples["fast"].stats().median
    assert samples["slow"].phases == {"inner": [0.5] * 4}
    assert min(paired_ratios(samples["slow"], samples["fast"])) > 10
    with pytest.raises(ValueError, match="reps"):
        run_interleaved({"a": lambda: None}, reps=0)
    with pytest.raises(ValueError, match="not workloads"):
        run_interleaved({"a": lambda: None}, reps=1, prepare={"b": lambda: None})


def test_statistics():
    stats = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stats.median, stats.q1, stats.q3, stats.iqr, stats.min, stats.max) == (3.0, 2.0, 4.0, 2.0, 1.0, 5.0)
    assert Stats.of([1.0, 2.0]).median == 1.5
    assert quantile([0.0, 10.0], 0.25) == 2.5
    assert Stats.of([7.0]).iqr == 0
    with pytest.raises(ValueError, match="empty"):
        Stats.of([])
    base = Samples([2.0, 4.0, 6.0], rounds=[0, 1, 2])
    variant = Samples([1.0, 1.0], rounds=[0, 2])
    assert paired_ratios(base, variant) == [2.0, 6.0]


def test_stack_timer_splits_forward_and_backward():
    layers = nn.ModuleList(nn.Linear(256, 256) for _ in range(3))
    head = nn.Linear(256, 1)
    timer = StackTimer(layers, Clock()).attach()
    x = torch.randn(512, 256, requires_grad=True)
    h = x
    for layer in layers:
        h = layer(h)
    head(h).sum().backward()
    assert timer.forward_seconds() > 0 and timer.backward_seconds() > 0
    timer.reset()
    with torch.no_grad():
        for layer in layers:
            x = layer(x)
    assert timer.forward_seconds() > 0 and timer.backward_seconds() == 0
    timer.detach()
    timer.reset()
    layers[0](x)
    assert timer.forward_seconds() == 0


def test_scaling_adds_the_untimed_layers():
    samples = Samples(
        [1.0, 2.0], {"stack_forward": [0.1, 0.2], "stack_backward": [0.3, 0.0], "stack_optimizer": [0.1, 0.0]}
    )
    assert _scale(samples, "train", 4.0) == pytest.approx([1.0 + 3 * 0.5, 2.0 + 3 * 0.2])
    assert _scale(samples, "encoder", 4.0) == [1.0, 2.0]
    assert _scale(samples, "train", 1.0) == [1.0, 2.0]


def test_optimizer_share_is_scaled_and_can_be_left_out_of_the_speedup():
    samples = Samples([1.0], {"optimizer": [0.3], "stack_optimizer": [0.1]})
    assert _scale_phase(samples, "optimizer", "stack_optimizer", 4.0) == pytest.approx([0.6])
    assert _scale_phase(Samples([1.0], {}), "optimizer", "stack_optimizer", 4.0) == []

    def measurement(total, optimizer, flops):
        return Measurement(Samples([total], {}, [0], [0]), [total], flops, flops, flops, 4, None, {}, [optimizer])

    variants = build_variants(12, depths=["1/4"], methods=["laco"], method_depth="1/4", two_stage=None, factor=2)
    rows = {
        "none": measurement(6.0, 1.0, 4e9),
        "external": measurement(5.0, 1.0, 4e9),
        "laco@1/4": measurement(3.0, 1.0, 2e9),
    }
    result = BenchResult(PRESETS["tiny"], {}, {}, variants, {"train": rows}, [], 0.0, 0.0)
    whole = result.speedup("train", "laco@1/4")
    compute = result.speedup("train", "laco@1/4", without_optimizer=True)
    assert (whole.measured, whole.bound) == (pytest.approx(5 / 3), 2.0)
    assert (compute.measured, compute.efficiency) == (pytest.approx(4 / 2), pytest.approx(1.0))


@pytest.mark.parametrize(("stack_none", "warned"), [(0.0101, True), (0.030, False)])
def test_a_prefill_that_does_not_grow_with_its_tokens_is_called_host_bound(stack_none, warned):
    def prefill(stack, sequence):
        samples = Samples([2 * stack], {"stack_forward": [stack]}, [0], [0])
        return Measurement(samples, [2 * stack], 1e9, 1e9, 1e9, sequence - 32, sequence)

    variants = build_variants(12, depths=["1/4"], methods=["laco"], method_depth="1/4", two_stage=None, factor=2)
    rows = {"none": prefill(stack_none, 761), "external": prefill(0.010, 228), "laco@1/4": prefill(0.010, 228)}
    result = BenchResult(PRESETS["tiny"], {}, {}, variants, {"prefill": rows}, [], 0.0, 0.0)
    warning = host_bound_warning(result)
    assert (warning is not None) == warned
    if warned:
        assert "3.3x the tokens, 1.01x the time" in warning and "--batch" in warning
    assert host_bound_warning(BenchResult(PRESETS["tiny"], {}, {}, variants, {}, [], 0.0, 0.0)) is None


@pytest.mark.parametrize(
    "kernel",
    [
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    ],
)
def test_grouped_query_attention_counts_as_repeated_heads(kernel):
    # Qwen2 passes 14 query and 2 key/value heads straight to the CUDA kernels; meta tensors stand in for a GPU.
    query = torch.empty(2, 8, 10, 16, device="meta")
    key_value = torch.empty(2, 2, 10, 16, device="meta")
    op = getattr(torch.ops.aten, kernel)
    with flop_counter_mode() as counter:
        op(query, key_value, key_value) if "flash" in kernel else op(query, key_value, key_value, None, False)
    assert counter.get_total_flops() == 2 * (2 * 2 * 8 * 10 * 10 * 16)  # QK^T and AV, every query head
    backward = _sdpa_backward_flop((2, 8, 10, 16), (2, 8, 10, 16), (2, 2, 10, 16), (2, 2, 10, 16))
    assert backward == sdpa_backward_flop_count((2, 8, 10, 16), (2, 8, 10, 16), (2, 8, 10, 16), (2, 8, 10, 16))


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
        grid=(8, 8),
        prefix=prefix,
        width=WIDTH,
        batch=2,
        dtype=torch.float32,
        device=torch.device("cpu"),
        reps=1,
        warmup=0,
        clock=Clock(),
        repeat=3,
    )
    assert len(calls) == 2 * (1 + 3)  # both token counts: once under the FLOP counter, then 3 runs per timed call
    assert (parts.tokens_before, parts.tokens_after) == (64 + prefix, 16 + prefix)
    assert parts.flops_block_after < parts.flops_block_before and parts.flops_merge > 0
    assert not laco_patch.is_patched(encoder)  # timed uncompressed: a block call runs the block alone


# ---------------------------------------------------------------------------------------------------------------
# Comparing runs


def test_compare_reads_runs_and_plots_the_headline_against_the_batch(quick_run, tmp_path, capsys):
    out, _ = quick_run
    second = tmp_path / "batch2"
    quick = [
        "--quick",
        "--no-progress",
        "--no-plot",
        "--measure",
        "encoder",
        "--methods",
        "laco",
        "--two-stage",
        "none",
    ]
    assert main([*quick, "--batch", "2", "--out", str(second)]) == 0
    capsys.readouterr()
    assert main(["--compare", str(out), str(second / "bench.json"), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "speed-up against batch" in text  # batch, measure and methods differ: batch is preferred
    encoder_rows = [
        line.removeprefix("tiny (CPU, 1 thr.)").split() for line in text.splitlines() if " encoder " in line
    ]
    assert [row[0] for row in encoder_rows] == ["1", "2"] and all(row[2] == "laco@1/4" for row in encoder_rows)
    assert sum(" train step " in line for line in text.splitlines()) == 1  # only the batch-1 run trained
    assert (tmp_path / "cmp" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Any placement both runs have can be followed instead of the headline.
    assert main(["--compare", str(out), str(second), "--variant", "laco@1/2", "--out", str(tmp_path / "cmp2")]) == 0
    text = capsys.readouterr().out
    assert "laco@1/2 vs its external-compression baseline" in text
    assert (
        sum(" laco@1/2 " in line for line in text.splitlines()) == len(MEASURES) + 1
    )  # batch 1: all; batch 2: encoder


def test_compare_errors_name_the_fix(quick_run, tmp_path, capsys):
    from laco.bench.sweep import load_runs, varying_setting

    out, _ = quick_run
    with pytest.raises(ValueError, match="at least two runs"):
        load_runs([out])
    (tmp_path / "other.json").write_text('{"schema": "something-else"}')
    with pytest.raises(ValueError, match="not a laco bench result"):
        load_runs([out, tmp_path / "other.json"])
    with pytest.raises(ValueError, match="--by"):
        varying_setting(load_runs([out, out]))
    assert main(["--compare", str(out), str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--compare", str(out), str(out), "--by", "batch", "--variant", "laco@9/10"]) == 2
    assert "has no variant 'laco@9/10'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Compiled models


def test_compiled_blocks_follow_every_placement_switch():
    # The hazard this design avoids: a whole-model graph keeps the placement it was traced with.
    from laco.bench.models import compile_blocks

    model = build_mllm(TINY_ENCODER, TINY_LLM, dtype=torch.float32, device=torch.device("cpu"))
    tower = model.model.vision_tower
    switch = CompressionSwitch(tower)
    pixels = torch.randn(
        2, 3, TINY_ENCODER.image_size, TINY_ENCODER.image_size, generator=torch.Generator().manual_seed(0)
    )
    placements = [Placement(), Placement((3,)), Placement((3, 6)), Placement((6,), "avgpool"), Placement((3,))]
    expected = []
    with torch.inference_mode():
        for placement in placements:
            switch.activate(placement)
            expected.append(tower(pixel_values=pixels).last_hidden_state)
        compile_blocks(switch.adapter.blocks(switch.encoder))
        for placement, reference in zip(placements, expected):
            switch.activate(placement)
            torch.testing.assert_close(tower(pixel_values=pixels).last_hidden_state, reference, rtol=1e-4, atol=1e-5)


def test_compiled_quick_run(tmp_path, capsys):
    options = ["--quick", "--no-progress", "--no-plot", "--methods", "laco", "--depths", "1/4", "--two-stage", "none"]
    assert main([*options, "--compile", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "cpu float32, compiled" in text and "decode not timed" in text
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["settings"]["compile"] is True and data["settings"]["warmup"] == 2
    assert list(data["measurements"]) == ["encoder", "train", "prefill"]  # decode left out of the defaults
    for rows in data["measurements"].values():
        for row in rows.values():
            assert row["flops_counted"] == pytest.approx(row["flops_predicted"], rel=0.02)
            assert len(row["seconds"]) == 3 and all(s > 0 for s in row["seconds"])
    assert data["measurements"]["train"]["none"]["memory"]["bytes"] > 0  # counted eagerly, saved-tensor hooks work


def test_compile_errors_name_the_fix():
    with pytest.raises(ValueError, match="does not time decode"):
        run_benchmark(quick=True, compile=True, measure=["decode"], progress=False, echo=False)
    with pytest.raises(ValueError, match="--warmup >= 2"):
        run_benchmark(quick=True, compile=True, warmup=1, measure=["encoder"], progress=False, echo=False)
