"""What a client of a served laco model sends and reads back: the Prometheus histograms of ``/metrics`` and the
images no cache can serve."""

from __future__ import annotations

from laco.serve.client import PREFILL, histogram, random_image_url


def test_histograms_are_read_from_prometheus_text():
    text = (
        "# HELP vllm:request_prefill_time_seconds x\n"
        'vllm:request_prefill_time_seconds_bucket{le="0.3",model_name="a"} 1.0\n'
        'vllm:request_prefill_time_seconds_sum{engine="0",model_name="a"} 1.5\n'
        'vllm:request_prefill_time_seconds_count{engine="0",model_name="a"} 3.0\n'
        'vllm:request_prefill_time_seconds_sum{engine="1",model_name="a"} 0.5\n'
        'vllm:request_prefill_time_seconds_count{engine="1",model_name="a"} 1.0\n'
        'vllm:request_decode_time_seconds_sum{model_name="a"} 9.0\n'
    )
    assert histogram(text, PREFILL) == (2.0, 4.0)
    assert histogram(text, "vllm:absent") == (0.0, 0.0)


def test_every_request_gets_its_own_image():
    urls = {random_image_url(seed, 16) for seed in range(5)}
    assert len(urls) == 5 and all(url.startswith("data:image/png;base64,") for url in urls)
    assert random_image_url(3, 16) == random_image_url(3, 16)  # the same images for both models
