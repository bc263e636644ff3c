"""Batched generation and continuation log-likelihoods (no lmms-eval needed)."""

import pytest
import torch
from PIL import Image

from laco.evaluate import answer, load_model
from laco.harness.inference import GenerationSettings, continuation_logprobs, cut_at_stops, generate_answers

COLOURS = [(220, 30, 30), (30, 40, 220), (30, 200, 40)]


def _images():
    return [Image.new("RGB", (32, 32), colour) for colour in COLOURS]


def test_settings_follow_lmms_eval_conventions():
    settings, ignored = GenerationSettings.from_task(
        {"until": "\n", "max_new_tokens": 5, "temperature": 0, "do_sample": True, "image_aspect_ratio": "pad"}, 32
    )
    assert settings.until == ("\n",) and settings.max_new_tokens == 5
    assert not settings.do_sample  # temperature 0 is greedy, as lmms-eval's own models do it
    assert ignored == ["image_aspect_ratio"]
    assert settings.generate_kwargs() == {"max_new_tokens": 5, "do_sample": False}
    sampled, _ = GenerationSettings.from_task({"temperature": 0.7, "top_p": 0.9, "max_gen_toks": 3}, 32)
    assert sampled.generate_kwargs() == {"max_new_tokens": 3, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    default, _ = GenerationSettings.from_task({"until": []}, 12)
    assert default.max_new_tokens == 12 and default.until == ()
    with pytest.raises(ValueError, match="until"):
        GenerationSettings.from_task({"until": 3}, 12)


def test_stops_cut_the_answer():
    assert cut_at_stops("blue\n\nQuestion: more", ["\n\n"]) == "blue"
    assert cut_at_stops(" red. ", []) == "red."
    assert cut_at_stops("a b c", ["c", "b"]) == "a"


def test_greedy_generation_is_laco_evals(easyvqa_checkpoint):
    model, processor = load_model(easyvqa_checkpoint)
    questions = ["what color is the shape?", "is there a circle?", "what shape is in the image?"]
    settings, _ = GenerationSettings.from_task({"until": [], "max_new_tokens": 8, "temperature": 0}, 32)
    assert generate_answers(model, processor, _images(), questions, settings) == answer(
        model, processor, _images(), questions, max_new_tokens=8
    )


def _direct_log_prob(model, processor, image, context, continuation):
    """One unpadded forward pass over prompt + continuation: the reference the batched version must match."""
    prompt = processor([context], [image])
    target = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], torch.tensor([target])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=prompt["pixel_values"]).logits[0]
    log_probs = torch.log_softmax(logits.float(), -1)
    start = prompt["input_ids"].shape[1]
    picked = [log_probs[start - 1 + i, token] for i, token in enumerate(target)]
    greedy = all(log_probs[start - 1 + i].argmax() == token for i, token in enumerate(target))
    return float(sum(picked)), bool(greedy)


def test_batched_log_likelihoods_match_one_at_a_time(easyvqa_checkpoint):
    model, processor = load_model(easyvqa_checkpoint)
    # prompts and continuations of different lengths, so the batch has left and right padding
    contexts = ["what color is the shape?", "is there a red shape in the image? answer yes or no", "color?"]
    continuations = ["yellow", "no", "teal or gray"]
    batched = continuation_logprobs(model, processor, _images(), contexts, continuations)
    for (log_prob, greedy), image, context, continuation in zip(batched, _images(), contexts, continuations):
        reference, reference_greedy = _direct_log_prob(model, processor, image, context, continuation)
        assert log_prob == pytest.approx(reference, abs=1e-4)
        assert greedy == reference_greedy
    assert all(log_prob < 0 for log_prob, _ in batched)


def test_an_empty_continuation_is_refused(easyvqa_checkpoint):
    model, processor = load_model(easyvqa_checkpoint)
    with pytest.raises(ValueError, match="no tokens"):
        continuation_logprobs(model, processor, _images()[:1], ["q"], [""])
