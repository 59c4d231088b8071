"""AMR (Eq. 8/15) against an independent float64 numpy computation of the paper's loss."""

import numpy as np
import pytest
import torch
from linear import relative_error as rel
from torch import nn

from trainables.defenses import AttackSettings, DefenseConfigError, create_defense
from trainables.defenses.amr import orthogonality_penalty
from trainables.engine import train_epoch
from trainables.models import create_model

ATTACK = AttackSettings(epsilon=0.1, steps=3, step_size=0.05)
TAU = 3.0


class LinearFeatureModel(nn.Module):
    """Φ(x) = A x + a (a fixed linear map), f(x) = W Φ(x) + b."""

    def __init__(self, A, a, W, b):
        super().__init__()
        self.body = nn.Linear(A.shape[1], A.shape[0]).double()
        self.head = nn.Linear(W.shape[1], W.shape[0]).double()
        with torch.no_grad():
            for layer, (weight, bias) in ((self.body, (A, a)), (self.head, (W, b))):
                layer.weight.copy_(torch.from_numpy(weight))
                layer.bias.copy_(torch.from_numpy(bias))

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def problem(seed=3, n=40, d=5, h=6, k=4):
    rng = np.random.default_rng(seed)
    A, a = rng.normal(size=(h, d)), rng.normal(size=h)
    # unequal row norms and large biases: the logit argmax and the normalised-row margin disagree
    W = rng.normal(size=(k, h)) * rng.uniform(0.3, 3.0, size=(k, 1))
    b = 2.0 * rng.normal(size=k)
    x, y = rng.normal(size=(n, d)), rng.integers(0, k, size=n)
    return (A, a, W, b, x, y), LinearFeatureModel(A, a, W, b)


def numpy_terms(A, a, W, b, x, y, tau):
    """CE, margin term and orthogonality penalty, written out from Eq. 8/14/15."""
    n, k = len(y), W.shape[0]
    phi = x @ A.T + a
    logits = phi @ W.T + b
    z = logits - logits.max(1, keepdims=True)
    ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(n), y])
    w_hat = W / np.sqrt((W ** 2).sum(1, keepdims=True))
    margins = np.array([min((w_hat[y[i]] - w_hat[j]) @ phi[i] for j in range(k) if j != y[i])
                        for i in range(n)])
    correct = logits.argmax(1) == y
    truncated = np.minimum(np.maximum(margins, 0.0), tau)
    margin_term = np.sum(np.where(correct, truncated, 0.0)) / n
    penalty = sum(np.sum((M @ M.T - np.eye(M.shape[0])) ** 2) for M in (A, W))
    return ce, margin_term, penalty, margins, correct


def test_chosen_numbers_exercise_every_branch():
    (A, a, W, b, x, y), _ = problem()
    *_, margins, correct = numpy_terms(A, a, W, b, x, y, TAU)
    assert (correct & (margins < 0)).any()  # truncated at 0
    assert (correct & (margins > TAU)).any()  # truncated at τ
    assert (correct & (margins > 0) & (margins < TAU)).any()  # passed through
    assert (~correct & (margins > 0)).any()  # a positive margin masked out by 1[ŷ = y]


@pytest.mark.parametrize("lam,beta", [(0.7, 0.0), (0.0, 0.05), (0.3, 0.02)])
def test_total_loss_matches_equation(lam, beta):
    (A, a, W, b, x, y), model = problem()
    ce, margin_term, penalty, *_ = numpy_terms(A, a, W, b, x, y, TAU)
    defense = create_defense("amr", attack=ATTACK, lambda_margin=lam, tau=TAU, beta_orth=beta)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    loss, metrics = defense.loss(model, tx, ty, defense.perturb(model, tx, ty))
    assert rel(loss.item(), ce - lam * margin_term + beta * penalty) <= 1e-5
    assert rel(metrics["natural_loss"], ce) <= 1e-5
    assert rel(metrics["average_feature_margin"], margin_term) <= 1e-5
    assert rel(metrics["orthogonality_penalty"], penalty) <= 1e-5


def test_margin_term_caps_and_masks():
    """Raising τ past every margin changes the term by exactly the capped excess."""
    (A, a, W, b, x, y), model = problem()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    values = {}
    for tau in (TAU, 100.0):
        defense = create_defense("amr", attack=ATTACK, lambda_margin=1.0, tau=tau, beta_orth=0.0)
        values[tau] = defense.loss(model, tx, ty, tx)[1]["average_feature_margin"]
    *_, margins, correct = numpy_terms(A, a, W, b, x, y, TAU)
    excess = np.where(correct & (margins > TAU), margins - TAU, 0.0).sum() / len(y)
    assert excess > 0
    assert rel(values[100.0] - values[TAU], excess) <= 1e-5


def test_orthogonality_penalty_mlp_closed_form():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 8), nn.ReLU(),
                        nn.Linear(8, 4)).double()  # wide, tall and wide weights
    expected = 0.0
    for layer in (mlp[0], mlp[2], mlp[4]):
        M = layer.weight.detach().numpy()
        expected += np.sum((M @ M.T - np.eye(M.shape[0])) ** 2)  # biases not included
    assert rel(orthogonality_penalty(mlp).item(), expected) <= 1e-5


def test_orthogonality_penalty_conv_closed_form():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 40, 1), nn.Flatten(),
                        nn.Linear(10, 2)).double()
    expected = 0.0
    for layer in (net[0], net[2], net[4]):
        weight = layer.weight.detach().numpy()
        M = weight.reshape(weight.shape[0], -1)  # one row per output filter
        expected += np.sum((M @ M.T - np.eye(M.shape[0])) ** 2)
    # the first conv alone: 4 filters of 3·3·3 entries, by explicit loops
    w0 = net[0].weight.detach().numpy()
    by_loops = sum((sum(w0[i, c, u, v] * w0[j, c, u, v] for c in range(3) for u in range(3)
                        for v in range(3)) - (i == j)) ** 2 for i in range(4) for j in range(4))
    assert rel(orthogonality_penalty(net[:1]).item(), by_loops) <= 1e-5
    assert rel(orthogonality_penalty(net).item(), expected) <= 1e-5


def test_perturb_is_identity_and_knobs_are_validated():
    defense = create_defense("amr", attack=ATTACK)
    x = torch.rand(4, 1, 28, 28)
    assert defense.perturb(None, x, torch.zeros(4, dtype=torch.long)) is x
    assert (defense.params.lambda_margin, defense.params.tau, defense.params.beta_orth) == (
        0.1, 5.0, 1e-3)
    with pytest.raises(DefenseConfigError, match="allowed: beta_orth, lambda_margin, tau"):
        create_defense("amr", attack=ATTACK, beta=1.0)
    with pytest.raises(DefenseConfigError, match="tau"):
        create_defense("amr", attack=ATTACK, tau=-1.0)


def test_gradient_reaches_every_parameter(mnist_test_slice):
    x, y = mnist_test_slice
    torch.manual_seed(0)
    model = create_model("small_cnn", in_channels=1, image_size=28, dropout=0.0)
    defense = create_defense("amr", attack=ATTACK, lambda_margin=1.0, tau=50.0, beta_orth=1e-2)
    loss, _ = defense.loss(model, x[:16], y[:16], x[:16])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _mnist_batches(mnist_test_slice, size=64):
    x, y = mnist_test_slice
    ids = torch.arange(len(y))
    return [(x[i:i + size], y[i:i + size], ids[i:i + size]) for i in range(0, len(y), size)]


def _tiny_mlp():
    torch.manual_seed(0)
    return create_model("mlp", in_channels=1, image_size=28, hidden=32, layers=1,
                        mean=(0.1307,), std=(0.3081,))


def test_large_beta_drives_the_orthogonality_penalty_down(mnist_test_slice):
    batches = _mnist_batches(mnist_test_slice)
    after = {}
    for beta in (0.0, 1.0):
        model = _tiny_mlp()
        before = orthogonality_penalty(model).item()
        defense = create_defense("amr", attack=ATTACK, lambda_margin=0.1, tau=5.0,
                                 beta_orth=beta)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        metrics, state = train_epoch(model, defense, batches, optimizer)
        assert state is None
        assert all(np.isfinite(v) for v in metrics.values())
        after[beta] = orthogonality_penalty(model).item()
    assert after[1.0] < 0.25 * before
    assert after[1.0] < 0.25 * after[0.0]


def test_default_knobs_train_on_real_mnist(mnist_test_slice):
    batches = _mnist_batches(mnist_test_slice)
    model = _tiny_mlp()
    defense = create_defense("amr", attack=ATTACK)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = [train_epoch(model, defense, batches, optimizer)[0] for _ in range(3)]
    assert all(np.isfinite(m["train_loss"]) for m in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["train_natural_loss"] < history[0]["train_natural_loss"]
    assert history[-1]["train_average_feature_margin"] > 0
