"""Indicators of attack failure: silent on honest MNIST models, each firing on a model planted
to break the attack in its way (masked gradients, a data-grid-only gradient, a rugged loss
surface, a flat region half of the random starts fall into)."""

import json

import pytest
import torch
from test_checks import Quantised  # rounds its input: zero gradient almost everywhere
from torch import nn

from attacks.indicators import (
    DEFAULT_INDICATORS,
    Indicator,
    IndicatorSettings,
    list_indicators,
    run_indicators,
    train_surrogate,
)
from attacks.pgd import pgd
from trainables.registry import UnknownNameError

EPS = 0.1
MLP = {"hidden": 256, "layers": 2}


class OnGrid(nn.Module):
    """The inner model on the data grid (multiples of 1/255, where every clean image lies); off
    it, the inner model on the input rounded to the grid: nearly the same logits, zero gradient.
    FGSM takes its gradient at the clean point; PGD's random start leaves the grid."""

    def __init__(self, inner: nn.Module, levels: int = 255) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        snapped = torch.round(x * self.levels) / self.levels
        on_grid = ((x - snapped).abs() < 1e-4 / self.levels).flatten(1).all(1)
        return torch.where(on_grid[:, None], self.inner(x), self.inner(snapped))


class Rugged(nn.Module):
    """Logits plus ``a``·sin(ω·xU)·W: a term too small to change a prediction whose input
    gradient rivals the model's own and changes direction at every PGD step, so the sign ascent
    becomes a slowly drifting random walk."""

    def __init__(self, inner: nn.Module, a: float = 3e-3, omega: float = 1e4, d: int = 784,
                 features: int = 64, classes: int = 10) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.inner, self.a, self.omega = inner, a, omega
        self.register_buffer("u", torch.randn(d, features, generator=generator) / d ** 0.5)
        self.register_buffer("w", torch.randn(features, classes, generator=generator)
                             / features ** 0.5)

    def forward(self, x):
        return self.inner(x) + self.a * torch.sin(self.omega * x.flatten(1) @ self.u) @ self.w


class Gated(nn.Module):
    """The inner model, blind to the top-left pixel (0 in every MNIST image), whose gradient
    flows only while that pixel is lit. A uniform random start lights it for half of the starts;
    the others sit in a flat region PGD never leaves."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        live = x[:, 0, 0, 0] > 0
        blind = x.clone()
        blind[:, :, 0, 0] = 0
        logits = self.inner(blind)
        return torch.where(live[:, None], logits, logits.detach())


@pytest.fixture(scope="module")
def points(mnist_test_slice):
    x, y = mnist_test_slice
    return x[:128], y[:128]


@pytest.fixture(scope="module")
def surrogate():
    return train_surrogate("mnist", "mlp", MLP, seed=0)


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def by_name(indicators):
    return {indicator.name: indicator for indicator in indicators}


def test_adversarial_mlp_is_accurate_and_robust(adversarial_mlp, trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    robust = {}
    for name, model in (("adversarial", adversarial_mlp), ("standard", trained_mlp)):
        x_adv = pgd(model, x, y, epsilon=EPS, steps=50, step_size=2.5 * EPS / 50,
                    generator=torch.Generator().manual_seed(0))
        robust[name] = accuracy(model, x_adv, y)
    assert accuracy(adversarial_mlp, x, y) >= 0.9
    assert 0.6 <= robust["adversarial"] < accuracy(adversarial_mlp, x, y)
    assert robust["adversarial"] > robust["standard"] + 0.3


@pytest.mark.parametrize(("seed", "start", "norm", "epsilon"),
                         [(0, 0, "linf", EPS), (1, 128, "linf", EPS), (2, 256, "linf", 0.2),
                          (3, 384, "l2", 1.5)])
def test_honest_adversarial_model_trips_nothing(adversarial_mlp, surrogate, mnist_test_slice,
                                                seed, start, norm, epsilon):
    x, y = mnist_test_slice[0][start:start + 128], mnist_test_slice[1][start:start + 128]
    found = run_indicators(adversarial_mlp, x, y, epsilon=epsilon, norm=norm, seed=seed,
                           surrogate=surrogate)
    assert [i.name for i in found] == list_indicators()
    assert [i.message for i in found if i.fired] == []
    subset = DEFAULT_INDICATORS.subset
    with torch.no_grad():
        correct = int((adversarial_mlp(x[:subset]).argmax(1) == y[:subset]).sum())
    assert [i.n for i in found] == [correct] * len(found)


@pytest.mark.parametrize("seed", [0, 1])
def test_honest_standard_model_trips_nothing(trained_mlp, surrogate, points, seed):
    """Not robust, but honestly so: the attacks work, so no indicator fires."""
    x, y = points
    found = run_indicators(trained_mlp, x, y, epsilon=EPS, seed=seed, surrogate=surrogate)
    assert [i.message for i in found if i.fired] == []


@pytest.mark.parametrize("seed", [0, 1])
def test_unbounded_fires_on_masked_gradients(trained_mlp, points, seed):
    x, y = points
    masked = Quantised(trained_mlp)
    (found,) = run_indicators(masked, x, y, epsilon=EPS, seed=seed, names=["unbounded"])
    assert found.fired and found.value < 0.9 and found.threshold == 0.99
    assert "without a bound" in found.message and "BPDA" in found.message
    (l2,) = run_indicators(masked, x, y, epsilon=1.5, norm="l2", seed=seed,
                           names=["unbounded"])
    assert l2.fired and "l2 ε=28" in l2.message


@pytest.mark.parametrize("seed", [0, 1])
def test_fgsm_beats_pgd_fires_when_only_the_clean_point_has_a_gradient(trained_mlp, points,
                                                                        seed):
    x, y = points
    planted = OnGrid(trained_mlp)
    assert torch.equal(planted(x), trained_mlp(x))  # the same model on the data
    (found,) = run_indicators(planted, x, y, epsilon=EPS, seed=seed, names=["fgsm_beats_pgd"])
    assert found.fired and found.value > 0.3
    assert "FGSM breaks" in found.message and "random start" in found.message


@pytest.mark.parametrize("seed", [0, 1])
def test_more_steps_fires_on_a_rugged_loss_surface(trained_mlp, points, seed):
    x, y = points
    planted = Rugged(trained_mlp)
    assert accuracy(planted, x, y) == accuracy(trained_mlp, x, y)
    (found,) = run_indicators(planted, x, y, epsilon=EPS, seed=seed, names=["more_steps"])
    assert found.fired and found.value > 1.5 * found.threshold  # the loss rose > 7.5 %
    assert found.message.startswith("optimisation incomplete") and "more steps" in found.message


@pytest.mark.parametrize("seed", [0, 1])
def test_restarts_fires_when_the_start_decides(trained_mlp, points, seed):
    x, y = points
    planted = Gated(trained_mlp)
    (found,) = run_indicators(planted, x, y, epsilon=EPS, seed=seed, names=["restarts"])
    assert found.fired and found.value > 0.3
    assert "depends on its start" in found.message and "more restarts" in found.message


@pytest.mark.parametrize("seed", [0, 1])
def test_transfer_fires_on_masked_gradients_and_skips_without_surrogate(trained_mlp, points,
                                                                        surrogate, seed):
    x, y = points
    masked = Quantised(trained_mlp)
    (found,) = run_indicators(masked, x, y, epsilon=EPS, seed=seed, surrogate=surrogate,
                              names=["transfer"])
    assert found.fired and found.value > 0.3 and "gradients are masked" in found.message
    (skipped,) = run_indicators(masked, x, y, epsilon=EPS, names=["transfer"])
    assert not skipped.fired and skipped.n == 0 and "skipped" in skipped.message


def test_clean_wrong_points_are_left_out(adversarial_mlp, points):
    x, y = points[0][:40], points[1][:40]
    wrong = y.clone()
    wrong[:10] = (y[:10] + 1) % 10
    with torch.no_grad():
        correct = int((adversarial_mlp(x).argmax(1) == wrong).sum())
    (found,) = run_indicators(adversarial_mlp, x, wrong, epsilon=EPS, names=["unbounded"])
    assert found.n == correct <= 30
    (none,) = run_indicators(adversarial_mlp, x[:10], wrong[:10], epsilon=EPS,
                             names=["restarts"])
    assert none.n == 0 and not none.fired and "misclassifies every point" in none.message


def test_deterministic_and_leaves_the_callers_rng(adversarial_mlp, points, surrogate):
    x, y = points[0][:32], points[1][:32]
    settings = IndicatorSettings(steps=10, restarts=2)
    before = torch.get_rng_state()
    adversarial_mlp.train()
    try:
        first, second = (run_indicators(adversarial_mlp, x, y, epsilon=0.2, seed=5,
                                        settings=settings, surrogate=surrogate)
                         for _ in range(2))
        assert adversarial_mlp.training  # its mode is restored
    finally:
        adversarial_mlp.eval()
    assert torch.equal(before, torch.get_rng_state())
    assert [(i.value, i.n) for i in first] == [(i.value, i.n) for i in second]
    assert all(i.n > 0 for i in first)


def test_results_and_settings_round_trip_through_json(trained_mlp, points):
    x, y = points[0][:16], points[1][:16]
    settings = IndicatorSettings(subset=16, steps=5, restarts=2)
    for indicator in run_indicators(trained_mlp, x, y, epsilon=EPS, settings=settings):
        data = json.loads(json.dumps(indicator.to_dict()))
        assert Indicator.from_dict(data) == indicator
        assert set(data) == {"name", "fired", "value", "threshold", "n", "seconds", "message"}
    assert IndicatorSettings(**json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(ValueError, match="restarts"):
        IndicatorSettings(restarts=1)


def test_registry_names_and_unknown_names(trained_mlp, points):
    assert list_indicators() == ["fgsm_beats_pgd", "more_steps", "restarts", "transfer",
                                 "unbounded"]
    with pytest.raises(UnknownNameError, match="unknown indicator 'nope'; known: fgsm_beats"):
        run_indicators(trained_mlp, *points, epsilon=EPS, names=["nope"])
    with pytest.raises(ValueError, match="unknown norm"):
        run_indicators(trained_mlp, *points, epsilon=EPS, norm="l1")


def test_train_surrogate_is_seeded_and_standard(surrogate, mnist_test_slice):
    x, y = mnist_test_slice
    before = torch.get_rng_state()
    again = train_surrogate("mnist", "mlp", MLP, seed=0)
    other = train_surrogate("mnist", "mlp", MLP, seed=1)
    assert torch.equal(before, torch.get_rng_state())
    same = zip(surrogate.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in same)
    assert not torch.equal(surrogate.head.weight, other.head.weight)
    assert not surrogate.training and accuracy(surrogate, x, y) >= 0.85
    x_adv = pgd(surrogate, x, y, epsilon=EPS, steps=20, step_size=0.0125,
                generator=torch.Generator().manual_seed(0))
    assert accuracy(surrogate, x_adv, y) < 0.5  # standard training: not robust
