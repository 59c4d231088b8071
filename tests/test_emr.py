"""EMR (Liu & Chan 2022): the regulariser against float64 closed forms of Eq. 5 and Eq. 7."""

import dataclasses

import numpy as np
import optuna
import pytest
import torch
from linear import linear_model, linear_problem, softmax
from linear import relative_error as rel
from torch import nn

from trainables.config import ConfigError, TrialConfig
from trainables.defenses import (
    DEFENSES,
    AttackSettings,
    Defense,
    DefenseConfigError,
    create_defense,
    defense_class,
)
from trainables.defenses.base import knob
from trainables.defenses.emr import emr_penalty
from trainables.engine import learning_rate, train_epoch
from trainables.models import create_model

ATTACK = AttackSettings(epsilon=0.1, steps=3, step_size=0.05)


def linear(seed=0):
    """f(x) = W x + b in float64 with clean and 'adversarial' inputs and labels."""
    return linear_problem(seed, n=7)


def relu_net(seed=0, n=6, d=5, h=8, k=4):
    """f(x) = W2 relu(W1 x + b1) + b2 in float64; its local weights are W2 diag(mask) W1."""
    rng = np.random.default_rng(seed)
    W1, b1 = rng.normal(size=(h, d)), rng.normal(size=h)
    W2, b2 = rng.normal(size=(k, h)), rng.normal(size=k)
    x = rng.uniform(size=(n, d))
    model = nn.Sequential(linear_model(W1, b1), nn.ReLU(), linear_model(W2, b2))
    masks = (x @ W1.T + b1 > 0).astype(float)  # (n, h)
    local_W = np.einsum("kh,nh,hd->nkd", W2, masks, W1)  # W_i = W2 diag(m_i) W1
    logits = np.maximum(x @ W1.T + b1, 0) @ W2.T + b2
    return (W1, W2, masks, local_W, logits, x), model, torch.from_numpy(x)


def ce(logits, y):
    return -np.log(softmax(logits)[np.arange(len(y)), y]).mean()


# ------------------------------------------------------------------ Eq. 5 and Eq. 7
@pytest.mark.parametrize("lam", [0.1, 2.0])
def test_exact_emr_on_a_linear_model_is_the_squared_weight_norm(lam):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear()
    expected_penalty = sum(np.sum(W[j] ** 2) for j in range(W.shape[0]))  # Σ_j ‖w^(j)‖²
    assert rel(emr_penalty(model, tx_adv, exact=True).item(), expected_penalty) < 1e-10
    emr = create_defense("emr", attack=ATTACK, emr_exact=True, lambda_emr=lam)
    loss, metrics = emr.loss(model, tx, ty, tx_adv)
    expected = ce(x_adv @ W.T + b, y) + lam * expected_penalty
    assert rel(loss.item(), expected) < 1e-5
    assert rel(metrics["emr_loss"], expected_penalty) < 1e-5


@pytest.mark.parametrize("t", [0.5, 1.0, 40.0])
@pytest.mark.parametrize("emr_on", ["adv", "clean"])
def test_approx_emr_with_trades_matches_eq7(t, emr_on):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear(seed=1)
    beta, lam = 3.0, 0.7
    inputs = x_adv if emr_on == "adv" else x
    p = softmax((inputs @ W.T + b) / t)
    approx = np.mean([np.sum((p[i] @ W) ** 2) for i in range(len(y))])  # ‖Σ_j p_ij w^(j)‖²
    p_clean, q_adv = softmax(x @ W.T + b), softmax(x_adv @ W.T + b)
    trades = ce(x @ W.T + b, y) + beta * (p_clean * np.log(p_clean / q_adv)).sum(1).mean()
    emr = create_defense("emr", attack=ATTACK, emr_base="trades", beta=beta, lambda_emr=lam,
                         temperature=t, emr_on=emr_on)
    loss, metrics = emr.loss(model, tx, ty, tx_adv)
    assert rel(loss.item(), trades + lam * approx) < 1e-5
    assert rel(metrics["base_loss"], trades) < 1e-5


def test_relu_net_local_weights_exact_and_approx():
    (W1, W2, masks, local_W, logits, x), model, tx = relu_net()
    exact = np.mean([(local_W[i] ** 2).sum() for i in range(len(x))])
    p = softmax(logits / 2.0)
    approx = np.mean([np.sum((p[i] @ local_W[i]) ** 2) for i in range(len(x))])
    assert rel(emr_penalty(model, tx, exact=True).item(), exact) < 1e-10
    assert rel(emr_penalty(model, tx, temperature=2.0).item(), approx) < 1e-10


def test_small_temperature_keeps_only_the_predicted_class():
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear(seed=3)
    logits = x @ W.T + b
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 0.01  # the argmax is well separated from t
    expected = np.mean([np.sum(W[j] ** 2) for j in logits.argmax(1)])
    assert rel(emr_penalty(model, tx, temperature=1e-5).item(), expected) < 1e-5


# ------------------------------------------------------------------ gradients and modes
def test_gradient_reaches_the_parameters_with_p_detached():
    (W, b, x, _, _), model, (tx, _, _) = linear(seed=4)
    emr_penalty(model, tx, exact=True).backward()
    assert np.allclose(model.weight.grad.numpy(), 2 * W, rtol=1e-10)  # ∂‖W‖²/∂W
    assert model.bias.grad is None  # the bias does not enter ∇ₓf
    model.zero_grad()
    t = 3.0
    emr_penalty(model, tx, temperature=t).backward()
    p = softmax((x @ W.T + b) / t)
    # p constant: ∂/∂W mean_i ‖p_iᵀW‖² = 2 mean_i p_i p_iᵀ W, and the bias gets nothing
    expected = 2 * np.mean([np.outer(p[i], p[i]) for i in range(len(x))], axis=0) @ W
    assert np.allclose(model.weight.grad.numpy(), expected, rtol=1e-8, atol=1e-12)
    assert model.bias.grad is None  # p is detached, so no path from the loss to the bias


def test_relu_net_gradient_of_the_exact_penalty():
    (W1, W2, masks, local_W, _, x), model, tx = relu_net(seed=5)
    emr_penalty(model, tx, exact=True).backward()
    # ∂/∂W2 mean_i ‖W2 D_i W1‖²_F = mean_i 2 W2 D_i W1 W1ᵀ D_i
    expected_W2 = np.mean([2 * W2 @ np.diag(m) @ W1 @ W1.T @ np.diag(m) for m in masks], axis=0)
    expected_W1 = np.mean([2 * np.diag(m) @ W2.T @ W2 @ np.diag(m) @ W1 for m in masks], axis=0)
    assert np.allclose(model[2].weight.grad.numpy(), expected_W2, rtol=1e-8)
    assert np.allclose(model[0].weight.grad.numpy(), expected_W1, rtol=1e-8)


@pytest.mark.parametrize("exact", [False, True])
def test_regulariser_runs_in_eval_mode_and_leaves_batchnorm_alone(exact):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 3)).double()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    x = torch.rand(10, 6, dtype=torch.float64)
    model.train()
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    value = emr_penalty(model, x, temperature=2.0, exact=exact)
    assert model.training
    for key, tensor in model[1].state_dict().items():
        assert torch.equal(tensor, before[key]), key
    model.eval()
    assert torch.allclose(value, emr_penalty(model, x, temperature=2.0, exact=exact))
    model.train()
    with torch.no_grad():  # a train-mode (batch statistics) computation would differ
        model[1].running_mean.add_(5.0)
    assert not torch.allclose(value, emr_penalty(model, x, temperature=2.0, exact=exact))


# ------------------------------------------------------------------ schedule and config
def test_lambda_follows_the_learning_rate_schedule():
    config = TrialConfig.from_dict({"defense": "emr", "lr": 0.1, "epochs": 6,
                                    "lr_milestones": [2, 4],
                                    "defense_params": {"lambda_emr": 0.3}})
    emr = config.build_defense()
    lambdas = [emr.at_epoch(e, learning_rate(config, e) / config.lr).params.lambda_emr
               for e in range(6)]
    assert np.allclose(lambdas, [0.3, 0.3, 0.03, 0.03, 0.003, 0.003])
    assert emr.params.lambda_emr == 0.3  # the original is untouched
    decayed = emr.at_epoch(2, 0.1)
    assert decayed.params.temperature == emr.params.temperature
    assert decayed.base.name == "pgd_at"


def test_base_knobs_are_validated_against_the_base():
    with pytest.raises(DefenseConfigError, match=r"\['beta'\].*'pgd_at'"):
        create_defense("emr", attack=ATTACK, emr_base="pgd_at", beta=6.0)
    with pytest.raises(DefenseConfigError, match="slope"):
        create_defense("emr", attack=ATTACK, emr_base="trades", slope=30.0)
    with pytest.raises(DefenseConfigError, match="emr_base must be one of"):
        create_defense("emr", attack=ATTACK, emr_base="magic")
    with pytest.raises(DefenseConfigError, match="number or None"):
        create_defense("emr", attack=ATTACK, emr_base="trades", beta="big")
    with pytest.raises(DefenseConfigError, match="beta must lie in"):  # the base's own range
        create_defense("emr", attack=ATTACK, emr_base="trades", beta=-1.0)
    with pytest.raises(ConfigError, match="do not apply"):
        TrialConfig.from_dict({"defense": "emr",
                               "defense_params": {"emr_base": "standard", "beta": 1.0}})
    assert create_defense("emr", attack=ATTACK, emr_base="mart", beta=5).base.params.beta == 5.0
    assert create_defense("emr", attack=ATTACK, emr_base="mart").base.params.beta == 6.0
    resolved = TrialConfig.from_dict({"defense": "emr"}).resolved()  # None knobs round-trip
    assert TrialConfig.from_dict(resolved.to_dict()).defense_params["beta"] is None


@dataclasses.dataclass(frozen=True)
class FakeReweighted(Defense):
    """Stands in for a base with slope/bias knobs, per-run state and epoch-dependent knobs."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        slope: float = knob(1.0, low=0.0, high=100.0)
        bias: float = knob(0.0, low=-1.0, high=1.0)
        epoch: int = knob(-1)

    name = "mail_at"

    def init_state(self, *, num_examples, batch_size, num_classes, epochs):
        return {"steps": 0}

    def step(self, model, x, y, x_adv, state=None, *, ids=None):
        loss = self.params.slope * nn.functional.cross_entropy(model(x_adv), y)
        return loss, {"loss": loss.item()}, {"steps": (state or {"steps": 0})["steps"] + 1}

    def after_backward(self, state, x_adv):
        return {**state, "after": True}

    def at_epoch(self, epoch, lr_scale):
        return dataclasses.replace(self, params=dataclasses.replace(self.params, epoch=epoch))


def test_base_knobs_state_and_epoch_pass_through(monkeypatch):
    monkeypatch.setitem(DEFENSES._entries, "mail_at", FakeReweighted)
    with pytest.raises(DefenseConfigError, match="beta"):
        create_defense("emr", attack=ATTACK, emr_base="mail_at", beta=5.0)
    emr = create_defense("emr", attack=ATTACK, emr_base="mail_at", slope=3.0, bias=0.05,
                         lambda_emr=0.5, emr_exact=True)
    assert (emr.base.params.slope, emr.base.params.bias) == (3.0, 0.05)
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear(seed=6)
    state = emr.init_state(num_examples=10, batch_size=7, num_classes=4, epochs=1)
    loss, metrics, state = emr.step(model, tx, ty, tx_adv, state)
    assert state == {"steps": 1}
    assert rel(loss.item(), 3.0 * ce(x_adv @ W.T + b, y) + 0.5 * (W ** 2).sum()) < 1e-5
    assert emr.after_backward(state, tx_adv) == {"steps": 1, "after": True}
    assert emr.at_epoch(7, 0.1).base.params.epoch == 7


@pytest.mark.parametrize("base, knobs", [
    ("mail_at", {"slope": 10.0, "bias": 0.1}),
    ("mail_trades", {"slope": 5.0, "bias": 0.05, "beta": 4.0}),
])
def test_mail_bases_get_their_knobs_and_the_penalty_is_added(base, knobs):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear(seed=7)
    t, lam = 2.0, 3.0
    p = softmax((x_adv @ W.T + b) / t)
    approx = np.mean([np.sum((p[i] @ W) ** 2) for i in range(len(y))])
    emr = create_defense("emr", attack=ATTACK, emr_base=base, lambda_emr=lam, temperature=t,
                         **knobs)
    mail = create_defense(base, attack=ATTACK, **knobs)
    assert emr.base == mail
    loss, _ = emr.loss(model, tx, ty, tx_adv)
    mail_loss, _ = mail.loss(model, tx, ty, tx_adv)
    assert rel(loss.item(), mail_loss.item() + lam * approx) < 1e-5


def test_search_space_conditions_beta_on_the_base():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(25):
        overrides = defense_class("emr").search_space(study.ask())
        params = overrides["defense_params"]
        seen.add(params["emr_base"])
        assert ("beta" in params) == (params["emr_base"] in ("trades", "mart", "mail_trades"))
        assert 0.01 <= params["lambda_emr"] <= 10 and 0.1 <= params["temperature"] <= 100
        TrialConfig.from_dict({"defense": "emr", **overrides})
    assert seen == {"pgd_at", "trades", "mart", "mail_at", "mail_trades"}


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("knobs", [
    {"emr_base": "pgd_at", "lambda_emr": 0.1, "temperature": 40.0},
    {"emr_base": "standard", "lambda_emr": 0.01, "emr_exact": True},
])
def test_emr_trains_on_real_mnist(mnist_test_slice, knobs):
    x, y = mnist_test_slice
    x, y = x[:96], y[:96]
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=28, hidden=32, layers=1)
    emr = create_defense("emr", attack=AttackSettings(epsilon=0.1, steps=2, step_size=0.05),
                         **knobs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for epoch in range(3):
        order = torch.randperm(96, generator=torch.Generator().manual_seed(epoch))
        batches = [(x[i], y[i], i) for i in order.split(48)]
        metrics, state = train_epoch(model, emr.at_epoch(epoch, 1.0), batches, optimizer)
        assert state is None and np.isfinite(metrics["train_emr_loss"])
        losses.append(metrics["train_loss"])
    assert losses[-1] < losses[0]
