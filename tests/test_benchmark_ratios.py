"""The benchmarks' paired-ratio protocol: bootstrap intervals, balanced order, adaptive length."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_ratios():
    if "ratios" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ratios", BENCHMARKS / "ratios.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ratios"] = module
        spec.loader.exec_module(module)
    return sys.modules["ratios"]


ratios = load_ratios()


def test_a_constant_ratio_has_a_point_interval_and_noise_widens_it_around_the_truth():
    exact = ratios.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert (exact.value, exact.low, exact.high, exact.rounds) == (2.0, 2.0, 2.0, 3)
    rng = np.random.default_rng(1)
    base = rng.uniform(0.4, 0.6, 200)  # machine load moves both sides of a pair alike
    noisy = ratios.paired_ratio(1.1 * base * rng.lognormal(0, 0.05, 200), base)
    assert noisy.low < 1.1 < noisy.high and 0 < noisy.half_width < 0.03
    assert str(noisy).count("[") == 1
    with pytest.raises(ValueError, match="equal-length"):
        ratios.paired_ratio([1.0, 2.0], [1.0])


def test_rounds_come_in_balanced_pairs():
    names = ["a", "b", "c", "d"]
    for pair in range(5):
        first, second = (ratios.round_order(names, 2 * pair + k) for k in (0, 1))
        assert sorted(first) == names and second == first[::-1]


def fake_steps(spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"reference": lambda: 1.0, "candidate": lambda: 1.2 * rng.lognormal(0, spread)}


def test_rounds_are_added_until_the_interval_is_narrow_enough():
    quiet = ratios.interleave(fake_steps(0.01), reference="reference", min_rounds=10)
    assert quiet.reached and quiet.rounds == 10
    noisy = ratios.interleave(fake_steps(0.08), reference="reference", min_rounds=10)
    assert noisy.reached and noisy.rounds > 10
    assert noisy.ratio("candidate").half_width < 0.03
    assert "reached" in noisy.summary() and "NOT" not in noisy.summary()


def test_the_cap_ends_a_measurement_that_cannot_get_narrow_and_says_so():
    capped = ratios.interleave(fake_steps(0.5), reference="reference", min_rounds=5,
                               max_rounds=12)
    assert not capped.reached and capped.rounds == 12
    assert "NOT reached" in capped.summary()
    with pytest.raises(ValueError, match="reference"):
        ratios.interleave(fake_steps(0.1), reference="missing")
