"""Defense losses against independent float64 computations of the papers' equations."""

import numpy as np
import optuna
import pytest
import torch
from linear import linear_problem, relative_error, softmax

from trainables.config import TrialConfig
from trainables.defenses import (
    AttackSettings,
    DefenseConfigError,
    create_defense,
    defense_class,
    list_defenses,
)
from trainables.defenses.base import Defense, input_of
from trainables.models import create_model

ATTACK = AttackSettings(epsilon=0.1, steps=3, step_size=0.05)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_registry_and_errors():
    assert {"standard", "pgd_at", "trades", "mart"} <= set(list_defenses())
    with pytest.raises(KeyError, match="unknown defense 'magic'; known: .*pgd_at"):
        create_defense("magic", attack=ATTACK)
    with pytest.raises(DefenseConfigError, match="allowed: beta"):
        create_defense("mart", attack=ATTACK, lam=1.0)


def test_standard_and_pgd_at_are_cross_entropy():
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem()
    rows = np.arange(len(y))

    def ce(inputs):
        p = softmax(inputs @ W.T + b)
        return -np.log(p[rows, y]).mean()

    standard, _ = create_defense("standard", attack=ATTACK).loss(model, tx, ty, tx_adv)
    at, _ = create_defense("pgd_at", attack=ATTACK).loss(model, tx, ty, tx_adv)
    assert relative_error(standard.item(), ce(x)) < 1e-10
    assert relative_error(at.item(), ce(x_adv)) < 1e-10


@pytest.mark.parametrize("beta", [1.0, 6.0, 12.0])
def test_trades_matches_its_equation(beta):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem(seed=1)
    p, q = softmax(x @ W.T + b), softmax(x_adv @ W.T + b)
    rows = np.arange(len(y))
    expected = -np.log(p[rows, y]).mean() + beta * (p * np.log(p / q)).sum(1).mean()
    loss, metrics = create_defense("trades", attack=ATTACK, beta=beta).loss(model, tx, ty, tx_adv)
    assert relative_error(loss.item(), expected) < 1e-5
    assert relative_error(metrics["robust_loss"], (p * np.log(p / q)).sum(1).mean()) < 1e-5


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_mart_matches_its_equation(beta):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem(seed=2)
    p, q = softmax(x @ W.T + b), softmax(x_adv @ W.T + b)
    rows = np.arange(len(y))
    q_wrong = q.copy()
    q_wrong[rows, y] = -np.inf
    bce = -np.log(q[rows, y]) - np.log(1 - q_wrong.max(1))
    kl = (p * np.log(p / q)).sum(1)
    expected = bce.mean() + beta * (kl * (1 - p[rows, y])).mean()
    loss, _ = create_defense("mart", attack=ATTACK, beta=beta).loss(model, tx, ty, tx_adv)
    assert relative_error(loss.item(), expected) < 1e-5


def test_trades_attack_maximises_the_kl_to_clean_predictions(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:64], y[:64]
    trades = create_defense("trades", attack=AttackSettings(epsilon=0.1, steps=10, step_size=0.02))
    torch.manual_seed(0)
    x_adv = trades.perturb(trained_mlp, x, y)
    with torch.no_grad():
        p = torch.softmax(trained_mlp(x), 1)
        kl = lambda z: (p * (p.log() - torch.log_softmax(trained_mlp(z), 1))).sum(1).mean()  # noqa: E731
        start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        assert kl(x_adv) > 10 * kl(start)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize("name", list_defenses())
def test_every_defense_trains_a_step(name, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:32], y[:32]
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=28, hidden=64, layers=2)
    defense = create_defense(name, attack=ATTACK)
    model = defense.model_hook(model)
    state = defense.init_state(num_examples=60_000, batch_size=32, num_classes=10, epochs=1)
    point = defense.perturb(model, x, y, state, ids=torch.arange(32))
    x_adv = input_of(point)
    assert x_adv.shape == x.shape and 0 <= x_adv.min() and x_adv.max() <= 1
    if defense.uses_training_epsilon:
        assert (x_adv - x).abs().max() <= ATTACK.epsilon + 1e-6
    model.train()
    loss, metrics, state = defense.step(model, x, y, point, state, ids=torch.arange(32))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) for v in metrics.values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    defense.after_backward(state, point)


@pytest.mark.parametrize("name", list_defenses())
def test_search_space_and_presets_give_valid_configs(name):
    cls = defense_class(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        overrides = cls.search_space(study.ask())
        config = TrialConfig.from_dict({"defense": name, **overrides})
        assert config.defense == name
    for preset in cls.presets.values():
        TrialConfig.from_dict({"defense": name, **preset})


def test_step_is_the_contract_loss_cannot_be_overridden():
    with pytest.raises(TypeError, match="implements step"):
        class _Both(Defense):
            def loss(self, model, x, y, x_adv, state=None, *, ids=None):
                return x.sum(), {}


@pytest.mark.parametrize("name", list_defenses())
def test_perturb_leaves_the_state_as_it_was(name, mnist_test_slice):
    x, y = mnist_test_slice[0][:16], mnist_test_slice[1][:16]
    torch.manual_seed(0)
    defense = create_defense(name, attack=ATTACK)
    model = defense.model_hook(create_model("mlp", in_channels=1, image_size=28, hidden=32,
                                            layers=2))
    state = defense.init_state(num_examples=64, batch_size=16, num_classes=10, epochs=1)
    before = None if state is None else {k: (v.clone() if torch.is_tensor(v) else v)
                                         for k, v in state.state_dict().items()}
    defense.perturb(model, x, y, state, ids=torch.arange(16))
    if state is not None:
        after = state.state_dict()
        assert set(after) == set(before)
        for key, value in after.items():
            assert (torch.equal(value, before[key]) if torch.is_tensor(value)
                    else value == before[key]), (name, key)
