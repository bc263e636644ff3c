"""The whole-model adapter extension point: apply/remove/num_tokens go through it, processors are updated and
restored, and a failing install leaves the model untouched."""

import pytest
import torch

import laco
from laco.adapters import ModelAdapter, find_adapter, register_adapter, unregister_adapter

from tiny_models import tiny_encoder


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = tiny_encoder("siglip")
        self.image_seq_length = laco.num_tokens(self.tower)


class WrapperAdapter(ModelAdapter):
    family = "wrapper"
    model_classes = (Wrapper,)

    def encoder(self, model):
        return model.tower, find_adapter(model.tower)

    def check(self, model, placement):
        if placement.layers[-1] == 4:
            raise ValueError("the wrapper reads layer 3; compress at 1..3")

    def install(self, model, placement, processor):
        before, count = model.image_seq_length, laco.num_tokens(model.tower)
        model.image_seq_length = count
        undo = [lambda: setattr(model, "image_seq_length", before)]
        if processor is not None:
            old = processor["num_image_tokens"]
            processor["num_image_tokens"] = count
            undo.append(lambda: processor.__setitem__("num_image_tokens", old))
        return undo

    def num_tokens(self, model, placement, image_size=None, **inputs):
        return laco.num_tokens(model.tower, image_size) + inputs.get("extra", 0)


@pytest.fixture
def registered():
    register_adapter(WrapperAdapter)
    yield
    unregister_adapter(WrapperAdapter)


def test_whole_model_apply_updates_model_and_processor_and_remove_restores_them(registered):
    model, processor = Wrapper().eval(), {"num_image_tokens": 64}
    x = torch.randn(2, 3, 32, 32)
    before = model.tower(x).last_hidden_state
    laco.apply(model, 2, processor=processor)
    assert laco.is_patched(model) and laco.placement_of(model).layers == (2,)
    assert model.image_seq_length == 16 and processor["num_image_tokens"] == 16
    assert laco.num_tokens(model) == 16 and laco.num_tokens(model, extra=1) == 17
    laco.remove(model)
    assert model.image_seq_length == 64 and processor["num_image_tokens"] == 64
    assert torch.equal(model.tower(x).last_hidden_state, before)


def test_a_placement_the_model_would_skip_is_refused_before_anything_changes(registered):
    model = Wrapper()
    with pytest.raises(ValueError, match="reads layer 3"):
        laco.apply(model, 4)
    assert not laco.is_patched(model)


def test_a_failing_install_leaves_the_model_unpatched(registered, monkeypatch):
    def broken(self, model, placement, processor):
        raise RuntimeError("processor has no placeholder count")

    monkeypatch.setattr(WrapperAdapter, "install", broken)
    model = Wrapper()
    with pytest.raises(RuntimeError, match="no placeholder count"):
        laco.apply(model, 2)
    assert not laco.is_patched(model)


def test_processor_is_refused_where_no_whole_model_adapter_applies():
    with pytest.raises(ValueError, match="processor= is for whole MLLMs"):
        laco.apply(tiny_encoder("siglip"), 2, processor={})
