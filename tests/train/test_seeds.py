"""Seeds, not single runs: `laco train --seeds` records every seed, `laco table` reports mean ± std per arm."""

import json

import pytest

from laco.cli import main
from laco.train.seeds import SeedRecord, markdown_table, record_seed, summarize

from tiny_models import write_run_config

MACHINE = {"cpu": "Test CPU", "cores": 2, "torch_threads": 2, "gpu": None}


def _record(seed: int, accuracy: float, shape: float) -> SeedRecord:
    groups = {"yes/no": 0.8, "shape": shape, "colour": 0.5}
    return SeedRecord(
        seed, f"run/seed{seed}", 600.0 + seed * 60, 500.0, 100.0, accuracy, groups, 0.37, 0.67, 16, "fp32"
    )


def test_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    arm = tmp_path / "laco"
    for seed, accuracy, shape in ((0, 0.80, 0.90), (1, 0.84, 0.94), (2, 0.82, 0.98)):
        record_seed(arm, _record(seed, accuracy, shape), MACHINE)
    record_seed(arm, _record(1, 0.84, 0.94), MACHINE)  # a seed recorded again replaces, never duplicates
    summary = summarize(arm)
    assert summary["n"] == 3 and summary["seeds"] == [0, 1, 2]
    assert summary["accuracy"] == pytest.approx((0.82, 0.02))
    assert summary["shape"] == pytest.approx((0.94, 0.04))
    assert summary["wall_seconds"] == pytest.approx((660.0, 60.0))


def test_table_has_one_row_per_arm_the_blind_baselines_and_the_machine(tmp_path):
    for arm, accuracy in (("laco", 0.80), ("external", 0.85)):
        for seed in (0, 1):
            record_seed(tmp_path / arm, _record(seed, accuracy + 0.01 * seed, 0.9), MACHINE)
    text, summaries = markdown_table([tmp_path / "laco", tmp_path / "external"])
    assert "| laco | 16 | - | 2 | 10.5 ± 0.7 | 80.5 ± 0.7 | 80.0 ± 0.0 | 90.0 ± 0.0 | 50.0 ± 0.0 |" in text
    assert "| external |" in text and "majority 37.0 ± 0.0, question-only 67.0 ± 0.0" in text
    assert "Test CPU, 2 cores, 2 torch threads" in text and [s["arm"] for s in summaries] == ["laco", "external"]


def test_a_missing_arm_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="laco train --seeds 0,1,2"):
        summarize(tmp_path / "nothing")


def test_train_seeds_runs_each_seed_and_the_table_reads_them(parts, tmp_path):
    config = write_run_config(tmp_path / "run.yaml", parts, tmp_path / "arm")
    assert main(["train", "--config", str(config), "--seeds", "0,1"]) == 0
    data = json.loads((tmp_path / "arm" / "seeds.json").read_text())
    assert [s["seed"] for s in data["seeds"]] == [0, 1] and data["machine"]["cores"] >= 1
    assert all((tmp_path / "arm" / f"seed{seed}" / "final" / "model.safetensors").exists() for seed in (0, 1))
    assert all(s["precision"] == "fp32" and s["wall_seconds"] > 0 and s["image_tokens"] == 16 for s in data["seeds"])
    out = tmp_path / "table.md"
    assert main(["table", str(tmp_path / "arm"), "--out", str(out)]) == 0
    # a tiny random encoder has no laco.cost geometry, so its speed-up is unknown rather than guessed
    assert "| arm | 16 | - | 2 |" in out.read_text() and out.with_suffix(".json").exists()
    # the same command again: every seed is finished, so nothing is retrained or rescored and the records stay
    assert main(["train", "--config", str(config), "--seeds", "0,1"]) == 0
    assert json.loads((tmp_path / "arm" / "seeds.json").read_text())["seeds"] == data["seeds"]


@pytest.mark.parametrize("seeds", ["0,0", "a", "-1", ""])
def test_bad_seed_lists_are_refused(seeds, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--seeds", seeds])
    assert "--seeds" in capsys.readouterr().err


def test_table_reports_each_type_above_its_prior_and_plots_quality_against_the_tower_bound(tmp_path):
    from dataclasses import replace

    from laco import Placement
    from laco.train.seeds import tower_speedup_bound, write_table

    priors = {"yes/no": 0.83, "shape": 0.36, "colour": 0.30}
    bounds = {"laco": tower_speedup_bound("dinov2-small", 112, Placement("1/4")), "none": 1.0}
    for arm, shape in (("laco", 0.40), ("none", 0.97)):
        for seed in (0, 1):
            record = replace(_record(seed, 0.8, shape), group_priors=priors, tower_speedup_bound=bounds[arm])
            record_seed(tmp_path / arm, record, MACHINE)
    text, summaries = markdown_table([tmp_path / "laco", tmp_path / "none"])
    assert "| 80.0 ± 0.0 (-3.0) | 40.0 ± 0.0 (+4.0) | 50.0 ± 0.0 (+20.0) |" in text
    assert "question-only 67.0 ± 0.0 | 83.0 ± 0.0 | 36.0 ± 0.0 | 30.0 ± 0.0 |" in text
    assert bounds["laco"] == pytest.approx(2.19, abs=0.01)  # LaCo after layer 3 of DINOv2-S's 12 at 112 px
    written = write_table([tmp_path / "laco", tmp_path / "none"], tmp_path / "frontier.md")
    assert [path.suffix for path in written] == [".md", ".json", ".png"] and written[2].stat().st_size > 1000
    assert tower_speedup_bound("google/siglip-so400m-patch14-384", None, Placement("1/4")) is None  # no geometry


def test_the_default_rule_picks_the_fastest_tower_within_the_margins_of_external(tmp_path):
    from dataclasses import replace

    from laco.train.seeds import choose_default

    # (arm, overall, shape, colour, tower speed-up): layer2 misses shape by 10 points, layer4 and layer6 qualify
    arms = [("external", 0.80, 0.80, 0.55, 1.0), ("layer2", 0.80, 0.65, 0.90, 2.6), ("layer4", 0.795, 0.76, 0.9, 2.0),
            ("layer6", 0.82, 0.78, 0.95, 1.6), ("layer9", 0.85, 0.9, 0.9, 1.2), ("none", 0.9, 0.97, 0.8, 1.0)]  # fmt: skip
    for arm, overall, shape, colour, bound in arms:
        record = _record(0, overall, shape)
        record = replace(record, groups={**record.groups, "colour": colour}, tower_speedup_bound=bound)
        record_seed(tmp_path / arm, record, MACHINE)
    text, summaries = markdown_table([tmp_path / arm for arm, *_ in arms])
    rule = choose_default(summaries)
    assert rule["chosen"] == "layer4"
    misses = {c["arm"]: c for c in rule["candidates"]}
    assert misses["layer2"]["shortfall"]["shape"] == pytest.approx(0.10) and not misses["layer2"]["meets"]
    assert not misses["layer9"]["meets"] and "none" not in misses  # below 1.3x; the uncompressed arm is no candidate
    assert "Default by rule" in text and "**layer4**" in text and "layer2 (2.60x, 1 seed): misses shape by 10.0" in text
    assert choose_default(summaries[1:]) is None  # no external arm: no verdict


def test_frontier_arms_are_named_by_placement():
    from laco.cli.train import frontier_arms

    assert frontier_arms("2;3,9;last;none") == {"layer2": "2", "layer3+9": "3,9", "external": "last", "none": "none"}
    with pytest.raises(Exception, match="twice"):
        frontier_arms("2;2")


def test_train_frontier_trains_one_arm_per_placement_and_writes_the_table(parts, tmp_path):
    config = write_run_config(tmp_path / "run.yaml", parts, tmp_path / "frontier")
    assert main(["train", "--config", str(config), "--frontier", "2;1,3", "--seeds", "0"]) == 0
    for arm in ("layer2", "layer1+3"):
        assert (tmp_path / "frontier" / arm / "seed0" / "final" / "model.safetensors").exists()
    table = (tmp_path / "frontier" / "frontier.md").read_text()
    assert "| layer2 | 16 |" in table and "| layer1+3 | 4 |" in table
    with pytest.raises(SystemExit, match="give --seeds"):
        main(["train", "--config", str(config), "--frontier", "2;1,3"])
