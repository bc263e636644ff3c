"""The response log that lets an interrupted lmms-eval run resume."""

import json

import pytest

from laco.harness.responses import ResponseLog, checkpoint_fingerprint, request_key


def test_answers_survive_a_restart(tmp_path):
    path = tmp_path / "log.jsonl"
    log = ResponseLog(path, "ckpt-a")
    key = request_key("generate_until", 3, "easyvqa", "test", "q?", {"max_new_tokens": 8})
    assert log.get(key) is None
    log.add([(key, "blue"), (request_key("loglikelihood", 1), [2.5, True])])
    again = ResponseLog(path, "ckpt-a")
    assert len(again) == 2 and again.get(key) == "blue"
    assert again.get(request_key("loglikelihood", 1)) == [2.5, True]


def test_a_cut_last_line_is_recomputed_not_fatal(tmp_path):
    path = tmp_path / "log.jsonl"
    ResponseLog(path, "ckpt").add([("k1", "red"), ("k2", "green")])
    text = path.read_text()
    path.write_text(text[: len(text) - 10])  # a kill in the middle of the last write
    log = ResponseLog(path, "ckpt")
    assert log.get("k1") == "red" and log.get("k2") is None


def test_another_checkpoints_log_is_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    ResponseLog(path, "ckpt-a")
    with pytest.raises(ValueError, match="another checkpoint"):
        ResponseLog(path, "ckpt-b")
    (tmp_path / "other.jsonl").write_text(json.dumps({"something": 1}) + "\n")
    with pytest.raises(ValueError, match="not a laco response log"):
        ResponseLog(tmp_path / "other.jsonl", "ckpt-a")


def test_fingerprint_changes_when_the_checkpoint_does(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = checkpoint_fingerprint(tmp_path, "float32")
    assert checkpoint_fingerprint(tmp_path, "float32") == first
    assert checkpoint_fingerprint(tmp_path, "bfloat16") != first
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    assert checkpoint_fingerprint(tmp_path, "float32") != first
