"""Comparing runs: fresh ones, and the runs committed under docs/ (bench.json stays readable)."""

from pathlib import Path

import pytest

from laco.bench import main
from laco.bench.sweep import load_runs, rows, varying_setting

REPO = Path(__file__).resolve().parents[2]
MEASURES = ["encoder", "train", "prefill", "decode"]
COMMITTED = sorted((REPO / "docs").glob("bench-*/**/*.json"))


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


def test_the_committed_runs_still_compare(tmp_path, capsys):
    assert len(COMMITTED) >= 10, "the raw runs under docs/bench-cpu and docs/bench-gpu are gone"
    runs = load_runs(COMMITTED)
    assert {row["kind"] for row in rows(runs, "batch")} == set(MEASURES)
    gpu = REPO / "docs" / "bench-gpu"
    sweep = [gpu / "lease2" / f"llava-ov-0.5b-batch{b}.json" for b in ("8", "16", "32-full")]
    assert main(["--compare", *map(str, sweep), "--out", str(tmp_path / "gpu")]) == 0
    text = capsys.readouterr().out
    assert "speed-up against batch" in text
    assert "llava-ov-0.5b (NVIDIA H200)  32     TTFT         laco@1/4  1.77x [1.75-1.77]  1.79x       0.99" in text
    cpu = [REPO / "docs" / "bench-cpu" / f"llava-ov-0.5b-batch2-twostage-{mode}.json" for mode in ("eager", "compiled")]
    assert main(["--compare", *map(str, cpu), "--variant", "laco@1/4+1/2", "--out", str(tmp_path / "cpu")]) == 0
    text = capsys.readouterr().out
    assert "speed-up against compile" in text and text.count("laco@1/4+1/2  ") == 6
