"""The conformance suite: every adapter in laco's registry passes the same invariants.

Encoder adapters: remove restores bit-identical outputs, eager == SDPA, gradients reach the merge and the blocks
after it, gradient checkpointing gives the same gradients, bfloat16 stays near float32, a deep copy runs its own
compressors, save -> ``laco.load`` gives the same outputs. MLLM adapters: apply -> forward and ``generate`` with the
stock processor -> ``save_pretrained`` -> the Auto class reloads it compressed (and ``laco.load`` too) -> remove on
the reloaded model leaves no tensor unloaded -> remove on the original restores it bit for bit. The cases live in
tests/fixtures/cases.py; a registered adapter without one fails here.
"""

from __future__ import annotations

import copy

import pytest
import torch
from cases import ENCODER_CASES, MLLM_CASES
from transformers import AutoModelForImageTextToText

import laco
from laco.adapters import encoder_adapters, model_adapters

from tiny_mllms import apply_and_run, check_remove_restores, model_state, processor_state

ENCODERS = sorted(type(adapter).__name__ for adapter in encoder_adapters())
MLLMS = [
    pytest.param(name, index, layer, mode, id=f"{name}-{index}-{mode}")
    for name in sorted(type(adapter).__name__ for adapter in model_adapters())
    for index, case in enumerate(MLLM_CASES.get(name, []))
    for layer, mode in case.placements
]


def test_every_registered_adapter_has_a_case():
    assert set(ENCODERS) <= set(ENCODER_CASES), f"no encoder case for {sorted(set(ENCODERS) - set(ENCODER_CASES))}"
    models = {type(adapter).__name__ for adapter in model_adapters()}
    assert models <= set(MLLM_CASES), f"no MLLM case for {sorted(models - set(MLLM_CASES))}"


# -- encoders ----------------------------------------------------------------------------------------------------


@pytest.fixture(params=ENCODERS)
def case(request):
    return ENCODER_CASES[request.param]


def _apply(case, attn: str = "eager", **options):
    return laco.apply(case.build(attn), list(case.layers), **options)


def _hidden_states(case, model) -> tuple[torch.Tensor, ...]:
    return tuple(model(**case.inputs(), output_hidden_states=True).hidden_states or ())


def test_remove_restores_bit_identical_outputs(case):
    model = case.build("eager")
    reference, states = case.run(model), _hidden_states(case, model)
    laco.apply(model, list(case.layers), shortcut=True, init="default")
    changed = case.run(model)
    assert changed.shape != reference.shape or not torch.equal(changed, reference)
    laco.remove(model)
    assert torch.equal(case.run(model), reference)
    restored = _hidden_states(case, model)
    assert len(restored) == len(states) and all(torch.equal(a, b) for a, b in zip(restored, states))
    assert not laco.is_patched(model) and not hasattr(model.config, "laco")
    assert not any("laco" in name for name in model.state_dict())


def test_eager_and_sdpa_agree(case):
    eager, sdpa = (case.run(_apply(case, attn, init="default")) for attn in ("eager", "sdpa"))
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-4)


def test_gradients_reach_the_merge_and_the_blocks_after_it(case):
    model = _apply(case).train()
    case.run(model).square().mean().backward()
    merge = laco.attached_compressors(model)[0]
    assert merge.fc2.weight.grad.abs().sum() > 0  # zero-initialised: fc2 is the first to receive gradient
    encoder, adapter = laco.adapters.resolve_encoder(model)
    last = adapter.blocks(encoder)[-1]
    assert all(p.grad is not None for p in last.parameters() if p.requires_grad)


def test_gradient_checkpointing_gives_the_same_gradients(case):
    grads = []
    for checkpointing in (False, True):
        model = _apply(case, init="default").train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        case.run(model).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_bfloat16_stays_near_float32(case):
    model = _apply(case)
    expected = case.run(model)
    out = case.run(model.to(torch.bfloat16), torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert (out.float() - expected).norm() / expected.norm() < 0.02


def test_a_deep_copy_runs_its_own_compressors(case):
    model = _apply(case, init="default")
    expected = case.run(model)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(case.run(twin), expected)
    with torch.no_grad():
        for merge in laco.attached_compressors(twin):
            merge.fc2.weight.add_(1.0)
    assert not torch.allclose(case.run(twin), expected)  # the copy's hooks drive the copy's merges
    torch.testing.assert_close(case.run(model), expected)
    twin.to(torch.bfloat16)
    case.run(twin, torch.bfloat16)  # dtype casts reach the copy's merges too
    laco.remove(twin)
    stock = case.run(case.build("eager"))
    assert case.run(twin, torch.bfloat16).shape == stock.shape
    assert laco.is_patched(model) and case.run(model).shape == expected.shape


def test_save_and_load_round_trip(case, tmp_path):
    model = _apply(case, init="default")
    expected = case.run(model)
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")), "weights must be saved as safetensors only"
    reloaded = laco.load(tmp_path)
    assert laco.placement_of(reloaded) == laco.placement_of(model)
    torch.testing.assert_close(case.run(reloaded), expected)


# -- whole MLLMs -------------------------------------------------------------------------------------------------


def _no_meta_tensors(model: torch.nn.Module) -> list[str]:
    return [name for name, tensor in model.state_dict().items() if tensor.device.type == "meta"]


@pytest.mark.parametrize("name,index,layer,mode", MLLMS)
def test_mllm_round_trip(name, index, layer, mode, tmp_path):
    tiny = MLLM_CASES[name][index].build()
    before = tiny.logits(), processor_state(tiny.processor), model_state(tiny.model)
    stock_inputs = tiny.inputs()
    logits = apply_and_run(tiny, layer, mode)  # forward and generate with the stock processor, updated
    inputs = tiny.inputs()

    tiny.model.save_pretrained(tmp_path)
    saved = tiny.model.config.to_dict()
    before[2][0].update({key: saved[key] for key in ("architectures", "dtype")})  # save_pretrained's own records
    for reloaded in (AutoModelForImageTextToText.from_pretrained(tmp_path).eval(), laco.load(tmp_path)):
        assert laco.placement_of(reloaded) == laco.placement_of(tiny.model), "reloaded uncompressed"
        real = inputs["attention_mask"].bool()  # padded rows are undefined (the reload runs SDPA, the model eager)
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**inputs).logits[real], logits[real], rtol=1e-4, atol=1e-5)
        laco.remove(reloaded)  # a working stock model: every tensor it runs was loaded
        assert not _no_meta_tensors(reloaded), _no_meta_tensors(reloaded)
        with torch.no_grad():
            reloaded(**stock_inputs)

    check_remove_restores(tiny, *before)
