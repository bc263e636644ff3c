"""Inputs every entry point must refuse in one line (stderr, non-zero exit, no traceback), each as a user met it.

``laco eval`` / ``laco generate`` / the lmms-eval model check the family first (another model family, a made-up
``model_type``), then what used to fail deep inside a load: damaged safetensors, bad ``vision_config.laco``
values, content that no longer matches its digests. Data problems (a missing image folder, an unknown split) and
a full disk are refused the same way; an unknown error keeps its traceback, and ``laco --debug`` keeps it for all.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laco.cli import main
from laco.digests import DIGESTS_FILE, write_digests

import tiny_mllms
from faults.runs import write_run_config
from serve.conftest import color_images, save_tiny_laco

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A good tiny laco checkpoint, an image, a LLaVA JSON naming it, and stock/converted checkpoints of other
    families (config and weights as their own classes save them)."""
    root = tmp_path_factory.mktemp("refusals")
    good = save_tiny_laco(root / "good", "dinov2", "1/2")
    write_digests(good)  # as laco train writes its final/
    image = color_images(root / "images")[0]
    data = root / "data.json"
    record = {"id": "1", "image": image.name, "conversations": [{"from": "human", "value": "<image>\nq"}]}
    record["conversations"].append({"from": "gpt", "value": "red"})
    data.write_text(json.dumps([record]))
    from transformers import Qwen2_5_VLConfig

    Qwen2_5_VLConfig().save_pretrained(root / "qwen2_5_vl")
    for family, tiny in (("gemma3", tiny_mllms.gemma3), ("llava_next", tiny_mllms.llava_next)):
        model = tiny()
        model.model.save_pretrained(root / f"stock-{family}")
        model.processor.save_pretrained(root / f"stock-{family}")
        assert main(["convert", str(root / f"stock-{family}"), str(root / f"laco-{family}"), "--layer", "2"]) == 0
    return {"root": root, "good": good, "image": image, "data": data}


def _copy(made: dict[str, Path], name: str) -> Path:
    copy = made["root"] / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(made["good"], copy)
    return copy


def _generate(model: Path, made) -> list[str]:
    return ["generate", "--model", str(model), "--image", str(made["image"]), "--prompt", "q", "--max-new-tokens", "2"]


def _eval(model: Path, made, *extra: str) -> list[str]:
    json_args = ["--eval-json", str(made["data"]), "--image-folder", str(made["image"].parent)]
    return ["eval", "--model", str(model), "--limit", "1", *(extra or json_args)]


def refused(arguments: list[str], *expected: str) -> str:
    """Run ``laco ARGUMENTS`` in process: it must exit non-zero with one line naming every ``expected`` text."""
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    message = exit_info.value.code
    assert isinstance(message, str), f"exit status {message!r} instead of a refusal message"
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"laco {arguments[0]}: "), message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    return message


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_another_family_is_refused_naming_it(made, command) -> None:
    run = _generate if command == "generate" else _eval
    # transformers crashed with "'Qwen2_5_VLTextConfig' object has no attribute 'tie_word_embeddings'"
    refused(
        run(made["root"] / "qwen2_5_vl", made), "'qwen2_5_vl'", "Qwen2_5_VLForConditionalGeneration", "laco convert"
    )
    for family in ("gemma3", "llava_next"):
        # converted checkpoints were told about LLaVA ("use mode='compress_more'", "fix vision_config.laco.layers");
        # now they are answered through their processor's chat template, which these were saved without
        refused(run(made["root"] / f"laco-{family}", made), "no chat template", "chat_template.jinja")
        refused(run(made["root"] / f"stock-{family}", made), f"'{family}'", "laco convert")


def test_a_stock_llava_is_served_uncompressed(made, tmp_path) -> None:
    tiny = tiny_mllms.llava()  # the uncompressed baseline: it loads as laco's LLaVA with its own processor
    tiny.model.save_pretrained(tmp_path / "llava")
    tiny.processor.save_pretrained(tmp_path / "llava")
    assert main(_generate(tmp_path / "llava", made)) == 0


def test_an_unknown_model_type_is_refused_not_answered(made) -> None:
    evil = _copy(made, "evil")
    config = json.loads((evil / "config.json").read_text())
    (evil / "config.json").write_text(json.dumps(config | {"model_type": "evil"}))
    (evil / DIGESTS_FILE).unlink()
    refused(_generate(evil, made), "'evil'", "does not know", "laco train")


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_safetensors_are_refused_by_name(made, damage) -> None:
    for target in ("good", "stock-gemma3"):
        source = made["good"] if target == "good" else made["root"] / target
        broken = made["root"] / f"{damage}-{target}"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(source, broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000] if damage == "truncated" else b"")
        what = "cut short" if damage == "truncated" else "empty (0 bytes)"
        if target == "good":
            refused(_generate(broken, made), str(weights), what)
            refused(_eval(broken, made), str(weights), what)
        else:
            refused(["convert", str(broken), str(made["root"] / f"out-{damage}"), "--layer", "2"], str(weights), what)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"layers": [99]}, "layer 99 is out of range"),
        ({"layers": "x"}, "cannot read layer 'x'"),
        ({"method": "nosuch"}, "unknown compression method 'nosuch'"),
        ({"factor": 0}, "factor must be an integer >= 2"),
        ("junk", '"junk"'),
    ],
)
def test_bad_laco_settings_are_refused(made, value, expected) -> None:
    bad = _copy(made, "bad-settings")
    config = json.loads((bad / "config.json").read_text())
    if isinstance(value, dict):
        config["vision_config"]["laco"].update(value)
    else:
        config["vision_config"]["laco"] = value
    (bad / "config.json").write_text(json.dumps(config))
    (bad / DIGESTS_FILE).unlink()  # a hand edit: the digests would refuse it first
    for arguments in (_generate(bad, made), _eval(bad, made)):
        refused(arguments, "vision_config.laco", expected)


def test_a_flipped_bit_in_the_weights_is_refused_naming_the_file(made) -> None:
    flipped = _copy(made, "flipped")
    weights = flipped / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside a tensor: the size and the header stay right
    weights.write_bytes(bytes(data))
    for arguments in (_generate(flipped, made), _eval(flipped, made)):
        refused(arguments, "model.safetensors", "sha256")


def test_a_checkpoint_without_digests_still_answers(made, capsys) -> None:
    unsigned = _copy(made, "unsigned")  # saved by an older laco, or by save_pretrained by hand
    (unsigned / DIGESTS_FILE).unlink()
    assert main(_generate(unsigned, made)) == 0
    assert capsys.readouterr().out.count("\n") == 1  # one answer (a random model may answer blanks)


def test_data_and_path_problems_are_refused(made, tmp_path) -> None:
    refused(_generate(made["image"].parent, made), "has no config.json")
    refused(_eval(tmp_path / "nowhere", made), "is not a directory")
    refused(_eval(made["good"], made, "--split", "validation"), "--split 'validation'", "'test'")
    missing = ["--eval-json", str(made["data"]), "--image-folder", str(tmp_path / "no-images")]
    refused(_eval(made["good"], made, *missing), "image folder", "no-images", "not found")


class _FullDisk(io.RawIOBase):
    """A file on a full disk: every write fails with the kernel's ENOSPC."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# What torch.save raised on a real full disk (a 64 KiB tmpfs): its zip writer's C++ check, not an OSError
_TORCH_ON_A_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


@pytest.mark.parametrize("failure", ["enospc", "inline_container"])
def test_a_full_disk_while_saving_is_one_line(tmp_path, monkeypatch, failure) -> None:
    from tiny_models import save_tiny_parts, write_color_dataset

    vision, llm = save_tiny_parts(tmp_path)
    data_json, images = write_color_dataset(tmp_path / "data", count=8)
    config = write_run_config(tmp_path / "run.yaml", (vision, llm, data_json, images), tmp_path / "run")
    save = torch.save

    def onto_a_full_disk(obj, f, *args, **kwargs):
        if failure == "inline_container":
            raise RuntimeError(_TORCH_ON_A_FULL_DISK)
        return save(obj, _FullDisk(), *args, **kwargs)

    monkeypatch.setattr(torch, "save", onto_a_full_disk)  # the Trainer's optimizer and scheduler state
    expected = "No space left on device" if failure == "enospc" else "inline_container.cc"
    refused(["train", "--config", str(config), "--no-eval"], expected, "free space", "run the same command")


def test_debug_keeps_the_traceback_and_unknown_errors_keep_theirs(made, monkeypatch) -> None:
    from laco.harness.family import FamilyRefusal

    with pytest.raises(FamilyRefusal):
        main(["--debug", *_generate(made["root"] / "qwen2_5_vl", made)])
    import laco.cli.generate

    def a_bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(laco.cli.generate, "_run_generate", a_bug)  # the parser is built per call, so it finds this
    with pytest.raises(KeyError, match="a bug"):
        main(_generate(made["good"], made))


def test_the_command_line_prints_one_line_and_no_traceback(made) -> None:
    command = [sys.executable, "-m", "laco", *_generate(made["root"] / "qwen2_5_vl", made)]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert process.returncode == 1
    lines = [line for line in process.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and lines[0].startswith("laco generate: ") and "qwen2_5_vl" in lines[0], process.stderr
    assert "Traceback" not in process.stderr


def test_a_damaged_archive_read_is_not_called_a_full_disk() -> None:
    from laco.cli.refusals import refusal_message

    reader = "PytorchStreamReader failed reading zip archive: failed finding central directory (inline_container.cc)"
    assert refusal_message(RuntimeError(reader)) is None  # a bug or a damaged file: it keeps its traceback
    assert "free space" in refusal_message(RuntimeError(_TORCH_ON_A_FULL_DISK))
    assert "free space" in refusal_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


def test_a_config_value_that_cannot_run_is_one_line_naming_the_key() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["train", "--set", "model.image_position=last", "--no-eval"])
    assert str(refused.value).startswith("laco train: model.image_position must be one of")
