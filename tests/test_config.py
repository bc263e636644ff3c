from pathlib import Path

import pytest

from laco import Placement
from laco.config import RunConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_yaml_spells_out_the_embedded_default():
    assert load_config(CONFIGS / "default.yaml").to_dict() == RunConfig().to_dict()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_loads(path):
    assert load_config(path).stages


def test_overrides_reach_nested_keys_and_stage_lists():
    config = load_config(None, ["model.compression.layers=1/2", "stages.1.max_steps=7", "data.limit=5"])
    assert config.model.compression == Placement("1/2")
    assert config.stages[1].max_steps == 7 and config.stages[0].max_steps == RunConfig().stages[0].max_steps
    assert config.data.limit == 5


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.visoin=x"], r"unknown key\(s\) \['visoin'\] in model"),
        (["stages.0.trainable=[decoder]"], r"unknown trainable part\(s\) \['decoder'\]"),
        (["stages.0.part_learning_rates={head: 0.1}"], "part_learning_rates for unknown part"),
        (["stages.0.answer_balance=2"], "answer_balance must lie in"),
        (["data.dataset=coco"], "data.dataset must be"),
        (["data.dataset=llava"], "needs data.train_json"),
        (["stages.0.max_steps=0"], "must be >= 1"),
        (["model.compression.layers"], "must look like key.path=value"),
        (["model.image_mean=[0.5, 0.5]"], r"model.image_mean takes one number per RGB channel"),
        (["model.image_std=[0.5, 0, 0.5]"], r"model.image_std takes one number per RGB channel \(3, > 0\)"),
        (["model.resize=letterbox"], "model.resize must be one of"),
        (["model.init_from=dst", "model.vision=x"], r"model.vision would not be used: remove it .*laco convert"),
        (
            ["model.init_from=dst", "model.compression.layers=2", "model.image_size=64"],
            r"model.compression, model.image_size would not be used: remove them",
        ),
        (["stages.0.objective=distill"], r"stages.0.objective must be one of \('next_token', 'tower_distillation'\)"),
        (["stages.0.distill_loss=l1"], r"stages.0.distill_loss must be one of \('mse', 'cosine'\)"),
        (
            ["stages.0.objective=tower_distillation"],
            r"stages.0.trainable: a tower_distillation stage .* trains only \['compressor', 'vision_after_merge'\]; "
            r"got \['compressor', 'projector'\]\. Use e.g. trainable: \[compressor\]",
        ),
        (
            [
                "stages.0.objective=tower_distillation",
                "stages.0.trainable=[compressor]",
                "model.compression.layers=none",
            ],
            r"stages.0.objective: tower_distillation .* model.compression.layers is none; set layers",
        ),
        (["stages.1.vision_learning_rate_scale=0"], r"stages.1.vision_learning_rate_scale must be > 0 .* e.g. 0.2"),
    ],
)
def test_bad_configs_are_reported(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="see configs/"):
        load_config(tmp_path / "nope.yaml")


def test_image_settings_default_to_the_encoders_own_except_the_offline_default():
    """The issue: --vision <SigLIP dir> got the default run's 112 px forced on it."""
    assert load_config(None).model.image_size == 112  # the embedded default run (offline DINOv2-S) as before
    siglip = load_config(None, ["model.vision=/models/siglip"]).model
    assert (siglip.image_size, siglip.image_mean, siglip.image_std, siglip.resize) == (None, None, None, None)
    given = load_config(None, ["model.vision=/models/siglip", "model.image_size=384", "model.image_mean=[0.5,0.5,0.5]"])
    assert given.model.image_overrides() == {
        "image_size": 384,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": None,
        "resize": None,
    }


def test_a_run_from_a_checkpoint_leaves_the_assembled_models_keys_unset():
    model = load_config(CONFIGS / "init-from.yaml", ["model.init_from=runs/x/final"]).model
    assert model.init_from == "runs/x/final"
    assert (model.vision, model.llm, model.compression, model.image_size) == (None, None, None, None)


@pytest.mark.parametrize(
    "override",
    ["model.compression.method=avgpool", "model.compression.options={init: default, branch_scale: 0.1}"],
)
def test_setting_one_placement_field_keeps_the_default_layers(override):
    # a placement built from the one field given would compress nowhere: the run would train an uncompressed model
    config = load_config(None, [override])
    assert config.model.compression.layers == load_config(None, []).model.compression.layers != ()


def test_a_config_file_with_a_partial_compression_keeps_the_default_layers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  compression:\n    method: avgpool\n")
    compression = load_config(path).model.compression
    assert compression.method == "avgpool" and compression.layers == load_config(None, []).model.compression.layers


def test_recovery_stage_keys_have_documented_defaults():
    stage = load_config(None).stages[0]
    assert (stage.objective, stage.distill_loss, stage.vision_learning_rate_scale) == ("next_token", "mse", 1.0)
    distill = load_config(
        None, ["stages.0.objective=tower_distillation", "stages.0.trainable=[compressor, vision_after_merge]"]
    ).stages[0]
    assert distill.objective == "tower_distillation"


def test_vision_learning_rate_scale_sets_the_rate_of_unnamed_vision_parts():
    from laco.config import StageConfig
    from laco.train.freezing import stage_part_rates

    stage = StageConfig(trainable=["compressor", "vision_after_merge", "llm"], learning_rate=1e-3)
    assert stage_part_rates(stage) == {}  # scale 1: the stage's rate, as before the key existed
    stage.vision_learning_rate_scale = 0.2
    assert stage_part_rates(stage) == {"vision_after_merge": pytest.approx(2e-4)}
    stage.part_learning_rates = {"vision_after_merge": 5e-5}
    assert stage_part_rates(stage) == {"vision_after_merge": 5e-5}  # an explicit rate wins


def test_image_position_is_checked_before_a_run_starts():
    config = load_config(None, ["model.image_position=after_question"]).validate()
    assert config.model.image_position == "after_question"
    with pytest.raises(ValueError, match="model.image_position must be one of .*got 'first'"):
        load_config(None, ["model.image_position=first"]).validate()


def test_an_image_position_a_checkpoint_would_ignore_is_refused():
    with pytest.raises(ValueError, match="model.image_position would not be used"):
        load_config(None, ["model.init_from=ckpt", "model.image_position=after_question"]).validate()
