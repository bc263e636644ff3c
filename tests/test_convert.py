"""laco.convert and `laco convert`: what a source must be, and the command line. Each family's round trip (every
tensor kept, reload with the Auto classes) is tested with its adapter in tests/adapters/mllm."""

import pytest
from safetensors.torch import load_file

import laco
from laco.cli import main

from tiny_mllms import llava


@pytest.fixture
def checkpoint(tmp_path):
    tiny = llava()
    tiny.model.save_pretrained(tmp_path / "src")
    tiny.processor.save_pretrained(tmp_path / "src")
    return tmp_path / "src"


def test_the_command_line_writes_a_laco_checkpoint(checkpoint, capsys):
    dst = checkpoint.parent / "dst"
    assert main(["convert", str(checkpoint), str(dst), "--layer", "1/2"]) == 0
    out = capsys.readouterr().out
    assert "tokens per image (tile): 64 -> 16" in out and "from_pretrained" in out
    assert set(load_file(checkpoint / "model.safetensors")) < set(load_file(dst / "model.safetensors"))
    assert laco.placement_of(laco.load(dst)).layers == (2,)


def test_the_command_line_passes_compressor_options(checkpoint, capsys):
    dst = checkpoint.parent / "dst"
    args = ["convert", str(checkpoint), str(dst), "--layer", "1/2", "--method", "laco-window"]
    assert main([*args, "--option", "init=ffn_reuse", "--option", "branch_scale=0.5"]) == 0
    placement = laco.placement_of(laco.load(dst))
    assert placement.method == "laco-window" and dict(placement.options) == {"init": "ffn_reuse", "branch_scale": 0.5}
    with pytest.raises(SystemExit):
        main([*args, "--option", "init"])
    assert "expected KEY=VALUE such as init=ffn_reuse, not 'init'" in capsys.readouterr().err


def test_an_option_the_compressor_does_not_take_is_refused_before_the_source_is_read(tmp_path):
    with pytest.raises(SystemExit, match=r"'laco-window' does not take option\(s\) \['bogus'\]; it accepts .*'init'"):
        main(
            [
                "convert",
                str(tmp_path / "missing"),
                str(tmp_path / "dst"),
                "--layer",
                "3",
                "--method",
                "laco-window",
                "--option",
                "bogus=1",
            ]
        )


def test_pickle_weights_are_refused(checkpoint):
    (checkpoint / "model.safetensors").rename(checkpoint / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no safetensors weights \(only \['pytorch_model.bin'\]\)"):
        laco.convert(checkpoint, checkpoint.parent / "dst", 2)


def test_an_existing_destination_and_a_compressed_source_are_refused(checkpoint):
    dst = checkpoint.parent / "dst"
    laco.convert(checkpoint, dst, 2)
    with pytest.raises(FileExistsError, match="not empty"):
        laco.convert(checkpoint, dst, 2)
    with pytest.raises(ValueError, match="already compressed by laco"):
        laco.convert(dst, checkpoint.parent / "again", 2)
    with pytest.raises(SystemExit, match="laco convert: .*already compressed"):
        main(["convert", str(dst), str(checkpoint.parent / "again"), "--layer", "2"])


def test_an_unsupported_model_type_is_refused(tmp_path):
    from tiny_models import tiny_encoder

    tiny_encoder("siglip").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot convert a 'siglip_vision_model' checkpoint; supported model types"):
        laco.convert(tmp_path, tmp_path / "dst", 2)


def test_a_sharded_checkpoint_missing_a_shard_is_refused_naming_it(tmp_path):
    from qwen_models import tiny_model, tiny_processor

    tiny_model("qwen2.5").save_pretrained(tmp_path / "src", max_shard_size="100KB")
    shards = sorted((tmp_path / "src").glob("model-*.safetensors"))
    shards[1].unlink()
    with pytest.raises(ValueError, match=rf"sharded checkpoint .*\['{shards[1].name}'\] are missing"):
        laco.convert(tmp_path / "src", tmp_path / "dst", 2, processor=tiny_processor("qwen2.5"))
    with pytest.raises(ValueError, match=rf"\['{shards[1].name}'\] are missing"):
        laco.load(tmp_path / "src")
    assert not (tmp_path / "dst").exists()


def test_a_checkpoint_of_a_family_laco_does_not_know_is_refused_listing_the_supported(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"cannot convert a 'dinov2' checkpoint; supported model types: .*qwen2_5_vl"):
        laco.convert(tmp_path, tmp_path / "dst", 1)


@pytest.mark.parametrize("family", ["internvl", "llava_onevision"])
def test_the_command_line_converts_families_whose_processor_needs_torchvision(family, tmp_path, caplog):
    # their processors carry a video processor, which needs torchvision; `laco convert` failed and told the user to
    # "pass processor=", which the command line has no option for
    import json

    from laco.digests import verify_digests

    import tiny_mllms

    tiny = getattr(tiny_mllms, family)()
    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny.model.save_pretrained(src)
    tiny.processor.save_pretrained(src)
    video = {"video_processor_type": f"{type(tiny.processor).__name__.replace('Processor', '')}VideoProcessor"}
    (src / "video_preprocessor_config.json").write_text(json.dumps(video))  # as the hub checkpoints have it
    with caplog.at_level("WARNING"):
        assert main(["convert", str(src), str(dst), "--layer", "2"]) == 0
    assert "without the video processor" in caplog.text
    assert verify_digests(dst) and laco.placement_of(laco.load(dst)).layers == (2,)
    assert not (dst / "video_preprocessor_config.json").exists()


def test_laco_load_refuses_a_converted_checkpoint_whose_weights_changed(checkpoint):
    dst = checkpoint.parent / "dst"
    laco.convert(checkpoint, dst, 2)
    weights = dst / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last tensor's data
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors"):
        laco.load(dst)
