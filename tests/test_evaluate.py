"""The evaluator: AutoAttack parity with pyautoattack, orderings, intervals, determinism."""

import json

import pytest
import torch
from pyautoattack import AutoAttack

from attacks.evaluate import build_attack, evaluate_model, wilson_interval
from attacks.pgd import pgd
from attacks.suite import create_attack, list_attacks, parse_spec
from trainables.registry import UnknownNameError


@pytest.fixture(scope="module")
def points(mnist_test_slice):
    x, y = mnist_test_slice
    return x[:48], y[:48]


def test_wilson_interval_known_values():
    # Wilson (1927) score interval, z = 1.96: 8/10 → (0.4902, 0.9433); 0/20 → (0, 0.1611)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_autoattack_path_equals_pyautoattack(trained_mlp, points):
    x, y = points
    epsilon, seed = 0.03, 3
    report = evaluate_model(trained_mlp, x, y, attacks=["autoattack:square_queries=300"],
                            epsilon=epsilon, seed=seed, checks=False)
    ours = report.attacks["autoattack:square_queries=300"]

    torch.manual_seed(1234)  # pyautoattack reseeds the global RNG; ours must not
    before = torch.get_rng_state()
    direct = AutoAttack(trained_mlp, eps=epsilon, norm="Linf", seed=seed, version="standard")
    direct.square.n_queries = 300
    x_adv, _ = direct.run_standard_evaluation(x, y, batch_size=500)
    with torch.no_grad():
        expected = trained_mlp(x_adv).argmax(1) == y
    assert not torch.equal(before, torch.get_rng_state())  # the direct call did reseed
    assert torch.equal(ours.robust, expected)
    assert 0 < expected.float().mean() < report.clean.float().mean()  # a non-trivial case
    counts = ours.details["cumulative_robust"]
    assert list(counts) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert counts["square"] == int(expected.sum())


def test_worst_case_below_every_attack_below_clean(trained_mlp, points):
    x, y = points
    attacks = ["fgsm", "pgd-20", "pgd:steps=30,loss=cw", "apgd-ce", "square:queries=200",
               "spsa:preset=lma-at"]
    report = evaluate_model(trained_mlp, x, y, attacks=attacks, epsilon=0.05, checks=False)
    result = report.to_dict()
    clean, worst = result["clean_accuracy"], result["worst_case_accuracy"]
    for label in attacks:
        assert worst <= result["attacks"][label]["accuracy"] <= clean
    expected_worst = report.clean.clone()
    for label in attacks:
        expected_worst &= torch.tensor(result["attacks"][label]["robust"])
    assert worst == pytest.approx(expected_worst.float().mean().item())
    assert worst < clean


def test_report_is_json_with_intervals_and_counts(trained_mlp, points):
    x, y = points
    report = evaluate_model(trained_mlp, x, y, attacks=["pgd-20"], epsilon=0.05)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["n"] == len(x)
    for key in ("clean_accuracy", "worst_case_accuracy", "flags", "attacks"):
        assert key in data
    entry = data["attacks"]["pgd-20"]
    k = sum(entry["robust"])
    assert entry["accuracy"] == pytest.approx(k / len(x))
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(wilson_interval(k, len(x)))
    assert entry["n"] == len(x) and entry["seconds"] > 0 and len(entry["robust"]) == len(x)
    assert entry["settings"]["steps"] == 20 and data["flags"] == []


def test_deterministic_and_leaves_the_callers_rng_alone(trained_mlp, points):
    x, y = points
    attacks = ["pgd:steps=5,random_start=uniform", "spsa:steps=3,samples=32", "apgd-ce"]
    torch.manual_seed(7)
    before = torch.get_rng_state()
    first = evaluate_model(trained_mlp, x, y, attacks=attacks, epsilon=0.08, seed=5)
    assert torch.equal(before, torch.get_rng_state())
    second = evaluate_model(trained_mlp, x, y, attacks=attacks, epsilon=0.08, seed=5)
    for label in attacks:
        assert torch.equal(first.attacks[label].robust, second.attacks[label].robust)


def test_always_attacks_in_eval_mode_and_restores_mode(points):
    x, y = points
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10),
                                torch.nn.Dropout(0.5))
    model.train()
    report = evaluate_model(model, x, y, attacks=["pgd:steps=3"], epsilon=0.05)
    assert model.training
    again = evaluate_model(model, x, y, attacks=["pgd:steps=3"], epsilon=0.05)
    assert torch.equal(report.clean, again.clean)  # dropout was off throughout


def test_epsilon_curve_on_request(trained_mlp, points):
    x, y = points
    report = evaluate_model(trained_mlp, x, y, attacks=["fgsm"], epsilon=0.05,
                            epsilon_curve=[0.0, 0.02, 0.1], curve_attack="apgd-ce",
                            checks=False)
    curve = report.to_dict()["epsilon_curve"]
    assert [p["epsilon"] for p in curve] == [0.0, 0.02, 0.1]
    accuracies = [p["accuracy"] for p in curve]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] == pytest.approx(report.clean.float().mean().item())


def test_suite_registry_and_specs():
    names = list_attacks()
    for expected in ("fgsm", "pgd", "autoattack", "apgd-ce", "apgd-t", "fab-t", "square", "spsa",
                     "l2-pgd", "adaptive", "pgd-100-ce", "pgd-100-cw"):
        assert expected in names
    assert parse_spec("pgd:steps=100,loss=cw") == ("pgd", {"steps": 100, "loss": "cw"})
    assert parse_spec("autoattack:parts=apgd-ce+square")[1] == {"parts": ["apgd-ce", "square"]}
    with pytest.raises(UnknownNameError, match="known: .*autoattack"):
        create_attack("deepfool", epsilon=0.1)
    with pytest.raises(ValueError, match="accepted: .*steps"):
        create_attack("pgd", epsilon=0.1, stepz=3)
    with pytest.raises(ValueError, match="unknown AutoAttack version"):
        create_attack("autoattack", epsilon=0.1, version="fast")
    label, attack = build_attack("pgd-100-cw", epsilon=0.3, norm="linf", seed=1)
    assert label == "pgd-100-cw"
    assert attack.settings | {"steps": 100, "loss": "cw", "epsilon": 0.3, "seed": 1} \
        == attack.settings
    assert create_attack("spsa-light", epsilon=0.1).settings["samples"] == 100


def test_l2_pgd_stays_in_the_l2_ball(trained_mlp, points):
    x, y = points
    x_adv = create_attack("l2-pgd", epsilon=1.0, steps=10)(trained_mlp, x, y)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    report = evaluate_model(trained_mlp, x, y, attacks=["l2-pgd:steps=10"], epsilon=1.0,
                            norm="l2", checks=False)
    assert report.accuracy("l2-pgd:steps=10") < report.clean.float().mean()


def test_adaptive_attack_uses_the_defense_objective(trained_mlp, points):
    x, y = points
    trades = create_attack("adaptive", epsilon=0.05, defense="trades", steps=10)
    assert trades.settings["objective"] == "training loss"
    x_adv = trades(trained_mlp, x, y)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6
    with torch.no_grad():
        assert (trained_mlp(x_adv).argmax(1) == y).float().mean() < 0.9
    he = create_attack("adaptive", epsilon=0.05, defense="he", steps=2)
    assert he.settings["objective"] == "adaptive_attack_loss"


def test_spec_without_random_start_is_the_deterministic_pgd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    name, params = parse_spec("pgd:steps=5,step_size=0.02,random_start=none")
    attack = create_attack(name, epsilon=0.1, **params)
    expected = pgd(model, x, y, epsilon=0.1, steps=5, step_size=0.02, random_start="none")
    assert torch.equal(attack.run(model, x, y).x_adv, expected)
    assert torch.equal(attack.run(model, x, y).x_adv, expected)  # no randomness drawn
