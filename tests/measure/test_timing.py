"""The interleaved timer and its statistics, on fake workloads."""

import time

import pytest
import torch
from torch import nn

from laco.measure.timing import (
    Clock,
    Samples,
    StackTimer,
    Stats,
    paired_ratios,
    paired_speedup,
    quantile,
    run_interleaved,
)  # fmt: skip


def test_rounds_interleave_with_a_rotating_start():
    log: list[str] = []
    workloads = {name: (lambda name=name: log.append(name)) for name in "abc"}
    prepared: list[str] = []
    samples = run_interleaved(workloads, reps=3, warmup=1, prepare={"b": lambda: prepared.append("b")})
    assert log == list("abcbcacababc")  # warm-up round, then rounds rotated by 1, 2, 0
    assert prepared == ["b"] * 4
    assert samples["a"].rounds == [0, 1, 2] and samples["a"].slots == [2, 1, 0]
    assert all(len(s.seconds) == 3 for s in samples.values())


def test_timer_measures_a_known_workload_and_its_phases():
    def sleepy():
        time.sleep(0.02)
        return {"inner": 0.5}

    samples = run_interleaved({"fast": lambda: None, "slow": sleepy}, reps=4, warmup=0)
    assert samples["slow"].stats().median >= 0.02 > samples["fast"].stats().median
    assert samples["slow"].phases == {"inner": [0.5] * 4}
    assert min(paired_ratios(samples["slow"], samples["fast"])) > 10
    with pytest.raises(ValueError, match="reps"):
        run_interleaved({"a": lambda: None}, reps=0)
    with pytest.raises(ValueError, match="not workloads"):
        run_interleaved({"a": lambda: None}, reps=1, prepare={"b": lambda: None})


def test_statistics():
    stats = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stats.median, stats.q1, stats.q3, stats.iqr, stats.min, stats.max) == (3.0, 2.0, 4.0, 2.0, 1.0, 5.0)
    assert Stats.of([1.0, 2.0]).median == 1.5
    assert quantile([0.0, 10.0], 0.25) == 2.5
    assert Stats.of([7.0]).iqr == 0
    with pytest.raises(ValueError, match="empty"):
        Stats.of([])
    base = Samples([2.0, 4.0, 6.0], rounds=[0, 1, 2])
    variant = Samples([1.0, 1.0], rounds=[0, 2])
    assert paired_ratios(base, variant) == [2.0, 6.0]


def test_stack_timer_splits_forward_and_backward():
    layers = nn.ModuleList(nn.Linear(256, 256) for _ in range(3))
    head = nn.Linear(256, 1)
    timer = StackTimer(layers, Clock()).attach()
    x = torch.randn(512, 256, requires_grad=True)
    h = x
    for layer in layers:
        h = layer(h)
    head(h).sum().backward()
    assert timer.forward_seconds() > 0 and timer.backward_seconds() > 0
    timer.reset()
    with torch.no_grad():
        for layer in layers:
            x = layer(x)
    assert timer.forward_seconds() > 0 and timer.backward_seconds() == 0
    timer.detach()
    timer.reset()
    layers[0](x)
    assert timer.forward_seconds() == 0


def test_a_speedup_is_the_median_of_per_round_ratios_not_the_ratio_of_medians():
    base = Samples([6.0, 2.0, 4.0], {}, [0, 1, 2], [0, 1, 0])
    variant = Samples([2.0, 2.0, 2.0], {}, [0, 1, 2], [1, 0, 1])
    speed = paired_speedup(base, variant, bound=2.5)
    assert (speed.measured, speed.q1, speed.q3, speed.bound) == (2.0, 1.5, 2.5, 2.5)
    assert speed.efficiency == 0.8 and speed.to_dict()["efficiency"] == 0.8
    unpaired = paired_speedup(Samples([6.0, 2.0]), Samples([2.0, 2.0]), bound=2.0)  # no rounds: medians' ratio
    assert unpaired.measured == unpaired.q1 == unpaired.q3 == 2.0
