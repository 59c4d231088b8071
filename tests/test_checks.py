"""Planted broken models are flagged, and healthy ones are not."""

import pytest
import torch
import torch.nn.functional as F
from pyautoattack import checks as aa_checks
from torch import nn

from attacks.checks import (
    black_box_flags,
    epsilon_flags,
    model_flags,
    pyautoattack_flags,
)
from attacks.evaluate import evaluate_model


class Quantised(nn.Module):
    """Rounds its input to ``levels`` grey levels: the gradient is zero almost everywhere."""

    def __init__(self, inner: nn.Module, levels: int = 20) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)


class Scaled(nn.Module):
    """Logits × 10⁴: softmax saturates, CE gradients underflow to zero."""

    def __init__(self, inner: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x) * self.scale


class DropoutAtTest(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return F.dropout(self.inner(x), p=0.3, training=True)


class StuckInTraining(nn.Module):
    """BatchNorm that ignores ``eval()``: each point's logits depend on its batch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.norm, self.inner = nn.BatchNorm2d(1), inner

    def train(self, mode: bool = True):
        return super().train(True)

    def forward(self, x):
        return self.inner(self.norm(x))


class Probabilities(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


@pytest.fixture(scope="module")
def points(mnist_test_slice):
    x, y = mnist_test_slice
    return x[:64], y[:64]


def test_healthy_model_raises_no_flag(trained_mlp, points):
    x, y = points
    report = evaluate_model(trained_mlp, x, y, attacks=["pgd-20", "square:queries=200"],
                            epsilon=0.05)
    assert report.flags == [] and report.trusted


def test_quantised_input_is_flagged_and_broken_by_square(trained_mlp, points):
    x, y = points
    model = Quantised(trained_mlp).eval()
    report = evaluate_model(model, x, y, attacks=["pgd-100-ce", "square:queries=500"],
                            epsilon=0.1)
    assert any("zero input gradient" in f for f in report.flags)
    assert any("black-box square" in f for f in report.flags)
    pgd, square = report.accuracy("pgd-100-ce"), report.accuracy("square:queries=500")
    assert pgd > square + 0.3  # PGD is blind here; the worst case is not
    assert report.worst_case.float().mean() <= square
    assert not report.trusted and not report.to_dict()["trusted"]


def test_scaled_logits_fool_ce_pgd_not_autoattack(trained_mlp, points):
    x, y = points
    model = Scaled(trained_mlp).eval()
    report = evaluate_model(model, x, y, epsilon=0.1,
                            attacks=["pgd-100-ce", "autoattack:square_queries=200"])
    ce, auto = report.accuracy("pgd-100-ce"), report.accuracy("autoattack:square_queries=200")
    assert ce > auto + 0.3
    assert any("pgd-100-ce far weaker than AutoAttack" in f for f in report.flags)
    assert any("zero input gradient" in f for f in report.flags)
    assert report.worst_case.float().mean() <= auto
    assert not report.trusted and not report.to_dict()["trusted"]


def test_dropout_at_test_time_is_flagged_without_eot(trained_mlp, points):
    x, y = points
    report = evaluate_model(DropoutAtTest(trained_mlp), x, y, attacks=["pgd-20"], epsilon=0.05,
                            eot="never")
    assert any("randomness in the forward pass" in f for f in report.flags)
    assert any("randomized defense" in f for f in report.flags)  # pyautoattack's own check
    assert not report.trusted and not report.to_dict()["trusted"]
    assert report.eot_samples == 0 and not report.to_dict()["eot"]


def test_dropout_at_test_time_is_attacked_with_eot(trained_mlp, points):
    x, y = points
    report = evaluate_model(DropoutAtTest(trained_mlp), x, y, attacks=["pgd-20"], epsilon=0.05,
                            eot_samples=4)
    assert report.eot_samples == 4 and report.to_dict()["eot"]
    assert report.attacks["pgd-20"].settings["eot_samples"] == 4
    assert not any("random" in f for f in report.flags)  # accounted for by EOT
    assert report.indicators[0]["message"].startswith("indicators skipped")


def test_model_left_in_train_mode_is_flagged(trained_mlp, points):
    x, y = points
    model = StuckInTraining(trained_mlp)
    report = evaluate_model(model, x, y, attacks=["pgd-20"], epsilon=0.05)
    assert any("still in training mode" in f and "norm" in f for f in report.flags)
    assert any("depend on the rest of the batch" in f for f in report.flags)
    assert not report.trusted and not report.to_dict()["trusted"]


def test_probability_outputs_are_flagged(trained_mlp, points):
    x, y = points
    flags = model_flags(Probabilities(trained_mlp), x, y, epsilon=0.05)
    assert any("probabilities" in f for f in flags)


def test_pyautoattack_dynamic_check_has_no_memory(trained_mlp, points):
    x, y = points

    class Dynamic(nn.Module):  # computes an input gradient inside forward
        def forward(self, inp):
            with torch.enable_grad():
                point = inp.detach().requires_grad_(True)
                torch.autograd.grad(trained_mlp(point).sum(), point)
            return trained_mlp(inp)

    assert any("dynamic defense" in f for f in pyautoattack_flags(Dynamic(), x, y))
    # pyautoattack alone would now flag every later model: its counter stays non-zero
    aa_checks.funcs["grad"] += 1
    assert not any("dynamic" in f for f in pyautoattack_flags(trained_mlp, x, y))
    assert all(count == 0 for count in aa_checks.funcs.values())


def test_black_box_flag_counts_points_only_black_box_breaks():
    white = torch.tensor([True, True, True, True, False, False, True, True, True, True])
    square = white.clone()
    square[:2] = False  # 2 of 10 points only Square breaks
    flags = black_box_flags({"pgd": white, "square": square}, {"pgd": True, "square": False},
                            margin=0.1)
    assert len(flags) == 1 and "20.0%" in flags[0]
    assert black_box_flags({"pgd": white, "square": white}, {"pgd": True, "square": False},
                           margin=0.0) == []


def test_accuracy_rising_with_epsilon_is_flagged():
    assert epsilon_flags([(0.1, 0.5), (0.2, 0.3), (0.3, 0.1)], 0.005) == []
    flags = epsilon_flags([(0.3, 0.4), (0.1, 0.5), (0.2, 0.2)], 0.005)
    assert len(flags) == 1 and "ε=0.2" in flags[0] and "ε=0.3" in flags[0]


def test_pgd_gap_uses_the_strongest_pgd():
    from attacks.checks import autoattack_gap_flags

    names = {"aa": "autoattack", "pgd-100-ce": "pgd", "pgd-100-cw": "pgd"}
    honest = {"aa": 0.445, "pgd-100-ce": 0.53, "pgd-100-cw": 0.475}  # CE alone trails by 8.5
    assert autoattack_gap_flags(honest, names, 0.05) == []
    masked = {"aa": 0.10, "pgd-100-ce": 0.90, "pgd-100-cw": 0.85}
    (flag,) = autoattack_gap_flags(masked, names, 0.05)
    assert flag.startswith("pgd-100-cw far weaker than AutoAttack (85.0% vs 10.0%)")
