"""Hypersphere Embedding (HE, m-HE) against float64 computations of the paper's equations.

The model has linear features z = A x + c, so by hand: cosθ = (z/‖z‖)·(W_l/‖W_l‖), HE logits
s·cosθ, m-HE logits −s·θ, and the training losses of Table 1 with the margin where it belongs.
"""

import numpy as np
import pytest
import torch
from linear import relative_error
from torch import nn

from attacks.pgd import pgd
from trainables.checkpoints import load_checkpoint, save_checkpoint
from trainables.config import ConfigError, TrialConfig
from trainables.defenses import AttackSettings, DefenseConfigError, create_defense
from trainables.defenses.he import CosineHead
from trainables.engine import build_model, train_epoch
from trainables.models import Classifier

ATTACK = AttackSettings(epsilon=0.1, steps=3, step_size=0.05)


def problem(seed=0, n=6, d=5, h=4, k=3):
    """Float64 numbers and a Classifier with linear features A x + c and head (W, b)."""
    rng = np.random.default_rng(seed)
    A, c = rng.normal(size=(h, d)), rng.normal(size=h)
    W, b = rng.normal(size=(k, h)), rng.normal(size=k)
    x, x_adv = rng.uniform(size=(n, d)), rng.uniform(size=(n, d))
    y = rng.integers(0, k, size=n)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(d, h)), h, k, (0.0,), (1.0,))
    model = model.double()
    with torch.no_grad():
        model.body[1].weight.copy_(torch.from_numpy(A))
        model.body[1].bias.copy_(torch.from_numpy(c))
        model.head.weight.copy_(torch.from_numpy(W))
        model.head.bias.copy_(torch.from_numpy(b))
    as_images = lambda a: torch.from_numpy(a).view(n, 1, 1, d)  # noqa: E731
    return (A, c, W, x, x_adv, y), model, (as_images(x), as_images(x_adv), torch.from_numpy(y))


def cosines(inputs, A, c, W):
    z = inputs @ A.T + c
    z_unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    w_unit = W / np.linalg.norm(W, axis=1, keepdims=True)
    return z_unit @ w_unit.T


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits, y):
    return -log_softmax(logits)[np.arange(len(y)), y]  # per example


def training_logits(cos, y, s, m, angular):
    """Table 1 / Eq. 6: s(cosθ − m·1_y); m-HE: −s(θ + m·1_y)."""
    one_hot = np.eye(cos.shape[1])[y]
    return -s * (np.arccos(cos) + m * one_hot) if angular else s * (cos - m * one_hot)


def eval_logits(cos, s, angular):
    return -s * np.arccos(cos) if angular else s * cos


def hooked(name, seed=0, **knobs):
    numbers, model, tensors = problem(seed)
    defense = create_defense(name, attack=ATTACK, **knobs)
    return numbers, defense.model_hook(model), tensors, defense


@pytest.mark.parametrize("name,angular", [("he", False), ("m_he", True)])
def test_hooked_head_gives_scaled_cosines_and_keeps_the_model_contract(name, angular):
    (A, c, W, x, _, _), model, (tx, _, _), _ = hooked(name, scale=7.0)
    with torch.no_grad():
        logits = model(tx).numpy()
        via_parts = model.head(model.features(tx))
    expected = eval_logits(cosines(x, A, c, W), 7.0, angular)
    assert np.abs(logits - expected).max() < 1e-10 * np.abs(expected).max()
    assert torch.equal(model(tx), via_parts)
    assert isinstance(model.head, nn.Linear) and isinstance(model.head, CosineHead)
    assert model.head.bias is None
    assert {k for k in model.state_dict() if k.startswith("head.")} == {"head.weight"}


@pytest.mark.parametrize("name,angular", [("he", False), ("m_he", True)])
@pytest.mark.parametrize("scale,margin", [(15.0, 0.2), (4.0, 0.5)])
def test_pgd_at_he_loss_is_margin_cross_entropy_on_adversarial_inputs(name, angular, scale,
                                                                      margin):
    (A, c, W, _, x_adv, y), model, (tx, tx_adv, ty), defense = hooked(
        name, seed=1, scale=scale, margin=margin)
    cos_adv = cosines(x_adv, A, c, W)
    expected = cross_entropy(training_logits(cos_adv, y, scale, margin, angular), y).mean()
    loss, metrics, _ = defense.step(model, tx, ty, tx_adv)
    assert relative_error(loss.item(), expected) < 1e-5
    # accuracies are those of the evaluation logits, not of the margin-shifted ones
    plain = eval_logits(cos_adv, scale, angular)
    assert metrics["adversarial_accuracy"] == pytest.approx((plain.argmax(1) == y).mean())
    per_example = defense.adaptive_attack_loss()(model(tx_adv), ty).detach().numpy()
    assert np.abs(per_example - cross_entropy(
        training_logits(cos_adv, y, scale, margin, angular), y)).max() < 1e-8


@pytest.mark.parametrize("name,angular", [("he", False), ("m_he", True)])
@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_he_puts_the_margin_on_the_clean_cross_entropy_only(name, angular, beta):
    (A, c, W, x, x_adv, y), model, (tx, tx_adv, ty), defense = hooked(
        name, seed=2, he_base="trades", beta=beta)
    s, m = 15.0, 0.2
    cos, cos_adv = cosines(x, A, c, W), cosines(x_adv, A, c, W)
    natural = cross_entropy(training_logits(cos, y, s, m, angular), y).mean()
    log_p, log_q = log_softmax(eval_logits(cos, s, angular)), log_softmax(
        eval_logits(cos_adv, s, angular))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(1).mean()
    loss, metrics, _ = defense.step(model, tx, ty, tx_adv)
    assert relative_error(loss.item(), natural + beta * kl) < 1e-5
    assert relative_error(metrics["robust_loss"], kl) < 1e-5


@pytest.mark.parametrize("lambda_alp", [0.5, 2.0])
def test_alp_he_pairs_unscaled_cosines(lambda_alp):
    (A, c, W, x, x_adv, y), model, (tx, tx_adv, ty), defense = hooked(
        "he", seed=3, he_base="alp", lambda_alp=lambda_alp, scale=10.0, margin=0.3)
    cos, cos_adv = cosines(x, A, c, W), cosines(x_adv, A, c, W)
    ce_m = lambda cs: cross_entropy(training_logits(cs, y, 10.0, 0.3, False), y).mean()  # noqa: E731
    pairing = np.linalg.norm(cos - cos_adv, axis=1).mean()  # ‖W̃ᵀ(z̃ − z̃*)‖₂, Table 1
    expected = 0.5 * ce_m(cos) + 0.5 * ce_m(cos_adv) + lambda_alp * pairing
    loss, metrics, _ = defense.step(model, tx, ty, tx_adv)
    assert relative_error(loss.item(), expected) < 1e-5
    assert metrics["train_accuracy"] == pytest.approx((cos.argmax(1) == y).mean())


def numeric_input_gradient(loss_of_inputs, x, h=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        grad[index] = (loss_of_inputs(x + step) - loss_of_inputs(x - step)) / (2 * h)
    return grad


def test_trades_he_attack_uses_the_head_without_margin():
    # For a CE objective the margin only rescales each example's input gradient (it moves p_y
    # alone), so PGD-CE steps are the same either way; TRADES' KL attack tells them apart.
    attack = AttackSettings(epsilon=0.1, steps=1, step_size=0.05, norm="l2")
    (A, c, W, x, _, y), model, (tx, _, ty) = problem(seed=4)
    defense = create_defense("he", attack=attack, he_base="trades")
    model = defense.model_hook(model)
    torch.manual_seed(0)
    start = x + 0.001 * torch.randn(tx.shape).double().view(len(y), -1).numpy()
    start = np.clip(start, 0.0, 1.0)  # well inside the 0.1-ball

    def kl_step(logits_of):
        log_p = log_softmax(logits_of(x))
        kl = lambda v: (np.exp(log_p) * (log_p - log_softmax(logits_of(v)))).sum()  # noqa: E731
        g = numeric_input_gradient(kl, start, h=1e-7)
        return np.clip(start + 0.05 * g / np.linalg.norm(g, axis=1, keepdims=True), 0.0, 1.0)

    plain = kl_step(lambda v: 15.0 * cosines(v, A, c, W))
    margin = kl_step(lambda v: training_logits(cosines(v, A, c, W), y, 15.0, 0.2, False))
    assert np.abs(plain - margin).max() > 1e-3  # the two objectives are distinguishable
    torch.manual_seed(0)
    x_adv = defense.perturb(model, tx, ty).view(len(y), -1).numpy()
    assert np.abs(x_adv - plain).max() < 1e-6


def test_fast_at_he_trains_on_margin_cross_entropy_after_an_unmargined_fgsm():
    (A, c, W, x, x_adv, y), model, (tx, tx_adv, ty), defense = hooked(
        "he", seed=5, he_base="fast_at", alpha_ratio=1.0)
    torch.manual_seed(0)
    perturbed = defense.perturb(model, tx, ty)
    torch.manual_seed(0)
    reference = pgd(model, tx, ty, epsilon=0.1, steps=1, step_size=0.1, loss="ce")
    assert torch.equal(perturbed, reference)
    expected = cross_entropy(training_logits(cosines(x_adv, A, c, W), y, 15.0, 0.2, False),
                             y).mean()
    loss, _, _ = defense.step(model, tx, ty, tx_adv)
    assert relative_error(loss.item(), expected) < 1e-5


def test_free_at_he_perturbation_ascends_the_margin_loss_and_its_state_round_trips():
    (A, c, W, x, _, y), model, (tx, _, ty), defense = hooked(
        "he", seed=6, he_base="free_at", replays=3)
    assert defense.replays == 3
    state = defense.init_state(num_examples=60_000, batch_size=6, num_classes=3, epochs=1)
    x_adv = defense.perturb(model, tx, ty, state)  # δ = 0 at the start
    loss, _, state = defense.step(model, tx, ty, x_adv, state)
    margin_loss = lambda v: cross_entropy(  # noqa: E731
        training_logits(cosines(v, A, c, W), y, 15.0, 0.2, False), y).mean()
    assert relative_error(loss.item(), margin_loss(x)) < 1e-5
    loss.backward()
    state = defense.after_backward(state, x_adv)
    gradient = numeric_input_gradient(margin_loss, x)
    delta = state.delta.view(len(y), -1).numpy()
    assert np.abs(delta - ATTACK.epsilon * np.sign(gradient)).max() < 1e-12
    restored = defense.init_state(num_examples=60_000, batch_size=6, num_classes=3, epochs=1)
    restored.load_state_dict(state.state_dict())
    assert torch.equal(restored.delta, state.delta)


def test_knobs_are_checked_against_the_chosen_base():
    with pytest.raises(DefenseConfigError, match="beta applies to he_base='trades'"):
        create_defense("he", attack=ATTACK, he_base="pgd_at", beta=6.0)
    with pytest.raises(DefenseConfigError, match="allowed: .*he_base.*margin.*scale"):
        create_defense("m_he", attack=ATTACK, s=15.0)
    with pytest.raises(ConfigError, match="defense_params"):
        TrialConfig.from_dict({"defense": "he", "defense_params": {"he_base": "mart"}})
    with pytest.raises(ConfigError, match="replays"):  # range checked by the base
        TrialConfig.from_dict({"defense": "he", "defense_params": {"he_base": "free_at",
                                                                   "replays": 0}})


@pytest.mark.parametrize("name,params", [("he", {}), ("m_he", {"he_base": "trades"})])
def test_checkpoint_of_a_hooked_small_cnn_round_trips(tmp_path, name, params):
    config = TrialConfig.from_dict({"dataset": "mnist", "model": "small_cnn", "defense": name,
                                    "defense_params": params})
    torch.manual_seed(0)
    model = build_model(config).eval()
    assert isinstance(model.head, CosineHead)
    with torch.no_grad():
        model.head.weight.mul_(3.0)  # weights the registry would not rebuild by itself
    path = save_checkpoint(tmp_path / "ckpt", model=model, config=config)
    loaded = load_checkpoint(path).model
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("name,params", [("he", {"he_base": "pgd_at"}),
                                         ("m_he", {"he_base": "free_at", "replays": 2})])
def test_small_cnn_trains_on_real_mnist(name, params, mnist_test_slice):
    x, y = mnist_test_slice
    batches = [(x[i:i + 32], y[i:i + 32], torch.arange(i, i + 32)) for i in (0, 32)]
    torch.manual_seed(0)
    config = TrialConfig.from_dict({"dataset": "mnist", "model": "small_cnn", "defense": name,
                                    "defense_params": params, "attack_steps": 2})
    model = build_model(config)
    defense = config.build_defense()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = defense.init_state(num_examples=60_000, batch_size=32, num_classes=10, epochs=1)
    metrics, state = train_epoch(model, defense, batches, optimizer, state)
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["train_adversarial_accuracy"] <= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
