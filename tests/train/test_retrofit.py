"""`laco retrofit`: convert a trained model at several placements, recover each, report what each keeps."""

from __future__ import annotations

import json

import pytest
import yaml

from laco.cli import main
from laco.config import load_config
from laco.train import train
from laco.train.retrofit import SOURCE_ARM, kept, markdown_table

from tiny_models import run_config


def _record(arm, steps, accuracy, colour, prior=0.25):
    return {
        "arm": arm, "layers": "2", "steps": steps, "model": "m", "accuracy": accuracy, "groups": {"colour": colour},
        "group_priors": {"colour": prior}, "question_prior_accuracy": prior, "image_tokens": 4,
    }  # fmt: skip


def test_kept_is_a_fraction_of_the_source_per_type_next_to_points_above_the_prior():
    rows = kept([_record(SOURCE_ARM, 0, 0.8, 0.5), _record("layer2", 100, 0.4, 0.25)])
    assert rows[1]["kept"] == {"accuracy": pytest.approx(0.5), "colour": pytest.approx(0.5)}
    assert rows[1]["above prior"] == {"colour": pytest.approx(0.0)}
    table = markdown_table([_record(SOURCE_ARM, 0, 0.8, 0.5), _record("layer2", 100, 0.4, 0.25)])
    assert "| layer2 (`--layer 2`) | 100 | 4 | 40.0 (0.50) |" in table and "25.0 (0.50; +0.0)" in table
    with pytest.raises(ValueError, match="source"):
        kept([_record("layer2", 0, 0.4, 0.25)])


@pytest.fixture(scope="module")
def source(parts, tmp_path_factory):
    """A tiny uncompressed model, trained as a user's would be."""
    directory = tmp_path_factory.mktemp("source")
    config = run_config(
        parts, directory / "run", steps=(2, 2), model={"compression": {"layers": "none"}}, data={"max_length": 128}
    )
    train(load_config(_write(directory / "source.yaml", config)), quiet=True)
    return directory / "run" / "final"


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def _recovery_config(parts, tmp_path):
    config = run_config(parts, tmp_path / "unused", data={"max_length": 128})
    config["model"] = {"init_from": "converted"}
    config["stages"] = [{**config["stages"][0], "name": "recover"}]
    return _write(tmp_path / "recover.yaml", config)


def test_retrofit_scores_every_conversion_and_step_count_and_resumes(parts, source, tmp_path, capsys):
    out, config = tmp_path / "retrofit", _recovery_config(parts, tmp_path)
    args = ["retrofit", str(source), "--layers", "2;last", "--steps", "0,2", "--output-dir", str(out),
            "--config", str(config), "--method", "laco"]  # fmt: skip
    assert main(args) == 0
    records = json.loads((out / "retrofit.json").read_text())["records"]
    assert [(r["arm"], r["steps"]) for r in records] == [
        (SOURCE_ARM, 0),
        ("external", 0),
        ("external", 2),
        ("layer2", 0),
        ("layer2", 2),
    ]
    assert {r["image_tokens"] for r in records if r["arm"] != SOURCE_ARM} == {records[0]["image_tokens"] // 4}
    assert (out / "retrofit.png").stat().st_size > 0 and "kept" in (out / "retrofit.md").read_text()
    assert (out / "layer2" / "steps2" / "final" / "model.safetensors").is_file()
    trained = (out / "layer2" / "steps2" / "final" / "model.safetensors").stat().st_mtime_ns

    capsys.readouterr()
    assert main(args) == 0  # a rerun scores nothing again and trains nothing again
    assert (out / "layer2" / "steps2" / "final" / "model.safetensors").stat().st_mtime_ns == trained
    assert json.loads((out / "retrofit.json").read_text())["records"] == records

    with pytest.raises(SystemExit, match="converted with"):
        main([*args[:-1], "avgpool"])


def test_retrofit_refuses_a_config_with_several_stages(parts, source, tmp_path):
    config = run_config(parts, tmp_path / "unused")
    config["model"] = {"init_from": "converted"}
    with pytest.raises(SystemExit, match="exactly one"):
        main(["retrofit", str(source), "--config", str(_write(tmp_path / "two.yaml", config)), "--output-dir",
              str(tmp_path / "r")])  # fmt: skip
