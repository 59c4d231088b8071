"""ALP, MAIL, IGR, Fast AT and Free AT against independent float64 computations of their equations
on a linear model f(x) = W x + b, plus short training runs on real MNIST."""

import linear
import numpy as np
import pytest
import torch
from linear import saved_and_loaded, softmax

from trainables.defenses import AttackSettings, DefenseConfigError, create_defense
from trainables.defenses.fast_free import FreeATState
from trainables.engine import train_epoch
from trainables.models import create_model

EPS = 0.1
ATTACK = AttackSettings(epsilon=EPS, steps=3, step_size=0.05)
BASELINES = ["alp", "mail_at", "mail_trades", "igr", "fast_at", "free_at"]


def linear_problem(seed=0, n=8):
    """Adversarial inputs within EPS of the clean ones, as a training attack's would be."""
    return linear.linear_problem(seed, n, adversarial_radius=EPS)


def onehot(y, k):
    return np.eye(k)[y]


def cross_entropy(p, y):
    return -np.log(p[np.arange(len(y)), y])


def kl(p, q):
    return (p * np.log(p / q)).sum(1)


def assert_close(actual, expected, tol=1e-5):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    scale = np.maximum(np.abs(expected), 1e-12)
    assert np.all(np.abs(actual - expected) / scale <= tol), (actual, expected)


# ----------------------------------------------------------------------------- ALP
@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_alp_matches_its_equation(lam):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem(seed=1)
    z, z_adv = x @ W.T + b, x_adv @ W.T + b
    p, q = softmax(z), softmax(z_adv)
    pairing = np.sqrt(((z - z_adv) ** 2).sum(1)).mean()
    expected = 0.5 * cross_entropy(p, y).mean() + 0.5 * cross_entropy(q, y).mean() + lam * pairing
    loss, metrics = create_defense("alp", attack=ATTACK, lambda_alp=lam).loss(
        model, tx, ty, tx_adv)
    assert_close(loss.item(), expected)
    assert_close(metrics["logit_pairing"], pairing)


def test_alp_gradient_is_finite_without_perturbation():
    _, model, (tx, _, ty) = linear_problem(seed=2)
    loss, _ = create_defense("alp", attack=ATTACK).loss(model, tx, ty, tx.clone())
    loss.backward()
    assert torch.isfinite(model.weight.grad).all()


# ----------------------------------------------------------------------------- MAIL
def mail_weights_np(q, y, slope, bias):
    rows = np.arange(len(y))
    wrong = q.copy()
    wrong[rows, y] = -np.inf
    margin = q[rows, y] - wrong.max(1)
    w = 1.0 / (1.0 + np.exp(slope * (margin - bias)))
    return w * len(y) / w.sum()


@pytest.mark.parametrize("slope,bias", [(30.0, 0.07), (5.0, 0.05), (1.0, -0.3)])
def test_mail_at_matches_its_equation_with_detached_weights(slope, bias):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem(seed=3)
    q = softmax(x_adv @ W.T + b)
    w = mail_weights_np(q, y, slope, bias)
    assert_close(w.sum(), len(y))
    expected = (w * cross_entropy(q, y)).mean()
    loss, _ = create_defense("mail_at", attack=ATTACK, slope=slope, bias=bias).loss(
        model, tx, ty, tx_adv)
    assert_close(loss.item(), expected)
    loss.backward()
    # weights are constants: dL/dW = mean_i w_i (q_i − e_{y_i}) x'_iᵀ
    grad_W = ((w[:, None] * (q - onehot(y, 4))).T @ x_adv) / len(y)
    assert_close(model.weight.grad.numpy(), grad_W)


@pytest.mark.parametrize("slope,bias,beta", [(5.0, 0.05, 5.0), (20.0, 0.0, 1.0)])
def test_mail_trades_matches_its_equation(slope, bias, beta):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem(seed=4)
    p, q = softmax(x @ W.T + b), softmax(x_adv @ W.T + b)
    w = mail_weights_np(q, y, slope, bias)
    expected = cross_entropy(p, y).mean() + beta * (w * kl(p, q)).mean()
    loss, metrics = create_defense("mail_trades", attack=ATTACK, slope=slope, bias=bias,
                                   beta=beta).loss(model, tx, ty, tx_adv)
    assert_close(loss.item(), expected)
    assert_close(metrics["robust_loss"], (w * kl(p, q)).mean())


def test_mail_burn_in_trains_unweighted_first():
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem(seed=5)
    p, q = softmax(x @ W.T + b), softmax(x_adv @ W.T + b)
    at = create_defense("mail_at", attack=ATTACK, burn_in_epochs=2)
    trades = create_defense("mail_trades", attack=ATTACK, burn_in_epochs=2, beta=5.0)
    assert_close(at.at_epoch(1, 1.0).loss(model, tx, ty, tx_adv)[0].item(),
                 cross_entropy(q, y).mean())
    assert_close(trades.at_epoch(1, 1.0).loss(model, tx, ty, tx_adv)[0].item(),
                 cross_entropy(p, y).mean() + 5.0 * kl(p, q).mean())
    w = mail_weights_np(q, y, 30.0, 0.07)
    assert_close(at.at_epoch(2, 0.1).loss(model, tx, ty, tx_adv)[0].item(),
                 (w * cross_entropy(q, y)).mean())


def test_mail_weights_survive_a_steep_sigmoid():
    _, model, (tx, tx_adv, ty) = linear_problem(seed=6)
    defense = create_defense("mail_at", attack=ATTACK, slope=1000.0, bias=-2.0)
    loss, metrics = defense.loss(model, tx, ty, tx_adv)
    assert torch.isfinite(loss) and loss.item() > 0
    assert metrics["mail_weight_max"] <= len(ty) + 1e-9


def test_mail_trades_attacks_like_trades(mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:32], y[:32]
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=28, hidden=32, layers=1)
    attack = AttackSettings(epsilon=EPS, steps=5, step_size=0.02)
    torch.manual_seed(3)
    ours = create_defense("mail_trades", attack=attack).perturb(model, x, y)
    torch.manual_seed(3)
    reference = create_defense("trades", attack=attack).perturb(model, x, y)
    assert torch.equal(ours, reference) and not torch.equal(ours, x)


# ----------------------------------------------------------------------------- IGR
@pytest.mark.parametrize("base", ["standard", "pgd_at", "trades"])
def test_igr_matches_its_equation(base):
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem(seed=7)
    p, q = softmax(x @ W.T + b), softmax(x_adv @ W.T + b)
    lam, beta = 0.7, 3.0
    base_loss = {"standard": cross_entropy(p, y).mean(), "pgd_at": cross_entropy(q, y).mean(),
                 "trades": cross_entropy(p, y).mean() + beta * kl(p, q).mean()}[base]
    probs = q if base == "pgd_at" else p
    input_grad = (probs - onehot(y, 4)) @ W  # ∇ₓ CE of a linear model, per example
    penalty = (input_grad ** 2).sum(1).mean()
    knobs = {"beta": beta} if base == "trades" else {}
    defense = create_defense("igr", attack=ATTACK, igr_base=base, lambda_igr=lam, **knobs)
    loss, metrics = defense.loss(model, tx, ty, tx_adv)
    assert_close(loss.item(), base_loss + lam * penalty)
    assert_close(metrics["input_gradient_penalty"], penalty)


def test_igr_penalty_reaches_the_parameters():
    """Double backprop: dL/dW matches central differences of the closed-form loss."""
    (W, b, x, x_adv, y), model, (tx, tx_adv, ty) = linear_problem(seed=8)
    lam = 2.0

    def closed_form(weight):
        q = softmax(x_adv @ weight.T + b)
        return cross_entropy(q, y).mean() + lam * (((q - onehot(y, 4)) @ weight) ** 2).sum(
            1).mean()

    loss, _ = create_defense("igr", attack=ATTACK, lambda_igr=lam).loss(model, tx, ty, tx_adv)
    loss.backward()
    numeric = np.zeros_like(W)
    h = 1e-6
    for index in np.ndindex(W.shape):
        step = np.zeros_like(W)
        step[index] = h
        numeric[index] = (closed_form(W + step) - closed_form(W - step)) / (2 * h)
    assert_close(model.weight.grad.numpy(), numeric, tol=1e-5)


def test_igr_builds_its_base_through_the_registry():
    igr = create_defense("igr", attack=ATTACK, igr_base="trades", beta=9.0)
    assert igr.base.name == "trades" and igr.base.params.beta == 9.0
    assert igr.base.attack == ATTACK and igr.at_epoch(3, 0.1).base.name == "trades"
    assert create_defense("igr", attack=ATTACK, igr_base="trades").base.params.beta == 6.0
    with pytest.raises(DefenseConfigError, match="igr_base must be one of"):
        create_defense("igr", attack=ATTACK, igr_base="magic")
    with pytest.raises(DefenseConfigError, match="do not apply to igr_base='pgd_at'"):
        create_defense("igr", attack=ATTACK, igr_base="pgd_at", beta=6.0)
    with pytest.raises(DefenseConfigError, match="beta must lie in"):
        create_defense("igr", attack=ATTACK, igr_base="trades", beta=-1.0)


# ----------------------------------------------------------------------------- Fast AT
def fgsm_np(x, y, W, b, start, step, eps):
    q = softmax(start @ W.T + b)
    moved = start + step * np.sign((q - onehot(y, W.shape[0])) @ W)
    return np.clip(np.clip(moved, x - eps, x + eps), 0, 1)


@pytest.mark.parametrize("ratio", [0.5, 1.25])
def test_fast_at_is_one_fgsm_step_from_a_random_start(ratio):
    (W, b, x, _, y), model, (tx, _, ty) = linear_problem(seed=9)
    fast = create_defense("fast_at", attack=ATTACK, alpha_ratio=ratio)
    torch.manual_seed(11)
    x_adv = fast.perturb(model, tx, ty).numpy()
    torch.manual_seed(11)  # the uniform start drawn the same way, independently of the attack
    noise = ((torch.rand(tx.shape) * 2 - 1) * EPS).double().numpy()
    start = np.clip(np.clip(x + noise, x - EPS, x + EPS), 0, 1)
    assert_close(x_adv, fgsm_np(x, y, W, b, start, ratio * EPS, EPS), tol=1e-12)

    no_start = create_defense("fast_at", attack=AttackSettings(
        epsilon=EPS, steps=7, step_size=0.3, random_start="none"), alpha_ratio=ratio)
    assert_close(no_start.perturb(model, tx, ty).numpy(),
                 fgsm_np(x, y, W, b, x, ratio * EPS, EPS), tol=1e-12)
    loss, _ = fast.loss(model, tx, ty, torch.from_numpy(x_adv))
    assert_close(loss.item(), cross_entropy(softmax(x_adv @ W.T + b), y).mean())


# ----------------------------------------------------------------------------- Free AT
def test_free_at_updates_delta_with_the_training_gradient():
    (W, b, x, _, y), model, (tx, _, ty) = linear_problem(seed=10, n=12)
    rng = np.random.default_rng(0)
    delta0 = rng.uniform(-EPS, EPS, size=x.shape)
    free = create_defense("free_at", attack=ATTACK)
    state = FreeATState(delta=torch.from_numpy(delta0.copy()))
    x_adv = free.perturb(model, tx, ty, state)
    loss, _, state = free.step(model, tx, ty, x_adv, state)
    loss.backward()
    state = free.after_backward(state, x_adv)

    shifted = x + delta0
    inside = (shifted >= 0) & (shifted <= 1)
    assert (~inside).any()  # the clip matters somewhere in this problem
    q = softmax(np.clip(shifted, 0, 1) @ W.T + b)
    assert_close(loss.item(), cross_entropy(q, y).mean())
    grad = ((q - onehot(y, 4)) @ W) * inside  # gradient w.r.t. δ, through the clip
    expected = np.clip(delta0 + EPS * np.sign(grad), -EPS, EPS)
    np.testing.assert_allclose(state.delta.numpy(), expected, rtol=0, atol=1e-15)


def test_free_at_delta_follows_batch_shape():
    free = create_defense("free_at", attack=ATTACK)
    delta = torch.full((6, 3), 0.05, dtype=torch.float64)
    short = torch.full((4, 3), 0.5, dtype=torch.float64)
    assert torch.equal(free.perturb(None, short, None, FreeATState(delta)), short + 0.05)
    carried = free.carried_delta(FreeATState(delta), torch.zeros(8, 3, dtype=torch.float64))
    assert torch.equal(carried[:6], delta) and torch.equal(carried[6:], torch.zeros(2, 3,
                                                                                      dtype=torch.float64))
    assert torch.equal(free.carried_delta(FreeATState(delta), torch.zeros(6, 5)),
                       torch.zeros(6, 5))

    model = torch.nn.Linear(3, 2).double()
    y = torch.tensor([0, 1, 0, 1])
    x_adv = free.perturb(model, short, y, FreeATState(delta))
    loss, _, state = free.step(model, short, y, x_adv, FreeATState(delta))
    loss.backward()
    state = free.after_backward(state, x_adv)
    assert state.delta.shape == (6, 3) and torch.equal(state.delta[4:], delta[4:])
    assert not torch.equal(state.delta[:4], delta[:4])


def test_free_at_replays_each_batch_and_checkpoints_its_delta(mnist_test_slice):
    x, y = mnist_test_slice
    batches = [(x[i:i + 32], y[i:i + 32], torch.arange(i, i + 32)) for i in range(0, 96, 32)]
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=28, hidden=32, layers=1)
    free = create_defense("free_at", attack=ATTACK, replays=3)
    assert free.replays == 3
    steps = []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    state = free.init_state(num_examples=60_000, batch_size=32, num_classes=10, epochs=1)
    _, state = train_epoch(model, free, batches, optimizer, state)
    assert len(steps) == 3 * 3
    assert state.delta.shape == (32, 1, 28, 28) and state.delta.abs().max() <= EPS
    assert state.delta.abs().max() == pytest.approx(EPS)  # several sign steps of size ε

    restored = free.init_state(num_examples=60_000, batch_size=32, num_classes=10, epochs=1)
    restored.load_state_dict(saved_and_loaded(state.state_dict()))
    assert torch.equal(restored.delta, state.delta)
    xb = batches[0][0]
    assert torch.equal(free.perturb(model, xb, None, restored), free.perturb(model, xb, None,
                                                                              state))


# ----------------------------------------------------------------------------- all six
@pytest.mark.parametrize("name,params", [
    ("alp", {"lambda_alp": -0.1}), ("mail_at", {"slope": -1.0}), ("mail_at", {"bias": 3.0}),
    ("mail_trades", {"beta": -1.0}), ("mail_at", {"burn_in_epochs": 1.5}),
    ("igr", {"lambda_igr": -1.0}), ("fast_at", {"alpha_ratio": 5.0}),
    ("free_at", {"replays": 0}), ("free_at", {"replays": 2.5}), ("alp", {"beta": 1.0}),
])
def test_knobs_are_validated(name, params):
    with pytest.raises(DefenseConfigError):
        create_defense(name, attack=ATTACK, **params)


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_trains_on_mnist(name, mnist_test_slice):
    x, y = mnist_test_slice
    batches = [(x[i:i + 64], y[i:i + 64], torch.arange(i, i + 64)) for i in range(0, 256, 64)]
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=28, hidden=64, layers=1,
                         mean=(0.1307,), std=(0.3081,))
    params = {"replays": 2} if name == "free_at" else {}
    defense = create_defense(name, attack=AttackSettings(epsilon=EPS, steps=2, step_size=0.05),
                             **params)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = defense.init_state(num_examples=60_000, batch_size=64, num_classes=10, epochs=3)
    history = []
    for epoch in range(3):
        metrics, state = train_epoch(model, defense.at_epoch(epoch, 1.0), batches, optimizer,
                                     state)
        assert all(np.isfinite(v) for v in metrics.values())
        history.append(metrics["train_loss"])
    assert history[-1] < history[0]
