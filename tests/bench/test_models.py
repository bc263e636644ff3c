"""Random-weight models at bench geometries, and one model switched between placements."""

import torch

from laco import Placement
from laco.bench.models import CompressionSwitch, compile_blocks, random_mllm
from laco.bench.presets import TINY_ENCODER, TINY_LLM


def test_switched_model_matches_one_built_from_config():
    model = random_mllm(TINY_ENCODER, TINY_LLM, dtype=torch.float32, device=torch.device("cpu"))
    switch = CompressionSwitch(model)
    placement = Placement((3, 6))
    first = switch.activate(placement)
    switch.activate(Placement())
    assert model.num_image_tokens() == 169
    again = switch.activate(placement)
    assert [id(m) for m in first] == [id(m) for m in again]  # the same compressor weights come back
    reference = random_mllm(
        TINY_ENCODER, TINY_LLM, dtype=torch.float32, device=torch.device("cpu"), placement=placement
    )
    assert dict((n, p.shape) for n, p in model.named_parameters()) == dict(
        (n, p.shape) for n, p in reference.named_parameters()
    )
    assert model.num_image_tokens() == reference.num_image_tokens() == 16


def test_compiled_blocks_follow_every_placement_switch():
    # The hazard this design avoids: a whole-model graph keeps the placement it was traced with.
    model = random_mllm(TINY_ENCODER, TINY_LLM, dtype=torch.float32, device=torch.device("cpu"))
    tower = model.model.vision_tower
    switch = CompressionSwitch(tower)
    pixels = torch.randn(
        2, 3, TINY_ENCODER.image_size, TINY_ENCODER.image_size, generator=torch.Generator().manual_seed(0)
    )
    placements = [Placement(), Placement((3,)), Placement((3, 6)), Placement((6,), "avgpool"), Placement((3,))]
    expected = []
    with torch.inference_mode():
        for placement in placements:
            switch.activate(placement)
            expected.append(tower(pixel_values=pixels).last_hidden_state)
        compile_blocks(switch.adapter.blocks(switch.encoder))
        for placement, reference in zip(placements, expected):
            switch.activate(placement)
            torch.testing.assert_close(tower(pixel_values=pixels).last_hidden_state, reference, rtol=1e-4, atol=1e-5)
