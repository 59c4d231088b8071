"""NaN and infinity never pass for robustness; kept adversarial points re-check a result."""

import re

import pytest
import torch
from torch import nn

from attacks.evaluate import (
    Broken,
    attack_points,
    evaluate_model,
    predictions,
    run_attack,
    threat_model_violations,
)
from attacks.shards import Plan, Progress, run_unit
from attacks.suite import Attack, AttackOutput, create_attack
from attacks.verify import load_points_file, save_points, verify_points


class NaNOffData(nn.Module):
    """Honest on MNIST's grey levels (multiples of 1/255), NaN logits anywhere else."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        logits = self.inner(x)
        off = ((x * 255 - torch.round(x * 255)).abs() > 1e-3).flatten(1).any(1)
        return torch.where(off[:, None], torch.full_like(logits, float("nan")), logits)


class InfiniteOn(nn.Module):
    """Infinite logits on the first ``count`` points of every batch."""

    def __init__(self, inner: nn.Module, count: int) -> None:
        super().__init__()
        self.inner, self.count = inner, count

    def forward(self, x):
        logits = self.inner(x).clone()
        logits[:self.count] = float("inf")
        return logits


def test_nan_logits_count_as_broken_and_raise_a_flag(trained_mlp, mnist_test_slice):
    x, y = (t[:64] for t in mnist_test_slice)
    model = NaNOffData(trained_mlp).eval()
    honest = evaluate_model(trained_mlp, x, y, attacks=["pgd:steps=5"], epsilon=0.05,
                            checks=False)
    report = evaluate_model(model, x, y, attacks=["pgd:steps=5"], epsilon=0.05, checks=False)
    assert torch.equal(report.clean, honest.clean)  # clean MNIST points sit on the grid
    assert honest.worst_case.float().mean() > 0.5
    assert report.worst_case.sum() == 0  # every perturbed point gives NaN: none is robust
    assert any("NaN or infinite logits" in flag for flag in report.flags)


def test_infinite_logits_are_not_a_prediction(trained_mlp, mnist_test_slice):
    x, y = (t[:16] for t in mnist_test_slice)
    predicted = predictions(InfiniteOn(trained_mlp, 3).eval(), x, batch_size=8)
    assert (predicted[[0, 1, 2, 8, 9, 10]] == -1).all()
    assert torch.equal(predicted[3:8], trained_mlp(x[3:8]).argmax(1))


def _returning(points):
    return Attack("planted", {"epsilon": 0.1}, True,
                  lambda model, x, y: AttackOutput(points(x)))


@pytest.mark.parametrize("points, kind", [
    (lambda x: torch.where(torch.rand_like(x) < 0.01, float("nan"), x), "not finite"),
    (lambda x: (x + 0.2).clamp(0, 1), "outside the ε-ball"),
    (lambda x: x + 0.05, "outside [0, 1]"),
])
def test_points_outside_the_threat_model_are_refused(trained_mlp, mnist_test_slice, points,
                                                     kind):
    x, y = (t[:32] for t in mnist_test_slice)
    assert threat_model_violations(points(x), x, 0.1, "linf")[kind] > 0
    with pytest.raises(RuntimeError, match=re.escape(kind)):
        run_attack(trained_mlp, x, y, _returning(points), epsilon=0.1)


def test_kept_points_are_the_broken_ones(trained_mlp, mnist_test_slice):
    x, y = (t[:48] for t in mnist_test_slice)
    result, broken = attack_points(trained_mlp, x, y, create_attack("pgd:steps=10",
                                                                    epsilon=0.1), epsilon=0.1)
    clean = predictions(trained_mlp, x, 256) == y
    assert torch.equal(broken.index, (clean & ~result.robust).nonzero().flatten())
    assert (trained_mlp(broken.x_adv).argmax(1) != y[broken.index]).all()


def test_worst_case_points_verify_exactly_and_tampering_is_caught(tmp_path, trained_mlp,
                                                                  mnist_test_slice):
    x, y = (t[:60] for t in mnist_test_slice)
    plan = Plan(attacks=("fgsm", "pgd:steps=10"), epsilon=0.08, norm="linf", seed=0,
                n_examples=60, shard_size=25)
    progress = Progress(tmp_path / "state", "run", plan)
    for unit in progress.pending():
        progress.save(unit, run_unit(trained_mlp, x, y, unit, plan))
    report, kept = progress.merge(), progress.worst_points()
    robust = int(report.worst_case.sum())
    assert 0 < len(kept.index) == int(report.clean.sum()) - robust
    path = save_points(tmp_path / "adversarial.safetensors", kept, epsilon=0.08, n=60)
    loaded, metadata = load_points_file(path)
    assert metadata == {"epsilon": 0.08, "n": 60} and torch.equal(loaded.index, kept.index)

    found = verify_points(trained_mlp, x, y, loaded, epsilon=0.08, norm="linf",
                          reported_robust=robust)
    assert found.ok and found.robust == robust and found.kept == len(kept.index)
    assert found.lines()[-1] == "verified"

    claims_more = verify_points(trained_mlp, x, y, loaded, epsilon=0.08, norm="linf",
                                reported_robust=robust + 1)
    assert not claims_more.ok and "DIFFERENT" in claims_more.lines()[-2]
    too_far = Broken(loaded.index, (loaded.x_adv + 0.05).clamp(0, 1))
    assert verify_points(trained_mlp, x, y, too_far, epsilon=0.08, norm="linf").outside_ball
    unbroken = Broken(loaded.index, x[loaded.index])  # clean points: classified correctly
    found = verify_points(trained_mlp, x, y, unbroken, epsilon=0.08, norm="linf",
                          reported_robust=robust)
    assert found.still_correct == len(kept.index) and not found.ok


def test_nan_logits_on_clean_points_are_flagged(trained_mlp, mnist_test_slice):
    from attacks.checks import model_flags

    x, y = (t[:32] for t in mnist_test_slice)
    flags = model_flags(InfiniteOn(trained_mlp, 4).eval(), x, y, epsilon=0.1)
    assert any("NaN or infinite logits on 12% of clean points" in f for f in flags), flags
    assert not any("NaN" in f for f in model_flags(trained_mlp, x, y, epsilon=0.1))
