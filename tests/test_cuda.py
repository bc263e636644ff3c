"""The same library on a GPU: CUDA results match the CPU, in float32 and bf16, for every family and compressor.

Skipped where torch sees no GPU (CI); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

import copy

import pytest
import torch
from PIL import Image

import laco
from laco import Placement
from laco.mllm import build_mllm

from tiny_models import FAMILIES, pixels, tiny_encoder, tiny_llm, tiny_tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def full_float32():
    """cuDNN convolutions (the patch embedding) default to TF32; compare float32 with float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("method", ["laco", "pixel_shuffle", "avgpool", "ldpv2", "tokenpacker"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_matches_cpu(family, method):
    options = {"init": "default"} if method == "laco" else {}  # a zero-initialised branch would hide its kernels
    cpu = laco.apply(tiny_encoder(family, attn_implementation="sdpa"), [1, 3], method=method, **options)
    gpu = copy.deepcopy(cpu).to(CUDA)
    x = pixels()
    with torch.no_grad():
        expected = cpu(x).last_hidden_state
        float32 = gpu(x.to(CUDA)).last_hidden_state
    assert float32.shape == expected.shape
    assert relative_error(float32, expected) < 1e-4
    bf16 = copy.deepcopy(gpu).to(torch.bfloat16)
    with torch.no_grad():
        low = bf16(x.to(CUDA, torch.bfloat16)).last_hidden_state
    assert low.dtype == torch.bfloat16
    assert relative_error(low, expected) < 5e-2  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("family", ["siglip", "internvit"])
def test_cuda_gradients_match_cpu(family):
    cpu = laco.apply(tiny_encoder(family, attn_implementation="sdpa"), 2, init="default").train()
    gpu = copy.deepcopy(cpu).to(CUDA)
    x = pixels()
    # A fixed random readout: the mean square of a LayerNorm'd output (SigLIP's) is ~constant, so its gradient
    # would be rounding noise on either device.
    readout = torch.randn(cpu(x).last_hidden_state.shape, generator=torch.Generator().manual_seed(2))
    (cpu(x).last_hidden_state * readout).mean().backward()
    (gpu(x.to(CUDA)).last_hidden_state * readout.to(CUDA)).mean().backward()
    merge_cpu, merge_gpu = laco.attached_compressors(cpu)[0], laco.attached_compressors(gpu)[0]
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in merge_gpu.parameters())
    # All of the merge's gradients as one vector, so no single near-zero entry decides.
    gradient_gpu = torch.cat([p.grad.flatten() for p in merge_gpu.parameters()])
    gradient_cpu = torch.cat([p.grad.flatten() for p in merge_cpu.parameters()])
    assert relative_error(gradient_gpu, gradient_cpu) < 1e-3


def test_remove_on_cuda_restores_the_original():
    model = tiny_encoder("siglip", attn_implementation="sdpa").to(CUDA)
    x = pixels().to(CUDA)
    with torch.no_grad():
        before = model(x).last_hidden_state
        laco.apply(model, 2)
        assert model(x).last_hidden_state.shape[1] == before.shape[1] // 4
        laco.remove(model)
        assert torch.equal(model(x).last_hidden_state, before)


def test_mllm_on_cuda_matches_cpu_and_generates():
    tokenizer = tiny_tokenizer()
    model, processor = build_mllm(
        tiny_encoder("dinov2"),
        (tiny_llm(len(tokenizer)), tokenizer),
        Placement("1/2", "laco", 2, {}),
        image_size=32,
    )
    images = [Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (32, 32), (10, 10, 200))]
    inputs = processor(["what color is the shape?", "is there a circle in the image?"], images)
    with torch.no_grad():
        expected = model(**inputs).logits
        model.to(CUDA)
        inputs = {k: v.to(CUDA) for k, v in inputs.items()}
        assert relative_error(model(**inputs).logits, expected) < 1e-4
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert generated.device.type == "cuda" and generated.shape[1] > inputs["input_ids"].shape[1]
