"""Study bookkeeping (grid, resume, caching, seeds) and that every variant builds and trains one step."""

import json

import numpy as np
import pytest
import torch

from laco.study import QUICK, Study, StudyConfig, StudyVariant, load_study_config, main, missing_cells, run_study
from laco.study.grid import _method_variants
from laco.study.probe import CompressedSuffix, train_cell
from laco.study.report import aggregate, markdown_tables
from laco.study.runner import cell_path


def test_the_default_grid_covers_every_method_depth_and_shortcut():
    names = {v.name for v in StudyConfig().variants()}
    assert "none" in names
    for depth in ("1/12", "1/6", "1/4", "1/2", "ext"):
        assert f"laco@{depth}" in names and f"avgpool@{depth}" in names
        for method in ("pixel_shuffle", "ldpv2", "tokenpacker"):
            assert f"{method}@{depth}" in names and f"{method}+sc@{depth}" in names


def test_variant_names_and_layers():
    assert StudyVariant("laco", ("1/4",)).layers(12) == (3,)
    assert StudyVariant("laco", ("1/4",)).layers(27) == (7,)
    assert StudyVariant("laco", ("ext",)).layers(12) == (12,)
    assert StudyVariant("laco", ("1/4", "1/2")).name == "laco@1/4+1/2"
    assert StudyVariant("laco", ("1/4",), init="layer").name == "laco[layer]@1/4"
    assert StudyVariant("laco", ("1/4",), factor=3).name == "lacox3@1/4"
    assert StudyVariant("ldpv2", ("1/2",), shortcut=True).name == "ldpv2+sc@1/2"
    assert [v.name for v in _method_variants("tokenpacker", "1/6", True)] == ["tokenpacker@1/6", "tokenpacker+sc@1/6"]


def test_unknown_study_key_is_an_error(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("steps: 3\nseed: 1\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['seed'\]"):
        load_study_config(path)


@pytest.fixture(scope="module")
def study_encoder():
    from laco.pretrained import load_dinov2_small

    return load_dinov2_small().eval().requires_grad_(False)


EVERY_VARIANT = StudyConfig(
    extra=[
        {"method": "laco", "depth": ["1/4", "1/2"]},
        {"method": "laco", "depth": ["1/4"], "init": "layer"},
        {"method": "laco", "depth": ["1/4"], "init": "default"},
        {"method": "laco", "depth": ["1/4"], "branch_scale": 0.1, "init": "default"},
        {"method": "laco", "depth": ["1/4"], "factor": 3},
    ]
).variants()


@pytest.mark.parametrize("variant", EVERY_VARIANT, ids=lambda v: v.name)
def test_every_variant_builds_and_trains_one_step(variant, study_encoder):
    placement = variant.placement(12)
    grid = (6, 6) if variant.factor == 3 else (8, 8)
    model = CompressedSuffix(study_encoder, placement, num_classes=3, grid=grid)
    inputs = torch.randn(4, 1 + grid[0] * grid[1], 384, dtype=torch.bfloat16)
    labels = torch.tensor([0, 1, 2, 0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_cell(model, inputs, labels, inputs, labels, steps=1, batch_size=4, learning_rate=1e-3, seed=0)
    assert 0.0 <= result.accuracy <= 1.0 and np.isfinite(result.train_loss)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("probe") for n in changed)
    if variant.method not in (None, "avgpool"):
        assert any(n.startswith("compressors") for n in changed), "the compressor must receive gradient"


def test_seeds_are_reproducible_and_distinct(study_encoder):
    from laco import Placement

    inputs = torch.randn(16, 65, 384, dtype=torch.bfloat16)
    labels = torch.arange(16) % 3
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        model = CompressedSuffix(study_encoder, Placement((9,), "pixel_shuffle", 2), 3, (8, 8))
        runs.append(
            train_cell(model, inputs, labels, inputs, labels, steps=3, batch_size=8, learning_rate=1e-3, seed=seed)
        )
    assert runs[0].train_loss == runs[1].train_loss
    assert runs[0].train_loss != runs[2].train_loss


def test_quick_study_runs_resumes_and_caches(tmp_path, capsys):
    config = load_study_config(
        None,
        {
            **QUICK,
            "output_dir": str(tmp_path),
            "depths": ["ext"],
            "methods": ["laco", "avgpool"],
            "max_train": 32,
            "max_test": 16,
            "steps": 2,
        },
    )
    outputs = run_study(config, progress=False)
    cells = sorted((tmp_path / "cells").glob("*/*/seed*.json"))
    expected = len(config.variants()) * len(config.tasks) * len(config.seeds)
    assert len(cells) == expected
    assert outputs["tables"].exists() and all(p.exists() for p in outputs["plots"])
    assert (tmp_path / "features" / "easyvqa-color.safetensors").exists()
    rows = json.loads(outputs["json"].read_text())["rows"]
    assert {r["variant"] for r in rows} == {v.name for v in config.variants()}

    # kill simulation: drop one finished cell; a rerun recomputes only that one and keeps the rest untouched
    victim = cell_path(tmp_path, "easyvqa-color", StudyVariant("laco", ("ext",)), 1)
    kept = {p: p.stat().st_mtime_ns for p in cells if p != victim}
    victim.unlink()
    # --report-only writes the report from what is there and names the missing cell, training nothing
    assert missing_cells(config) == [("easyvqa-color", "laco@ext", 1)]
    report = tmp_path / "study_tables.md"
    report.unlink()
    assert main(["--config", str(tmp_path / "study_config.json"), "--report-only"]) == 0
    assert report.exists() and not victim.exists()
    assert "1 cells not finished yet" in capsys.readouterr().out

    study = Study(config, progress=False)
    study.run()
    assert victim.exists()
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())


def test_parallel_workers_give_the_cells_a_serial_run_gives(tmp_path):
    settings = {
        **QUICK,
        "depths": ["1/2"],
        "methods": ["laco", "avgpool"],
        "shortcut_ablation": False,
        "max_train": 32,
        "max_test": 16,
        "steps": 2,
    }
    serial = load_study_config(None, {**settings, "output_dir": str(tmp_path / "serial"), "threads": 1})
    parallel = load_study_config(None, {**settings, "output_dir": str(tmp_path / "parallel"), "threads": 2, "jobs": 2})
    run_study(serial, progress=False)
    run_study(parallel, progress=False)  # two one-thread workers, as the serial run's one thread

    def results(root):
        cells = sorted((root / "cells").glob("*/*/seed*.json"))
        return {str(p.relative_to(root)): json.loads(p.read_text()) for p in cells}

    one, two = results(tmp_path / "serial"), results(tmp_path / "parallel")
    assert list(one) == list(two) and len(one) == len(serial.variants()) * len(serial.seeds)
    for name, cell in one.items():
        assert (cell["accuracy"], cell["train_loss"]) == (two[name]["accuracy"], two[name]["train_loss"]), name
    assert json.loads((tmp_path / "parallel" / "study_config.json").read_text())["jobs"] == 2


def test_report_tables_show_mean_and_spread():
    cells = [
        {
            "task": "t",
            "variant": v,
            "family": v.split("@")[0],
            "method": v.split("@")[0],
            "depth": d,
            "layers": [3],
            "seed": s,
            "accuracy": a,
            "encoder_gflops": 1.0,
            "encoder_ms_per_16": 2.0,
            "seconds": 1.0,
            "majority_accuracy": 0.3,
            "spatial_detail": True,
        }
        for v, d, s, a in [("laco@1/4", ["1/4"], 0, 0.8), ("laco@1/4", ["1/4"], 1, 0.6), ("none", [], 0, 0.9)]
    ]
    rows = aggregate(cells)
    laco = next(r for r in rows if r["variant"] == "laco@1/4")
    assert laco["accuracy"] == pytest.approx(0.7) and laco["accuracy_std"] == pytest.approx(0.1414, abs=1e-3)
    table = markdown_tables(rows)
    assert "70.0% ± 14.1% (n=2)" in table and "-20.0" in table


def test_changed_training_settings_are_refused_on_an_existing_study(tmp_path):
    settings = {
        **QUICK,
        "output_dir": str(tmp_path),
        "depths": ["ext"],
        "methods": ["avgpool"],
        "max_train": 16,
        "max_test": 8,
        "steps": 1,
        "seeds": [0],
    }
    run_study(load_study_config(None, settings), progress=False)
    changed = load_study_config(None, {**settings, "steps": 2})
    with pytest.raises(ValueError, match="trained with other settings"):
        run_study(changed, progress=False)


def test_shipped_study_configs_match_the_code():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs" / "study"
    assert load_study_config(configs / "default.yaml") == StudyConfig()
    assert load_study_config(configs / "quick.yaml") == load_study_config(None, QUICK)
    assert load_study_config(configs / "budget.yaml").steps == 300


def test_docs_keep_their_text_and_get_fresh_tables(tmp_path):
    from laco.study.report import update_docs

    docs = tmp_path / "study.md"
    docs.write_text("# Study\n\nHand-written reading.\n")
    plot = tmp_path / "study_depth.png"
    plot.write_bytes(b"png")
    update_docs(docs, "| old |", [plot], "study")
    update_docs(docs, "| new |", [plot], "study")
    text = docs.read_text()
    assert "Hand-written reading." in text and "| new |" in text and "| old |" not in text
    assert text.count("generated tables begin (study)") == 1
    assert (tmp_path / "figures" / "study_study_depth.png").exists()


def test_study_flops_are_the_bench_counters_with_attention_counted(tmp_path):
    """The study counts encoder FLOPs with the benchmark's counter, which also counts fused CPU attention."""
    from laco import apply, remove
    from laco.measure.flop_counting import flop_counter_mode

    config = load_study_config(None, {**QUICK, "output_dir": str(tmp_path), "depths": ["1/2"], "methods": ["laco"]})
    study = Study(config, progress=False)
    variants = [v for v in config.variants() if v.name in ("none", "laco@1/2")]
    costs = study.encoder_costs(variants)
    pixels = torch.randn(1, 3, config.image_size, config.image_size)
    for variant in variants:
        placement = variant.placement(study.depth)
        if placement.compressed:
            apply(study.encoder, placement)
        with torch.no_grad(), flop_counter_mode() as counter:
            study.encoder(pixels)
        if placement.compressed:
            remove(study.encoder)
        assert costs[variant.name]["encoder_gflops"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-9)
    # attention is in the count: more than the dense products alone (what a plain FlopCounterMode sees on CPU SDPA)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        study.encoder(pixels)
    assert costs["none"]["encoder_gflops"] > plain.get_total_flops() / 1e9


def test_recounted_costs_redraw_a_docs_page_without_the_cells(tmp_path):
    """``--recount-costs``: the rows a docs page recorded are redrawn with new encoder FLOPs; accuracies stay."""
    from laco.study.report import refresh_costs, save_rows, write_report

    cells = [
        {
            "task": "easyvqa-color", "variant": name, "family": name.split("@")[0], "method": name.split("@")[0],
            "depth": ["1/2"] if "@" in name else [], "layers": [6] if "@" in name else [], "seed": seed,
            "accuracy": accuracy, "train_loss": 0.1, "seconds": 1.0, "trainable_parameters": 1,
            "encoder_gflops": 2.79 if name == "none" else 1.79, "encoder_ms_per_16": 10.0,
            "majority_accuracy": 0.125, "spatial_detail": False,
        }
        for name, accuracy in (("none", 0.99), ("laco@1/2", 0.97))
        for seed in (0, 1)
    ]  # fmt: skip
    docs = tmp_path / "docs" / "study.md"
    docs.parent.mkdir()
    docs.write_text("# Study\n\nhand-written text stays\n")
    write_report(cells, tmp_path / "study", docs)
    assert "| laco@1/2 | 6 | 97.0% ± 0.0% (n=2) | -2.0 | 1.79 |" in docs.read_text()
    rows = refresh_costs(
        docs, "study", {"none": {"encoder_gflops": 2.87}, "laco@1/2": {"encoder_gflops": 1.84}}, tmp_path
    )
    text = docs.read_text()
    assert "| laco@1/2 | 6 | 97.0% ± 0.0% (n=2) | -2.0 | 1.84 |" in text and "| none | - | 99.0%" in text
    assert "hand-written text stays" in text and text.count("generated tables begin (study)") == 1
    assert {r["variant"]: r["encoder_gflops"] for r in rows} == {"none": 2.87, "laco@1/2": 1.84}
    with pytest.raises(ValueError, match=r"no cost counted for variant\(s\) \['laco@1/2'\]"):
        refresh_costs(docs, "study", {"none": {"encoder_gflops": 1.0}}, tmp_path)
    save_rows(docs, "other", rows)
    assert (docs.parent / "study-data" / "other.json").exists()
