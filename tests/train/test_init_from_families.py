"""`laco train --init-from` on converted checkpoints of the families trained through their own processor: convert ->
2 + 2 steps on a 4-record LLaVA JSON -> ``final/`` reloads compressed with the Auto classes and its processor, and
the merge's, the connector's and the LLM's weights moved."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

import laco
from laco.cli import main
from laco.config import load_config
from laco.train import train
from laco.train.init_from import own_processor
from laco.train.resume import ConfigMismatch

from chat_templates import templated

# family -> what the saved names of its connector's and its LLM's tensors hold
QWEN, LLAVA = ("visual.merger.", "model.layers."), ("multi_modal_projector.", "language_model.")
PARTS = {
    "qwen2-vl": QWEN,
    "qwen2.5-vl": QWEN,
    "qwen3-vl": QWEN,
    "llava-next": LLAVA,
    "llava-onevision": LLAVA,
    "internvl": LLAVA,
    "idefics3": ("model.connector.", "model.text_model."),
    "smolvlm": ("model.connector.", "model.text_model."),
    "gemma3": LLAVA,
}
CONNECTORS = {family: parts[0] for family, parts in PARTS.items()}
LLMS = {family: parts[1] for family, parts in PARTS.items()}


def write_records(directory):
    """4 records: images of different sizes, one with two images, one of two turns."""
    (directory / "images").mkdir(parents=True)
    colours = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40), "yellow": (230, 220, 30)}
    sizes = [(48, 32), (32, 48), (64, 32), (32, 32)]  # multiples of 16 px: Qwen-VL's compress_more merges them
    for index, (colour, size) in enumerate(zip(colours.values(), sizes)):
        Image.new("RGB", size, colour).save(directory / "images" / f"{index}.png")
    ask = {"from": "human", "value": "<image>\nwhat color is the shape?"}
    records = [
        {"id": str(index), "image": f"images/{index}.png", "conversations": [ask, {"from": "gpt", "value": name}]}
        for index, name in enumerate(colours)
    ]
    records[1]["image"] = ["images/1.png", "images/2.png"]
    records[1]["conversations"][0] = {"from": "human", "value": "<image> and <image>: what color is the first?"}
    records[3]["conversations"] += [{"from": "human", "value": "is it red?"}, {"from": "gpt", "value": "no"}]
    (directory / "data.json").write_text(json.dumps(records))
    return directory / "data.json", directory


def write_config(path, init_from, data_json, images, output):
    stages = [
        {"name": "merge", "trainable": ["compressor", "vision_after_merge"], "max_steps": 2, "batch_size": 2},
        {"name": "all", "trainable": ["compressor", "merger", "llm"], "max_steps": 2, "batch_size": 2},
    ]
    config = {
        "output_dir": str(output),
        "model": {"init_from": str(init_from)},
        "data": {"dataset": "llava", "train_json": str(data_json), "image_folder": str(images), "max_length": 1024},
        "stages": stages,
        "training": {"precision": "fp32", "logging_steps": 1, "save_steps": 100, "threads": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


# both modes where the family has both (LLaVA-NeXT and -OneVision have compress_more only)
MODES = [
    (family, mode)
    for family in sorted(PARTS)
    for mode in (("compress_more",) if family.startswith("llava") else ("keep_llm_tokens", "compress_more"))
]


@pytest.mark.parametrize(("family", "mode"), MODES)
def test_a_converted_checkpoint_trains_in_stages_and_its_final_reloads_compressed(family, mode, tmp_path, capsys):
    dst = converted(family, tmp_path, mode)
    data_json, images = write_records(tmp_path / "data")
    config = write_config(tmp_path / "run.yaml", dst, data_json, images, tmp_path / "run")
    assert main(["train", "--config", str(config)]) == 0
    assert "data: 4 of 4 records used" in capsys.readouterr().out

    start = load_file(dst / "model.safetensors")
    merged = load_file(tmp_path / "run" / "merge" / "final" / "model.safetensors")
    changed = {name for name, tensor in merged.items() if not torch.equal(tensor, start[name])}
    assert any("laco_compressor" in name for name in changed)
    assert not any(CONNECTORS[family] in name or LLMS[family] in name for name in changed), sorted(changed)

    final = tmp_path / "run" / "final"
    trained = load_file(final / "model.safetensors")
    moved = {name for name, tensor in trained.items() if not torch.equal(tensor, merged[name])}
    assert any(CONNECTORS[family] in name for name in moved), sorted(moved)
    assert any(LLMS[family] in name for name in moved), sorted(moved)

    model, processor = AutoModelForImageTextToText.from_pretrained(final), own_processor(final)
    assert type(model).__name__.startswith("Laco") and laco.placement_of(model) == laco.placement_of(laco.load(dst))
    assert laco.placement_of(model).mode == mode
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = processor(text=[text], images=[[Image.new("RGB", (48, 32))]], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def converted(family, directory, mode="auto"):
    tiny = templated(family)
    tiny.model.save_pretrained(directory / "src")
    tiny.processor.save_pretrained(directory / "src")
    # given: AutoProcessor cannot rebuild the tests' image-only processor classes (stock ones need torchvision)
    laco.convert(directory / "src", directory / "dst", "1/2", mode=mode, processor=tiny.processor)
    return directory / "dst"


@pytest.mark.parametrize("family", ["qwen2.5-vl", "llava-onevision"])
def test_an_interrupted_stage_resumes_bit_identically_and_a_changed_config_is_refused(family, tmp_path):
    dst = converted(family, tmp_path)
    data_json, images = write_records(tmp_path / "data")
    path = write_config(tmp_path / "run.yaml", dst, data_json, images, tmp_path / "run")
    config = yaml.safe_load(path.read_text())
    config["stages"] = [{**config["stages"][1], "max_steps": 4}]  # merge, connector and LLM: every part resumes
    config["training"]["save_steps"] = 2
    path.write_text(yaml.safe_dump(config))
    train(load_config(path), quiet=True)
    stage_dir = tmp_path / "run" / "all"
    uninterrupted = load_file(stage_dir / "final" / "model.safetensors")
    for finished in (stage_dir / "final", stage_dir / "checkpoint-4", tmp_path / "run" / "final"):
        shutil.rmtree(finished)  # as if killed after the checkpoint at step 2
    train(load_config(path), quiet=True)
    resumed = load_file(stage_dir / "final" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in resumed)

    config["data"]["max_length"] = 2048
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigMismatch, match="data.max_length"):
        train(load_config(path), quiet=True)


@pytest.mark.parametrize("family", sorted(PARTS))
def test_laco_train_then_eval_and_generate_answer_through_the_checkpoints_processor(family, tmp_path, capsys):
    dst = converted(family, tmp_path)
    data_json, images = write_records(tmp_path / "data")
    path = write_config(tmp_path / "run.yaml", dst, data_json, images, tmp_path / "run")
    config = yaml.safe_load(path.read_text())
    config["stages"] = config["stages"][:1]
    config["data"]["eval_json"] = str(data_json)
    config["eval"] = {"limit": 4, "batch_size": 4, "max_new_tokens": 2}
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 0  # trains, then scores final/ on eval_json
    assert "exact match" in capsys.readouterr().out
    final = str(tmp_path / "run" / "final")
    arguments = ["--eval-json", str(data_json), "--image-folder", str(images), "--max-new-tokens", "2"]
    assert main(["eval", "--model", final, *arguments]) == 0
    assert "exact match" in capsys.readouterr().out
    image = str(images / "images" / "0.png")
    assert (
        main(["generate", "--model", final, "--image", image, "--prompt", "what color?", "--max-new-tokens", "2"]) == 0
    )


ADAPTER_FAMILIES = {
    "QwenVLModelAdapter": {"qwen2-vl", "qwen2.5-vl", "qwen3-vl"},
    "LlavaNextAdapter": {"llava-next"},
    "LlavaOnevisionAdapter": {"llava-onevision"},
    "InternVLAdapter": {"internvl"},
    "Idefics3Adapter": {"idefics3"},
    "SmolVLMAdapter": {"smolvlm"},
    "Gemma3Adapter": {"gemma3"},
}


def test_every_family_init_from_takes_is_tested_here():
    """A family that registers an adapter without an init_from_refusal trains through its processor: it needs its
    case (chat_templates.templated) in the tests above, as the families already registered have."""
    from laco.adapters import model_adapters

    takes = {type(a).__name__ for a in model_adapters() if not a.init_from_refusal and a.checkpoint_classes}
    assert takes - {"LlavaAdapter"} == set(ADAPTER_FAMILIES)  # LLaVA trains through laco's own pipeline
    assert set().union(*ADAPTER_FAMILIES.values()) == set(PARTS)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "llava-onevision"])
def test_a_stage_killed_mid_way_reruns_to_the_uninterrupted_model(family, tmp_path):
    from faults.runs import kill_at

    dst = converted(family, tmp_path)
    data_json, images = write_records(tmp_path / "data")
    finals = {}
    for name in ("reference", "killed"):
        path = write_config(tmp_path / f"{name}.yaml", dst, data_json, images, tmp_path / name)
        config = yaml.safe_load(path.read_text())
        config["stages"] = [{**config["stages"][1], "max_steps": 4}]
        config["training"]["save_steps"] = 2
        path.write_text(yaml.safe_dump(config))
        if name == "killed":  # SIGKILL at the third training step: checkpoint-2 is on disk, step 3 half done
            kill_at("laco.train.hf_trainer:LacoTrainer.training_step", 3, "train", "--config", str(path), "--no-eval")
            assert (tmp_path / name / "all" / "checkpoint-2").is_dir()
            assert not (tmp_path / name / "all" / "final").exists()
        train(load_config(path), quiet=True)
        finals[name] = load_file(tmp_path / name / "all" / "final" / "model.safetensors")
    assert finals["killed"].keys() == finals["reference"].keys()
    assert all(torch.equal(finals["killed"][key], finals["reference"][key]) for key in finals["reference"])
