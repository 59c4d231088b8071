"""The EMR Table 1 reproduction script: its smoke run end to end, and its claim logic."""

from __future__ import annotations

import math

import pytest
from reproduce import load_script, run_smoke, verdict_pattern

emr = load_script("emr_table1")
LAST_LINE = verdict_pattern("EMR Table 1")
PAPER_NUMBERS = ("98.41", "24.41", "97.50", "87.56", "98.68", "92.62", "92.78",
                 "1.11 ± 0.51", "1.12 ± 0.53", "4.41 ± 1.24", "2.24 ± 0.98",
                 "1.21 ± 0.69", "2.34 ± 0.94", "3.83 ± 1.27", "2.42 ± 0.99")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("emr_table1")
    completed, results = run_smoke("emr_table1", out)
    return completed, results, out


@pytest.mark.slow
def test_smoke_run_exits_cleanly_with_a_verdict(smoke_run):
    completed, _, _ = smoke_run
    lines = completed.stdout.strip().splitlines()
    assert LAST_LINE.match(lines[-1]), lines[-1]


@pytest.mark.slow
def test_smoke_results_have_finite_accuracies_for_every_arm(smoke_run):
    completed, results, _ = smoke_run
    assert set(results["arms"]) == {"ST", "ST+EMR", "AT", "AT+EMR"}
    for name, arm in results["arms"].items():
        for key in ("clean_accuracy", "robust_accuracy"):
            value = arm[key]
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (name, key, value)
        assert arm["robust_accuracy"] <= arm["clean_accuracy"], name
    assert len(results["claims"]) == 3
    assert results["verdict"] in completed.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_smoke_table_prints_the_papers_numbers(smoke_run):
    completed, _, out = smoke_run
    for number in PAPER_NUMBERS:
        assert number in completed.stdout, number
    assert "Scale: 1 of 50 epochs" in (out / "results.md").read_text()


# ------------------------------------------------------------------------- pure helpers
def accuracy(value, n=2000):
    from attacks.evaluate import wilson_interval

    low, high = wilson_interval(round(value * n), n)
    return {"accuracy": value, "ci_low": low, "ci_high": high, "n": n}


def margin(mean, std, count=1900):
    return {"effective_margin_mean": mean, "effective_margin_std": std,
            "effective_margin_count": count}


def test_wide_gain_holds_at_the_papers_numbers_and_fails_on_a_small_gain():
    assert emr.claim_wide_gain(accuracy(0.2441), accuracy(0.8756)).holds
    assert not emr.claim_wide_gain(accuracy(0.30), accuracy(0.45)).holds
    assert not emr.claim_wide_gain(accuracy(0.60), accuracy(0.50)).holds


def test_wide_gain_threshold_is_inclusive_and_explicit():
    assert emr.WIDE_GAIN == pytest.approx(0.20)
    assert emr.claim_wide_gain(accuracy(0.25), accuracy(0.45)).holds
    assert not emr.claim_wide_gain(accuracy(0.25), accuracy(0.449)).holds


def test_margin_claim_needs_an_increase_beyond_noise():
    assert emr.claim_margin_raised(margin(1.12, 0.53), margin(2.24, 0.98)).holds
    assert not emr.claim_margin_raised(margin(1.12, 0.53), margin(1.10, 0.50)).holds
    # a rise smaller than 1.96 standard errors (≈ 0.03 here) is not counted
    assert not emr.claim_margin_raised(margin(1.12, 0.53), margin(1.13, 0.53)).holds
    assert not emr.claim_margin_raised(margin(1.12, 0.53), margin(math.nan, math.nan)).holds


def test_at_emr_claim_decides_on_point_estimates_and_reports_noise():
    at, better = accuracy(0.9262), accuracy(0.9278)
    claim = emr.claim_at_emr_not_worse(at, better)
    assert claim.holds and "within sampling noise" in claim.evidence
    assert not emr.claim_at_emr_not_worse(better, at).holds
    disjoint = emr.claim_at_emr_not_worse(accuracy(0.70), accuracy(0.90))
    assert disjoint.holds and "disjoint" in disjoint.evidence
    assert not emr.claim_at_emr_not_worse(accuracy(0.90), accuracy(0.70)).holds


def test_milestone_stays_proportional_to_the_papers_schedule():
    assert emr.Scale(50, 1, 1, 1).milestone == 30
    assert emr.Scale(5, 1, 1, 1).milestone == 3
    assert emr.Scale(10, 1, 1, 1).milestone == 6
    assert emr.Scale(1, 1, 1, 1).milestone == 1


def test_arm_configs_keep_the_papers_settings():
    configs = {arm.name: emr.arm_config(arm, emr.DEFAULT) for arm in emr.ARMS}
    for config in configs.values():
        assert (config.model, config.dataset, config.batch_size, config.lr) == (
            "mlp", "mnist", 100, 0.01)
        assert config.weight_decay == pytest.approx(1e-3)
        assert config.epsilon == pytest.approx(0.1)
        assert config.attack_step_size == pytest.approx(0.01)
        assert config.attack_steps == 20 and config.attack_random_start == "none"
        assert config.lr_milestones == [3] and config.epochs == 5
    assert configs["ST"].defense == "standard"
    assert configs["AT"].defense == "pgd_at"
    assert configs["ST+EMR"].defense_params == {"emr_base": "standard", "emr_exact": True,
                                                "lambda_emr": 0.1}
    assert configs["AT+EMR"].defense_params == {"emr_base": "pgd_at", "emr_exact": True,
                                                "lambda_emr": 3e-4}


def test_scale_string_says_how_far_the_run_is_shrunk():
    text = emr.DEFAULT.describe()
    assert "5 of 50 epochs" in text and "12,000 of 60,000 training images" in text
    assert "2,000 of 10,000 test images" in text and "after epoch 3" in text
