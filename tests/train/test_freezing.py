import pytest

from laco import Placement
from laco.mllm import build_mllm
from laco.train import count_parameters, part_parameters, set_trainable

from tiny_models import tiny_encoder, tiny_llm, tiny_tokenizer


@pytest.fixture(scope="module")
def model():
    tokenizer = tiny_tokenizer()
    model, _ = build_mllm(tiny_encoder("dinov2"), (tiny_llm(len(tokenizer)), tokenizer), Placement(2), image_size=32)
    return model


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_stage1_trains_only_the_merge_and_projector(model):
    set_trainable(model, ["compressor", "projector"])
    names = trainable_names(model)
    assert names and all("laco_compressor" in n or "multi_modal_projector" in n for n in names)
    assert any("laco_compressor" in n for n in names) and any("multi_modal_projector" in n for n in names)


def test_stage2_adds_the_llm_and_keeps_the_encoder_frozen(model):
    set_trainable(model, ["compressor", "projector", "llm"])
    names = trainable_names(model)
    assert any(n.startswith("model.language_model") for n in names)
    assert not any(n.startswith("model.vision_tower") and "laco_compressor" not in n for n in names)


def test_vision_after_merge_unfreezes_only_the_later_blocks(model):
    set_trainable(model, ["vision_after_merge"])
    names = trainable_names(model)
    assert any("encoder.layer.2." in n for n in names) and any("encoder.layer.3." in n for n in names)
    assert not any("encoder.layer.0." in n or "encoder.layer.1." in n or "embeddings" in n for n in names)
    # LLaVA reads hidden states, which come before the final norm: it gets no gradient, so it is not trained
    assert not any("vision_tower.layernorm" in n for n in names)


def test_vision_after_merge_stops_at_the_layer_the_llm_reads():
    """A stock LLaVA reads the CLIP tower's second-to-last layer: the last one never reaches the LLM (and would stop
    DDP, which expects a gradient for every trainable parameter)."""
    import laco

    from tiny_mllms import llava

    model = llava(feature_layer=-2).model  # CLIP, 4 layers, LLaVA reads hidden_states[-2] = after layer 3
    laco.apply(model, 1)
    set_trainable(model, ["vision_after_merge"])
    layers = {n.split("layers.")[1].split(".")[0] for n in trainable_names(model)}
    assert layers == {"1", "2"} and all(".encoder.layers." in n for n in trainable_names(model))


def test_counts_share_tied_weights_once(model):
    set_trainable(model, ["llm"])
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for p in {id(p): p for p in part_parameters(model, "llm")}.values())
    assert total < sum(p.numel() for p in model.parameters()) + model.lm_head.weight.numel()


def test_unknown_part_is_an_error(model):
    with pytest.raises(ValueError, match="unknown trainable part 'decoder'"):
        set_trainable(model, ["decoder"])


def test_vision_after_merge_selects_nothing_without_a_merge():
    """One recipe runs the uncompressed baseline too: there is no layer after a merge that is not there."""
    tokenizer = tiny_tokenizer()
    model, _ = build_mllm(tiny_encoder("dinov2"), (tiny_llm(len(tokenizer)), tokenizer), None, image_size=32)
    assert set_trainable(model, ["projector", "vision_after_merge"])["vision_after_merge"] == 0
    assert all("multi_modal_projector" in n for n in trainable_names(model))
