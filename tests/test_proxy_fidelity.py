"""The proxy-fidelity benchmark's statistics: Spearman's ρ and its bootstrap interval."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_proxy_fidelity():
    if "proxy_fidelity" not in sys.modules:
        spec = importlib.util.spec_from_file_location("proxy_fidelity",
                                                      BENCHMARKS / "proxy_fidelity.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["proxy_fidelity"] = module
        spec.loader.exec_module(module)
    return sys.modules["proxy_fidelity"]


proxy = load_proxy_fidelity()


def test_known_rankings_give_the_exact_rho():
    assert proxy.spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert proxy.spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # one adjacent swap among 5: 1 - 6·2 / (5·24) = 0.9
    assert proxy.spearman([1, 2, 3, 4, 5], [0.1, 0.3, 0.2, 0.4, 0.5]) == pytest.approx(0.9)
    # ranks only: any increasing transform keeps ρ
    assert proxy.spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)
    assert math.isnan(proxy.spearman([1, 2, 3], [7, 7, 7]))


def test_ties_get_their_average_rank_with_or_without_scipy(monkeypatch):
    a, b = [1, 2, 2, 3], [1, 3, 2, 4]
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): Pearson of the ranks
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 3, 2, 4])[0, 1]
    assert proxy.spearman(a, b) == pytest.approx(expected)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # the import fails: own ranks
    assert proxy.spearman(a, b) == pytest.approx(expected)
    assert proxy.spearman([1, 2, 3, 4, 5], [0.1, 0.3, 0.2, 0.4, 0.5]) == pytest.approx(0.9)
    assert proxy._ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_the_bootstrap_interval_contains_rho_and_narrows_to_a_point_for_a_perfect_ranking():
    rho, low, high = proxy.bootstrap_spearman(range(12), [x * x for x in range(12)],
                                              resamples=300)
    assert (rho, low, high) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    rng = np.random.default_rng(3)
    truth = rng.uniform(size=15)
    noisy = truth + rng.normal(scale=0.15, size=15)
    rho, low, high = proxy.bootstrap_spearman(truth, noisy, resamples=500, seed=1)
    assert low <= rho <= high
    assert -1 <= low < high <= 1
    assert rho == pytest.approx(proxy.spearman(truth, noisy))


def test_knob_draws_are_seeded_and_inside_the_space():
    first, again = proxy.sample_trials(12, seed=5), proxy.sample_trials(12, seed=5)
    assert first == again
    for knobs in first:
        for name, (low, high) in proxy.SPACE.items():
            assert low <= knobs[name] <= high
        assert knobs["epochs"] in proxy.EPOCHS


def test_the_gain_over_a_baseline_is_the_difference_of_the_two_rhos_inside_its_interval():
    truth = np.arange(10.0)
    good = truth.copy()
    bad = np.array([1, 0, 3, 2, 5, 4, 7, 6, 9, 8], dtype=float)
    gain, low, high = proxy.bootstrap_gain(good, bad, truth, resamples=300)
    assert gain == pytest.approx(1.0 - proxy.spearman(bad, truth))
    assert low <= gain <= high
    assert proxy.bootstrap_gain(truth, truth, bad, resamples=50) == (0.0, 0.0, 0.0)
