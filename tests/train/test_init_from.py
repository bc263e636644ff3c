"""`laco train --init-from`: fine-tune a `laco convert` output (stock LLaVA or laco's own model) in stages."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import laco
from laco.cli import main
from laco.config import load_config
from laco.mllm import LacoLlavaForConditionalGeneration, LacoProcessor, build_mllm
from laco.train import train
from laco.train.init_from import InitFromError, check_init_from
from laco.train.resume import ConfigMismatch

from tiny_mllms import llava
from tiny_models import tiny_encoder, tiny_llm, tiny_tokenizer, write_color_dataset

STAGES = [
    {"name": "merge", "trainable": ["compressor", "vision_after_merge"], "max_steps": 2, "batch_size": 4},
    {"name": "all", "trainable": ["compressor", "projector", "llm"], "max_steps": 2, "batch_size": 4},
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A stock tiny LLaVA (CLIP tower, 4 layers) and its processor, converted with a merge after layer 2."""
    directory = tmp_path_factory.mktemp("init-from")
    tiny = llava()
    tiny.model.save_pretrained(directory / "llava")
    tiny.processor.save_pretrained(directory / "llava")
    laco.convert(directory / "llava", directory / "llava-laco", "1/2")
    data_json, images = write_color_dataset(directory / "data", count=16)
    return directory / "llava-laco", data_json, images


def write_config(path, init_from, data_json, images, output, stages=STAGES):
    config = {
        "output_dir": str(output),
        "model": {"init_from": str(init_from)},
        "data": {
            "dataset": "llava",
            "train_json": str(data_json),
            "eval_json": str(data_json),
            "image_folder": str(images),
            "max_length": 64,
        },
        "stages": stages,
        "training": {"precision": "fp32", "logging_steps": 1, "save_steps": 100, "threads": 1},
        "eval": {"limit": 4, "batch_size": 4, "max_new_tokens": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_converted_stock_llava_trains_the_merge_and_the_layers_after_it_first(converted, tmp_path):
    dst, data_json, images = converted
    config = load_config(write_config(tmp_path / "run.yaml", dst, data_json, images, tmp_path / "run"))
    summary = train(config, quiet=True)
    assert summary["init_from"] == str(dst) and [s["steps"] for s in summary["stages"]] == [2, 2]
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert recorded["init_from"] == str(dst) and recorded["image_transform"]["resize"] == "shortest_edge"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["init_from"] == str(dst)

    # stage 1 moved the merge and the encoder layers after it (2 and 3 of 4), nothing else
    start = LacoLlavaForConditionalGeneration.from_pretrained(dst).state_dict()
    merged = LacoLlavaForConditionalGeneration.from_pretrained(tmp_path / "run" / "merge" / "final").state_dict()
    assert start.keys() == merged.keys()
    changed = {name for name, tensor in merged.items() if not torch.equal(tensor, start[name])}
    assert any("encoder.layers.3." in name for name in changed) and any("laco_compressor" in name for name in changed)
    after_merge = ("laco_compressor", ".encoder.layers.2.", ".encoder.layers.3.")
    assert all(any(part in name for part in after_merge) for name in changed), sorted(changed)

    final = tmp_path / "run" / "final"
    model, processor = AutoModelForImageTextToText.from_pretrained(final), AutoProcessor.from_pretrained(final)
    assert isinstance(model, LacoLlavaForConditionalGeneration) and isinstance(processor, LacoProcessor)
    assert processor.num_image_tokens == laco.num_tokens(model) == 16


def test_a_rerun_from_another_checkpoint_is_refused(converted, tmp_path):
    dst, data_json, images = converted
    one_stage = STAGES[:1]
    config = load_config(write_config(tmp_path / "run.yaml", dst, data_json, images, tmp_path / "run", one_stage))
    train(config, quiet=True)
    other = tmp_path / "other"
    laco.convert(dst.parent / "llava", other, 1)
    changed = load_config(write_config(tmp_path / "b.yaml", other, data_json, images, tmp_path / "run", one_stage))
    with pytest.raises(ConfigMismatch, match=rf'model.init_from: "{dst}" -> "{other}"'):
        train(changed, quiet=True)


def test_a_converted_laco_model_trains_and_evaluates_from_the_command_line(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    model, processor = build_mllm(tiny_encoder("siglip"), (tiny_llm(len(tokenizer)), tokenizer), None, image_size=32)
    model.save_pretrained(tmp_path / "laco-model")
    processor.save_pretrained(tmp_path / "laco-model")
    laco.convert(tmp_path / "laco-model", tmp_path / "converted", 2)
    data_json, images = write_color_dataset(tmp_path / "data", count=8)
    config = write_config(tmp_path / "run.yaml", "unused", data_json, images, tmp_path / "run", STAGES[:1])
    assert main(["train", "--config", str(config), "--init-from", str(tmp_path / "converted")]) == 0
    out = capsys.readouterr().out
    assert "merge: 2 steps" in out and "exact match" in out
    assert laco.placement_of(laco.load(tmp_path / "run" / "final")).layers == (2,)


def test_a_checkpoint_that_is_no_laco_mllm_is_refused_naming_its_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    with pytest.raises(InitFromError, match=r"'siglip_vision_model' checkpoint, which laco cannot load as an MLLM"):
        check_init_from(tmp_path)


def test_a_family_whose_adapter_names_a_refusal_is_refused_naming_the_class_and_what_is_missing(tmp_path, monkeypatch):
    from laco.adapters.mllm.gemma3 import Gemma3Adapter

    monkeypatch.setattr(Gemma3Adapter, "init_from_refusal", "token_type_ids from somewhere", raising=False)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "laco_gemma3"}))
    with pytest.raises(InitFromError, match=r"LacoGemma3ForConditionalGeneration.*token_type_ids from somewhere"):
        check_init_from(tmp_path)


def test_the_command_line_refuses_a_bad_init_from_before_touching_the_run(tmp_path):
    data_json, images = write_color_dataset(tmp_path / "data", count=4)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    config = write_config(tmp_path / "run.yaml", tmp_path / "ckpt", data_json, images, tmp_path / "run")
    with pytest.raises(SystemExit, match="laco train: model.init_from=.*'siglip_vision_model' checkpoint"):
        main(["train", "--config", str(config)])
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="no config.json"):
        main(["train", "--config", str(config), "--init-from", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="laco train: .*model.vision would not be used"):
        main(["train", "--config", str(config), "--vision", "dinov2-small"])


def test_an_interrupted_stage_resumes_exactly_from_its_checkpoint(converted, tmp_path):
    """The Trainer's checkpoints of a converted stock LLaVA keep the stock key names; resuming loads them strictly."""
    dst, data_json, images = converted
    stage = [{**STAGES[0], "max_steps": 4}]
    path = write_config(tmp_path / "run.yaml", dst, data_json, images, tmp_path / "run", stage)
    config = yaml.safe_load(path.read_text())
    config["training"]["save_steps"] = 2
    path.write_text(yaml.safe_dump(config))
    train(load_config(path), quiet=True)
    stage_dir = tmp_path / "run" / "merge"
    uninterrupted = load_file(stage_dir / "final" / "model.safetensors")
    # as if killed after the checkpoint at step 2
    for finished in (stage_dir / "final", stage_dir / "checkpoint-4", tmp_path / "run" / "final"):
        shutil.rmtree(finished)
    train(load_config(path), quiet=True)
    resumed = load_file(stage_dir / "final" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in resumed)


def test_laco_eval_scores_a_converted_stock_checkpoint_directly(converted, tmp_path, capsys):
    dst, data_json, images = converted
    arguments = ["--eval-json", str(data_json), "--image-folder", str(images), "--limit", "4", "--max-new-tokens", "2"]
    assert main(["eval", "--model", str(dst), *arguments]) == 0
    assert "exact match" in capsys.readouterr().out
