"""The HE / LMA-AT reproduction script: a smoke run end to end, and its pure helpers."""

from __future__ import annotations

import math

import pytest
import torch
from reproduce import load_script, run_smoke, verdict_pattern

VERDICT = verdict_pattern("HE and LMA-AT")
he_lma = load_script("he_lma")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("he_lma")
    done, results = run_smoke("he_lma", out)
    return done, results


@pytest.mark.slow
def test_smoke_run_ends_with_a_verdict(smoke):
    done, _ = smoke
    assert VERDICT.match(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_smoke_results_have_finite_accuracies_for_every_arm(smoke):
    _, results = smoke
    assert results["smoke"] is True
    assert set(results["arms"]) == {"PGD-AT (HE recipe)", "PGD-AT+HE", "PGD-AT (LMA recipe)",
                                    "LMA-AT"}
    for row in results["arms"].values():
        for kind in ("clean", "pgd", "autoattack", "worst_case"):
            value = row[kind]["accuracy"]
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (row["arm"], kind, value)
            assert row[kind]["ci"][0] <= value <= row[kind]["ci"][1]
        assert row["worst_case"]["accuracy"] <= row["autoattack"]["accuracy"]
    assert len(results["claims"]) == 2
    held = sum(c["holds"] for c in results["claims"])
    assert results["verdict"] == ("holds" if held == 2 else "does not hold" if held == 0
                                  else "holds in part (1 of 2)")


@pytest.mark.slow
def test_smoke_prints_the_papers_numbers(smoke):
    done, _ = smoke
    for number in ("86.75", "53.97", "59.36", "53.16", "51.23", "54.45",  # HE Tables 2, 6
                   "85.80", "52.05", "46.62", "83.56", "57.21", "49.10",  # LMA Table 4
                   "86.46", "51.06", "60.62", "52.61",  # LMA Table 5
                   "+5.39", "+3.22", "+2.48", "+1.55"):  # the papers' differences
        assert number in done.stdout, number


# --------------------------------------------------------------------------- helpers
def _report(robust: list[bool], clean: list[bool] | None = None, spec: str = "attack") -> dict:
    clean = [True] * len(robust) if clean is None else clean
    return {"n": len(robust), "epsilon": he_lma.EPSILON, "norm": "linf",
            "clean_correct": clean, "attacks": {spec: {"robust": robust}}}


def _rows(accuracies: dict[str, float]) -> dict[str, dict]:
    return {arm: {"autoattack": {"accuracy": value, "ci": [0.0, 1.0], "n": 10}}
            for arm, value in accuracies.items()}


@pytest.mark.parametrize("method", ["PGD-AT+HE", "LMA-AT"])
def test_improvement_claim_holds_only_when_the_method_beats_pgd_at(method):
    base = [True] * 6 + [False] * 4
    better = [True] * 8 + [False] * 2
    worse = [True] * 5 + [False] * 5
    control = he_lma.CONTROL[method]
    reports = {control: _report(base), method: _report(better)}
    claim = he_lma.improvement_claim(method, "autoattack", "AutoAttack",
                                     _rows({control: 0.6, method: 0.8}), reports, "attack")
    assert claim.holds and "+20.00 pp" in claim.evidence and "McNemar" in claim.evidence
    reports[method] = _report(worse)
    claim = he_lma.improvement_claim(method, "autoattack", "AutoAttack",
                                     _rows({control: 0.6, method: 0.5}), reports, "attack")
    assert not claim.holds and "-10.00 pp" in claim.evidence
    reports[method] = _report(base)
    tie = he_lma.improvement_claim(method, "autoattack", "AutoAttack",
                                   _rows({control: 0.6, method: 0.6}), reports, "attack")
    assert not tie.holds  # equal is not an improvement


def test_claim_evidence_quotes_the_papers_own_difference():
    lma_control, he_control = he_lma.CONTROL["LMA-AT"], he_lma.CONTROL["PGD-AT+HE"]
    reports = {lma_control: _report([True, False]), "LMA-AT": _report([True, True])}
    claim = he_lma.improvement_claim("LMA-AT", "autoattack", "AutoAttack",
                                     _rows({lma_control: 0.5, "LMA-AT": 1.0}), reports, "attack")
    assert "LMA Table 4: AA +2.48 pp" in claim.evidence
    assert "LMA Table 5: AA +1.55 pp" in claim.evidence
    assert lma_control in claim.text
    reports = {he_control: reports[lma_control], "PGD-AT+HE": reports["LMA-AT"]}
    rows = {he_control: {"pgd": {"accuracy": 0.5}}, "PGD-AT+HE": {"pgd": {"accuracy": 1.0}}}
    claim = he_lma.improvement_claim("PGD-AT+HE", "pgd", "PGD-20", rows, reports, "attack")
    assert claim.holds and "HE Table 2: PGD-20 +5.39 pp" in claim.evidence
    assert "not significant at 5%" in claim.evidence  # one discordant point of two


def test_milestones_follow_the_papers_fractions():
    assert he_lma.milestones(100, he_lma.HE_RECIPE.decays) == [75, 90]
    assert he_lma.milestones(130, he_lma.LMA_RECIPE.decays) == [75, 90]
    assert he_lma.milestones(4, he_lma.HE_RECIPE.decays) == [3]
    assert he_lma.milestones(1, he_lma.HE_RECIPE.decays) == []


def test_arms_use_their_papers_knobs_and_recipes():
    configs = {name: he_lma.arm_config(name, he_lma.FULL, threads=1) for name in he_lma.ARMS}
    assert configs["PGD-AT+HE"].defense_params == {"he_base": "pgd_at", "scale": 15.0,
                                                   "margin": 0.2}
    assert configs["LMA-AT"].defense_params == {"tau": 0.2, "delta": 0.9, "alpha": 5.345,
                                                "beta": 86.0}
    recipe = {name: (c.lr, c.batch_size, c.weight_decay, tuple(c.lr_milestones))
              for name, c in configs.items()}
    assert recipe == {"PGD-AT (HE recipe)": (0.01, 128, 5e-4, (2,)),
                      "PGD-AT+HE": (0.01, 128, 5e-4, (2,)),
                      "PGD-AT (LMA recipe)": (0.01, 100, 3.5e-3, (2,)),
                      "LMA-AT": (0.01, 100, 3.5e-3, (2,))}
    # each method and its control differ in the defense alone
    for method, control in he_lma.CONTROL.items():
        differing = {k for k, v in configs[method].to_dict().items()
                     if configs[control].to_dict()[k] != v}
        assert differing == {"defense", "defense_params"}, (method, differing)
    threat = {(c.epsilon, c.attack_steps, c.attack_step_size, c.epochs, c.train_subset)
              for c in configs.values()}
    assert threat == {(0.1, 10, 0.025, he_lma.FULL.epochs, he_lma.FULL.train_images)}


def test_he_logit_check_rejects_a_plain_head():
    from trainables.models import create_model

    model = create_model("small_cnn", in_channels=1, image_size=28).eval()
    with pytest.raises(RuntimeError, match="not s·cosθ"):
        he_lma.check_he_logits(model, torch.rand(4, 1, 28, 28))
    model.head = he_lma.CosineHead(200, 10, scale=15.0)
    he_lma.check_he_logits(model, torch.rand(4, 1, 28, 28))  # s·cosθ passes
