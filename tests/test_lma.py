"""LMA-AT family against float64 numpy computations of the paper's equations (Sec. 3, Eq. 13,
Table 1, Algorithm 1) on a linear model f(x) = W x + b."""

import math

import numpy as np
import pytest
import torch
from linear import linear_model, relative_error, saved_and_loaded, softmax

from trainables.defenses import AttackSettings, create_defense
from trainables.defenses.lma import LMAState, margin_ce_attack_loss, mhuber
from trainables.engine import train_epoch
from trainables.models import create_model

ATTACK = AttackSettings(epsilon=0.1, steps=2, step_size=0.05)
NAMES = ["at_lma", "trades_lma", "mart_lma", "lma_at"]


# --------------------------------------------------------------------------- by hand
def mhuber_by_hand(d, alpha):
    values = []
    for di in np.ravel(d):
        if abs(di) / alpha <= math.pi / 2:
            values.append(alpha ** 2 * (1 - math.cos(di / alpha)))
        else:
            values.append(alpha * abs(di) + (1 - math.pi / 2) * alpha ** 2)
    return sum(values) / len(values)


def mhuber_derivative_by_hand(d, alpha):
    return np.where(np.abs(d) / alpha <= math.pi / 2, alpha * np.sin(d / alpha),
                    alpha * np.sign(d))


def margin_by_hand(z, y, delta):
    total = []
    for zi, yi in zip(z, y, strict=True):
        total.append(sum(max(0.0, zi[j] - zi[yi] + delta) ** 2
                         for j in range(len(zi)) if j != yi))
    return np.array(total)


def expected_loss(name, z, z_adv, y, ema_adv, ema_nat, knobs):
    """Table 1 with the EMAs already updated, as numpy."""
    rows = np.arange(len(y))
    p, q = softmax(z), softmax(z_adv)
    margin = margin_by_hand(z_adv, y, knobs["delta"]).mean()
    regulariser = knobs["beta"] * mhuber_by_hand(ema_adv - ema_nat, knobs["alpha"])
    q_wrong = q.copy()
    q_wrong[rows, y] = -np.inf
    bce = (-np.log(q[rows, y]) - np.log(1 - q_wrong.max(1))).mean()
    kl = (p * np.log(p / q)).sum(1)
    base = {"at_lma": lambda: -np.log(q[rows, y]).mean(),
            "trades_lma": lambda: -np.log(p[rows, y]).mean() + kl.mean() / knobs["lambda_kl"],
            "mart_lma": lambda: bce + knobs["lambda_kl"] * (kl * (1 - p[rows, y])).mean(),
            "lma_at": lambda: bce}[name]()
    return margin + base + regulariser


def seeded_model(seed=0, d=5, k=4):
    """A random f(x) = W x + b and the generator the batches are then drawn from."""
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(k, d)), rng.normal(size=k)
    return rng, linear_model(W, b)


def params_of(model):
    return model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()


def batch(rng, n=6, d=5, k=4):
    x, x_adv = rng.uniform(size=(n, d)), rng.uniform(size=(n, d))
    y = rng.integers(0, k, size=n)
    return (x, x_adv, y), (torch.from_numpy(x), torch.from_numpy(x_adv), torch.from_numpy(y))


KNOBS = {"tau": 0.3, "delta": 0.9, "alpha": 1.0, "beta": 2.5}
EXTRA = {"trades_lma": {"lambda_kl": 0.25}, "mart_lma": {"lambda_kl": 3.0}}


def make(name, **overrides):
    knobs = {**KNOBS, **EXTRA.get(name, {}), **overrides}
    return create_defense(name, attack=ATTACK, **knobs), knobs


# --------------------------------------------------------------------------- mHuber, L'
def test_mhuber_on_both_branches_and_at_the_boundary():
    alpha = 2.0
    d = np.array([0.3, -1.0, 3.0, -3.1, 3.2, -5.0, 10.0, 0.0])  # |d|/α ≤ π/2 up to ±3.1
    assert (np.abs(d) / alpha <= math.pi / 2).sum() == 5
    u = torch.from_numpy(d.reshape(2, 4) + 1.5)
    v = torch.full((2, 4), 1.5, dtype=torch.float64)
    by_hand = (alpha ** 2 * (1 - math.cos(0.3 / 2)) + alpha ** 2 * (1 - math.cos(-0.5))
               + alpha ** 2 * (1 - math.cos(1.5)) + alpha ** 2 * (1 - math.cos(-1.55))
               + (2 * 3.2 + (1 - math.pi / 2) * 4) + (2 * 5 + (1 - math.pi / 2) * 4)
               + (2 * 10 + (1 - math.pi / 2) * 4) + 0.0) / 8
    assert relative_error(mhuber(u, v, alpha).item(), by_hand) < 1e-12
    assert relative_error(mhuber(u, v, alpha).item(), mhuber_by_hand(d, alpha)) < 1e-12

    for alpha in (0.7, 2.345, 5.345):
        edge = alpha * math.pi / 2
        for d in (edge, -edge, edge * (1 - 1e-9), edge * (1 + 1e-9)):
            value = mhuber(torch.tensor([d], dtype=torch.float64),
                           torch.zeros(1, dtype=torch.float64), alpha).item()
            assert relative_error(value, alpha ** 2) < 1e-8  # both branches meet at α²
        for d in (edge * (1 - 1e-7), edge * (1 + 1e-7)):  # and so does the slope, α
            t = torch.tensor([d], dtype=torch.float64, requires_grad=True)
            mhuber(t, torch.zeros(1, dtype=torch.float64), alpha).backward()
            assert relative_error(t.grad.item(), alpha) < 1e-6


def test_margin_loss_matches_eq_13():
    rng, model = seeded_model(seed=3)
    (x, x_adv, y), (tx, tx_adv, ty) = batch(rng)
    W, b = params_of(model)
    z_adv = x_adv @ W.T + b
    for delta in (0.0, 0.9, 3.0):
        per_example = margin_by_hand(z_adv, y, delta)
        objective = margin_ce_attack_loss(delta)(model(tx_adv), ty).detach().numpy()
        ce = -np.log(softmax(z_adv)[np.arange(len(y)), y])
        np.testing.assert_allclose(objective, per_example + ce, rtol=1e-10)
        defense, _ = make("lma_at", delta=delta)
        _, metrics = defense.loss(model, tx, ty, tx_adv, None)
        assert relative_error(metrics["margin_loss"], per_example.mean()) < 1e-10
    # the paper's worked example (Eq. 10): scores [12, -6, 11], true class 0, δ = 8 → 0 + 7²
    scores = torch.tensor([[12.0, -6.0, 11.0]], dtype=torch.float64)
    assert margin_ce_attack_loss(8.0)(scores, torch.tensor([0])).item() == pytest.approx(
        49 + math.log(1 + math.exp(-18) + math.exp(-1)), rel=1e-12)


# --------------------------------------------------------------------------- the EMA
def test_ema_recursion_over_three_iterations():
    rng, model = seeded_model(seed=4)
    defense, knobs = make("lma_at")
    tau = knobs["tau"]
    state = defense.init_state(num_examples=100, batch_size=6, num_classes=4, epochs=1)
    hand_adv, hand_nat = np.zeros((6, 4)), np.zeros((6, 4))
    for _ in range(3):
        (x, x_adv, _), (tx, tx_adv, ty) = batch(rng)
        W, b = params_of(model)
        hand_adv = tau * hand_adv + (1 - tau) * (x_adv @ W.T + b)
        hand_nat = tau * hand_nat + (1 - tau) * (x @ W.T + b)
        loss, metrics, state = defense.step(model, tx, ty, tx_adv, state)
        np.testing.assert_allclose(state.adversarial.numpy(), hand_adv, rtol=1e-12)
        np.testing.assert_allclose(state.natural.numpy(), hand_nat, rtol=1e-12)
        assert relative_error(metrics["mhuber"], mhuber_by_hand(hand_adv - hand_nat,
                                                                knobs["alpha"])) < 1e-10
        assert not state.adversarial.requires_grad and not state.natural.requires_grad
        model.zero_grad()
        loss.backward()
        with torch.no_grad():  # the parameters move between iterations, as in training
            for parameter in model.parameters():
                parameter -= 0.05 * parameter.grad


def test_previous_average_carries_no_gradient():
    """Three steps with fixed parameters (so a graph through the history would stay valid);
    the gradient of β·mHuber at step 3 must be that of the current logits alone."""
    rng, model = seeded_model(seed=5)
    defense, knobs = make("lma_at", alpha=0.5)
    no_regulariser, _ = make("lma_at", alpha=0.5, beta=0.0)
    tau, alpha, beta = knobs["tau"], knobs["alpha"], knobs["beta"]
    state = defense.init_state(num_examples=100, batch_size=6, num_classes=4, epochs=1)
    W, b = params_of(model)
    hand_adv, hand_nat = np.zeros((6, 4)), np.zeros((6, 4))
    for _ in range(3):
        (x, x_adv, _), (tx, tx_adv, ty) = batch(rng)
        hand_adv = tau * hand_adv + (1 - tau) * (x_adv @ W.T + b)
        hand_nat = tau * hand_nat + (1 - tau) * (x @ W.T + b)
        previous = state
        _, _, state = defense.step(model, tx, ty, tx_adv, previous)

    def gradients(d, s):
        model.zero_grad()
        d.loss(model, tx, ty, tx_adv, s)[0].backward()
        return model.weight.grad.numpy().copy(), model.bias.grad.numpy().copy()

    # β = 0 leaves no state dependence in the gradient: a detached copy of the state suffices
    base_w, base_b = gradients(no_regulariser, LMAState(previous.adversarial.detach().clone(),
                                                        previous.natural.detach().clone()))
    grad_w, grad_b = gradients(defense, previous)
    derivative = mhuber_derivative_by_hand(hand_adv - hand_nat, alpha)  # 6 × 4
    within = np.abs(hand_adv - hand_nat) / alpha <= math.pi / 2
    assert within.any() and not within.all()  # both mHuber branches are exercised
    expected_w = beta / derivative.size * (1 - tau) * derivative.T @ (x_adv - x)
    np.testing.assert_allclose(grad_w - base_w, expected_w, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(grad_b - base_b, 0.0, atol=1e-12)  # f(x') and f(x) share b


# --------------------------------------------------------------------------- Table 1
@pytest.mark.parametrize("name", NAMES)
def test_full_loss_matches_table_1(name):
    rng, model = seeded_model(seed=6)
    (x, x_adv, y), (tx, tx_adv, ty) = batch(rng)
    previous_adv, previous_nat = 2 * rng.normal(size=(6, 4)), 2 * rng.normal(size=(6, 4))
    state = LMAState(torch.from_numpy(previous_adv), torch.from_numpy(previous_nat))
    defense, knobs = make(name)
    W, b = params_of(model)
    z, z_adv = x @ W.T + b, x_adv @ W.T + b
    tau = knobs["tau"]
    ema_adv = tau * previous_adv + (1 - tau) * z_adv
    ema_nat = tau * previous_nat + (1 - tau) * z
    within = np.abs(ema_adv - ema_nat) / knobs["alpha"] <= math.pi / 2
    assert within.any() and not within.all()  # both mHuber branches are exercised
    assert (margin_by_hand(z_adv, y, knobs["delta"]) > 0).any()
    loss, metrics, new_state = defense.step(model, tx, ty, tx_adv, state)
    expected = expected_loss(name, z, z_adv, y, ema_adv, ema_nat, knobs)
    assert relative_error(loss.item(), expected) < 1e-5
    assert relative_error(metrics["loss"], expected) < 1e-5
    np.testing.assert_allclose(new_state.adversarial.numpy(), ema_adv, rtol=1e-12)
    np.testing.assert_allclose(new_state.natural.numpy(), ema_nat, rtol=1e-12)
    np.testing.assert_array_equal(state.adversarial.numpy(), previous_adv)  # input untouched
    assert relative_error(defense.loss(model, tx, ty, tx_adv, state)[0].item(), expected) < 1e-5


def test_short_last_batch_uses_and_updates_the_first_rows_only():
    rng, model = seeded_model(seed=7)
    (x, x_adv, y), (tx, tx_adv, ty) = batch(rng, n=4)
    previous_adv, previous_nat = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    state = LMAState(torch.from_numpy(previous_adv), torch.from_numpy(previous_nat))
    defense, knobs = make("mart_lma")
    W, b = params_of(model)
    tau = knobs["tau"]
    ema_adv = tau * previous_adv[:4] + (1 - tau) * (x_adv @ W.T + b)
    ema_nat = tau * previous_nat[:4] + (1 - tau) * (x @ W.T + b)
    loss, _, new_state = defense.step(model, tx, ty, tx_adv, state)
    expected = expected_loss("mart_lma", x @ W.T + b, x_adv @ W.T + b, y, ema_adv, ema_nat,
                             knobs)
    assert relative_error(loss.item(), expected) < 1e-5
    np.testing.assert_allclose(new_state.adversarial.numpy()[:4], ema_adv, rtol=1e-12)
    np.testing.assert_allclose(new_state.natural.numpy()[:4], ema_nat, rtol=1e-12)
    np.testing.assert_array_equal(new_state.adversarial.numpy()[4:], previous_adv[4:])
    np.testing.assert_array_equal(new_state.natural.numpy()[4:], previous_nat[4:])
    _, (tx8, tx8_adv, ty8) = batch(rng, n=8)
    with pytest.raises(ValueError, match="does not fit the LMA state"):
        defense.step(model, tx8, ty8, tx8_adv, state)


def test_state_dict_round_trip():
    rng, model = seeded_model(seed=8)
    defense, _ = make("trades_lma")
    state = defense.init_state(num_examples=100, batch_size=6, num_classes=4, epochs=1)
    for _ in range(2):
        _, (tx, tx_adv, ty) = batch(rng)
        _, _, state = defense.step(model, tx, ty, tx_adv, state)
    restored = defense.init_state(num_examples=100, batch_size=6, num_classes=4, epochs=1)
    restored.load_state_dict(saved_and_loaded(state.state_dict()))
    assert torch.equal(restored.adversarial, state.adversarial)
    assert torch.equal(restored.natural, state.natural)
    _, (tx, tx_adv, ty) = batch(rng)
    assert (defense.loss(model, tx, ty, tx_adv, state)[0].item()
            == defense.loss(model, tx, ty, tx_adv, restored)[0].item())
    with pytest.raises(ValueError, match="shape"):
        LMAState.zeros(5, 4).load_state_dict(state.state_dict())


# --------------------------------------------------------------------------- attack, training
def test_attack_raises_the_margin_plus_ce_objective(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:64], y[:64]
    defense = create_defense("lma_at", attack=AttackSettings(epsilon=0.1, steps=5,
                                                             step_size=0.02))
    assert defense.default_random_start == "gaussian"
    torch.manual_seed(0)
    x_adv = defense.perturb(trained_mlp, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    objective = margin_ce_attack_loss(0.9)
    with torch.no_grad():
        assert objective(trained_mlp(x_adv), y).mean() > 2 * objective(trained_mlp(x), y).mean()


@pytest.mark.parametrize("name", NAMES)
def test_train_epoch_on_real_mnist(name, mnist_test_slice):
    x, y = mnist_test_slice
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=28, hidden=32, layers=1,
                         mean=(0.1307,), std=(0.3081,))
    defense = create_defense(name, attack=ATTACK)  # the paper's knobs
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = defense.init_state(num_examples=60_000, batch_size=32, num_classes=10, epochs=2)
    ids = torch.arange(len(y))
    batches = [(x[s:s + 32], y[s:s + 32], ids[s:s + 32]) for s in (0, 32, 64)]
    batches[-1] = tuple(t[:20] for t in batches[-1])  # a short last batch
    losses = []
    for _ in range(3):
        metrics, state = train_epoch(model, defense, batches, optimizer, state)
        losses.append(metrics["train_loss"])
        assert all(math.isfinite(v) for v in metrics.values())
    assert isinstance(state, LMAState) and torch.isfinite(state.adversarial).all()
    assert state.adversarial.abs().sum() > 0 and state.natural.abs().sum() > 0
    assert losses[-1] < losses[0]
