"""The AMR Tables 1–2 reproduction script: its smoke run end to end and its claim logic."""

from __future__ import annotations

import math

import pytest
from reproduce import load_script, run_smoke, verdict_pattern

VERDICT = verdict_pattern("AMR Tables 1-2")


@pytest.fixture(scope="module")
def amr_tables():
    return load_script("amr_tables")


def _in_unit_interval(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= 1.0


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    done, results = run_smoke("amr_tables", tmp_path)
    lines = done.stdout.strip().splitlines()
    assert VERDICT.match(lines[-1]), lines[-1]
    assert results["smoke"] is True and len(results["claims"]) == 4
    arms = results["arms"]
    assert sorted(arms) == ["cnn-amr", "cnn-standard", "mlp-amr", "mlp-standard"]
    for arm in arms.values():
        assert _in_unit_interval(arm["clean"]["accuracy"])
        assert sorted(arm["robust"]) == ["0.5", "1.0", "1.5", "2.0"]
        previous = arm["clean"]["accuracy"]
        for radius in ("0.5", "1.0", "1.5", "2.0"):
            cell = arm["robust"][radius]
            assert _in_unit_interval(cell["accuracy"])
            assert cell["ci_low"] <= cell["accuracy"] <= cell["ci_high"]
            assert cell["accuracy"] <= previous  # radii are nested
            previous = cell["accuracy"]
        assert math.isfinite(arm["average_margin"]) and arm["average_margin"] >= 0
    table = done.stdout
    for number in ("98.24", "89.26", "5.06", "0.80", "96.01", "38.44", "1.41", "99.14", "87.52",
                   "1.01", "99.25", "97.33", "1.40", "93.12", "22.64"):
        assert number in table, number


def test_margin_claim_both_outcomes(amr_tables):
    raised = amr_tables.margin_claim("MLP", standard=0.8, amr=1.4, paper=(0.80, 1.41))
    lowered = amr_tables.margin_claim("MLP", standard=1.4, amr=0.8, paper=(0.80, 1.41))
    tied = amr_tables.margin_claim("MLP", standard=1.0, amr=1.0, paper=(0.80, 1.41))
    assert raised.holds and not lowered.holds and not tied.holds
    assert "0.800" in raised.evidence and "1.400" in raised.evidence


def test_robustness_claim_needs_every_large_radius(amr_tables):
    std = {0.5: 0.9, 1.0: 0.5, 1.5: 0.16, 2.0: 0.05}
    better = {0.5: 0.9, 1.0: 0.8, 1.5: 0.63, 2.0: 0.38}
    only_one = {0.5: 0.9, 1.0: 0.8, 1.5: 0.63, 2.0: 0.05}
    worse_small_only = {0.5: 0.5, 1.0: 0.4, 1.5: 0.2, 2.0: 0.1}
    assert amr_tables.robustness_claim("CNN", std, better).holds
    assert not amr_tables.robustness_claim("CNN", std, only_one).holds
    assert amr_tables.robustness_claim("CNN", std, worse_small_only).holds  # ε < 1.5 not judged
    assert not amr_tables.robustness_claim("CNN", better, std).holds


def _planted_arm(module, architecture, method, margin, accuracies):
    paper = module.PAPER_TABLE1[(architecture, method)]
    return {"architecture": architecture, "method": method, "average_margin": margin,
            "robust": {str(r): {"accuracy": a} for r, a in zip(module.RADII, accuracies,
                                                                 strict=True)},
            "paper": {"average_margin": paper[5]}}


def test_claims_for_planted_arms(amr_tables):
    arms = {"mlp-standard": _planted_arm(amr_tables, "mlp", "standard", 0.8, (.9, .5, .2, .1)),
            "mlp-amr": _planted_arm(amr_tables, "mlp", "amr", 1.4, (.9, .8, .6, .4)),
            "cnn-standard": _planted_arm(amr_tables, "cnn", "standard", 1.2, (.9, .9, .9, .9)),
            "cnn-amr": _planted_arm(amr_tables, "cnn", "amr", 1.0, (.9, .9, .8, .8))}
    claims = amr_tables.claims_for(arms)
    assert [c.holds for c in claims] == [True, False, True, False]
    assert "MLP" in claims[0].text and "CNN" in claims[1].text


def test_arm_configs_follow_appendix_f(amr_tables):
    for architecture in amr_tables.ARCHITECTURES:
        std = amr_tables.arm_config(architecture, "standard", amr_tables.FULL).resolved()
        amr = amr_tables.arm_config(architecture, "amr", amr_tables.FULL).resolved()
        for config in (std, amr):
            assert (config.lr, config.momentum, config.nesterov, config.batch_size,
                    config.weight_decay, config.schedule) == (0.01, 0.9, True, 128, 0.0,
                                                              "constant")
            assert config.epochs == amr_tables.FULL.epochs[architecture.key]
        assert std.defense == "standard" and amr.defense == "amr"
        assert std.model == amr.model and std.model_params == amr.model_params
        tau = 5.0 if architecture.key == "mlp" else 10.0
        assert amr.defense_params == {"lambda_margin": 0.1, "tau": tau, "beta_orth": 1e-3}
    mlp = amr_tables.arm_config(amr_tables.ARCHITECTURES[0], "amr", amr_tables.FULL)
    assert mlp.model == "mlp" and mlp.model_params == {"hidden": 1024, "layers": 1}


def test_nested_robustness_never_grows_with_radius(amr_tables, mnist_test_slice, trained_mlp):
    x, y = mnist_test_slice
    clean, robust = amr_tables.nested_robustness(trained_mlp, x[:64], y[:64], steps=10)
    previous = clean
    for radius in amr_tables.RADII:
        assert not bool((robust[radius] & ~previous).any())
        previous = robust[radius]
    assert bool(clean.any()) and not bool(robust[2.0].all())


def test_scale_text_says_how_far_it_shrinks(amr_tables):
    text = amr_tables.scale_text(amr_tables.FULL)
    assert "of 200 epochs" in text and "1000 of 1000 steps" in text
    assert "of 60,000 training images" in text and "of 51,200 ball samples" in text
