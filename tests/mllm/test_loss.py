"""laco.mllm.loss: the answer-only loss equals the model's own loss at a fraction of the LM head's cost."""

import torch

from laco.bench.models import random_mllm
from laco.bench.presets import TINY_ENCODER, TINY_LLM
from laco.measure.flop_counting import flop_counter_mode
from laco.mllm import IGNORE_INDEX
from laco.mllm.loss import answer_loss, next_token_targets


def _batch(model, answer: int = 3, text: int = 8, batch: int = 2):
    image = model.num_image_tokens()
    generator = torch.Generator().manual_seed(0)
    ids = torch.cat(
        [
            torch.full((batch, image), TINY_LLM.vocab - 1),
            torch.randint(0, TINY_LLM.vocab - 1, (batch, text), generator=generator),
        ],
        dim=1,
    )
    labels = ids.clone()
    labels[:, : ids.shape[1] - answer] = IGNORE_INDEX
    labels[1, -1] = IGNORE_INDEX  # sequences may have different numbers of labelled tokens
    size = TINY_ENCODER.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    return {"input_ids": ids, "pixel_values": pixels, "labels": labels}


def test_answer_loss_equals_the_models_own_loss_and_projects_only_labelled_positions():
    model = random_mllm(TINY_ENCODER, TINY_LLM, dtype=torch.float32, device=torch.device("cpu"))
    batch = _batch(model)
    loss, outputs = answer_loss(model, batch)
    torch.testing.assert_close(loss, model(**batch).loss)
    assert outputs.logits.shape == (3 + 2, TINY_LLM.vocab)
    assert "labels" in batch  # the caller's inputs are left as they were

    with flop_counter_mode() as sparse:
        answer_loss(model, batch)
    with flop_counter_mode() as full:
        model(**batch)
    saved = full.get_total_flops() - sparse.get_total_flops()
    positions = batch["input_ids"].numel() - 5
    assert saved == 2 * positions * TINY_LLM.width * TINY_LLM.vocab


def test_targets_are_the_next_tokens_labels_and_the_divisor_can_be_given():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    targets, keep = next_token_targets(labels)
    assert targets.tolist() == [[IGNORE_INDEX, 7, 8, IGNORE_INDEX]] and keep.tolist() == [[False, True, True, False]]
    model = random_mllm(TINY_ENCODER, TINY_LLM, dtype=torch.float32, device=torch.device("cpu"))
    batch = _batch(model)
    mean, _ = answer_loss(model, batch)
    total, _ = answer_loss(model, batch, num_items_in_batch=1)  # gradient accumulation passes the global count
    torch.testing.assert_close(total, mean * 5)
