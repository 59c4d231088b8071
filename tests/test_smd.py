"""SMD against float64 numpy computations of the paper's Algorithms 1–2 and Eqs. 12–14.

Linear models f(x) = W x + b make every step checkable by hand: the CE input gradient is
Wᵀ(p − e_y), and the point where the segment [x, x_K] crosses the decision boundary is the
smallest root of the linear logit differences along it.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from linear import linear_model, saved_and_loaded, softmax

from trainables.defenses import AttackSettings, create_defense
from trainables.defenses.smd import (
    ExplorationRecord,
    Explored,
    SMDState,
    exploration_pgd,
    export_margins,
    next_levels,
)
from trainables.engine import train_epoch
from trainables.models import create_model

LINF = AttackSettings(epsilon=8 / 255, steps=10, step_size=2 / 255)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, especially on a shared, busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def smd(norm="linf", **knobs):
    return create_defense("smd", attack=AttackSettings(epsilon=0.1, steps=10, step_size=0.01,
                                                       norm=norm), **knobs)


def correct_problem(seed, n, d, k):
    """A random linear classifier and points labelled with its own clean predictions."""
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(k, d)), rng.normal(size=k) * 0.1
    x = rng.uniform(0.1, 0.9, size=(n, d))
    y = (x @ W.T + b).argmax(1)
    return W, b, x, y


def crossing_fraction(W, b, x, x_end, y):
    """Smallest t ∈ (0, 1] where x + t(x_end − x) leaves class y (inf if it never does)."""
    t_star = np.full(len(x), np.inf)
    for i in range(len(x)):
        for j in range(W.shape[0]):
            if j == y[i]:
                continue
            w, c = W[y[i]] - W[j], b[y[i]] - b[j]
            m0, m1 = w @ x[i] + c, w @ x_end[i] + c
            if m1 < 0:
                t_star[i] = min(t_star[i], m0 / (m0 - m1))
    return t_star


def fraction_along(x, x_end, point):
    direction = x_end - x
    t = (direction * (point - x)).sum(1) / (direction ** 2).sum(1)
    assert np.abs(point - (x + t[:, None] * direction)).max() < 1e-12  # on the segment
    return t


# --------------------------------------------------------------------------- Eq. 12
@pytest.mark.parametrize("epochs", [150, 100, 85, 255, 300, 1])
def test_initial_margin_is_eq12(epochs):
    unit = Fraction(1, 255)  # h(x/255) with h(x) = 1 for L∞ on [0, 1]
    expected = math.ceil(Fraction(1, epochs) / unit) * unit
    state = smd().init_state(num_examples=7, batch_size=4, num_classes=10, epochs=epochs)
    margins = state.margins()
    assert margins.shape == (7,) and not state.visited.any()
    assert torch.allclose(margins, torch.full((7,), float(expected), dtype=torch.float64),
                          rtol=1e-12, atol=0)
    if epochs == 150:  # the paper's worked example
        assert abs(margins[0].item() - 2 / 255) < 1e-15


def test_plan_epochs_sets_eq12s_n_independently_of_the_run_length():
    planned = smd(plan_epochs=150).init_state(num_examples=3, batch_size=2, num_classes=10,
                                              epochs=10)
    assert torch.allclose(planned.margins(), torch.full((3,), 2 / 255, dtype=torch.float64))
    assert planned.expansion == 2
    own = smd().init_state(num_examples=3, batch_size=2, num_classes=10, epochs=10)
    assert own.expansion == 26  # ceil(255 / 10)
    with pytest.raises(ValueError, match="plan_epochs"):
        smd(plan_epochs=0)


# --------------------------------------------------------------------------- Algorithm 2
def test_bisection_binary_linear_matches_closed_form():
    W, b, x, y = correct_problem(seed=0, n=40, d=6, k=2)
    radius = np.linspace(0.01, 0.6, len(x))
    out = exploration_pgd(linear_model(W, b), torch.from_numpy(x), torch.from_numpy(y),
                          torch.from_numpy(radius))
    # a binary linear model's CE gradient has the constant sign of −(w_y − w_other), so the
    # 20 steps of r/5 end in the ball's corner, clipped to [0, 1]
    sign = np.sign(W[y] - W[1 - y])
    x_end = np.clip(x - radius[:, None] * sign, 0.0, 1.0)
    assert np.abs(out.x_last.numpy() - x_end).max() < 1e-12
    t_star = crossing_fraction(W, b, x, x_end, y)
    crossed = np.isfinite(t_star)
    assert 5 < crossed.sum() < len(x) - 5
    t = fraction_along(x, x_end, out.x_out.numpy())
    assert np.all(t[crossed] <= t_star[crossed])
    assert np.all(t[crossed] >= t_star[crossed] - 1 / 1024)
    assert np.all(t[~crossed] == 1.0)
    # on the monotone path an iterate is misclassified exactly when the corner is
    assert np.array_equal(out.kept.numpy(), ~crossed)


def numpy_epgd(W, b, x, y, radius, steps=20):
    """Algorithm 2 lines 1–7 by hand: sign steps of 4r/K, projection, the Counter."""
    X, counter = x.copy(), np.zeros(len(x), dtype=bool)
    onehot = np.eye(W.shape[0])[y]
    alpha = 4 * radius[:, None] / steps
    for _ in range(steps):
        grad = (softmax(X @ W.T + b) - onehot) @ W
        X = X + alpha * np.sign(grad)
        X = np.clip(x + np.clip(X - x, -radius[:, None], radius[:, None]), 0.0, 1.0)
        counter |= (X @ W.T + b).argmax(1) != y
    return X, counter


def test_epgd_multiclass_linear_bisection_and_gradient_norm():
    W, b, x, y = correct_problem(seed=1, n=48, d=8, k=4)
    radius = np.linspace(0.0, 0.5, len(x))
    defense = smd()
    state = defense.init_state(num_examples=100, batch_size=48, num_classes=4, epochs=150)
    ids = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:48]
    state.levels[ids] = torch.from_numpy(radius * 255).float()
    radius = state.levels[ids].double().numpy() / 255  # what the state holds, in float32
    model = linear_model(W, b)
    before = state.state_dict()
    explored = defense.perturb(model, torch.from_numpy(x), torch.from_numpy(y), state, ids=ids)
    x_adv = explored.x_adv.numpy()
    assert all(torch.equal(v, before[key]) if torch.is_tensor(v) else v == before[key]
               for key, v in state.state_dict().items())  # perturb leaves the state alone
    x_end, counter = numpy_epgd(W, b, x, y, radius)
    t_star = crossing_fraction(W, b, x, x_end, y)
    crossed = np.isfinite(t_star)
    assert 5 < crossed.sum() < len(x) - 5
    moved = radius > 0
    t = fraction_along(x[moved], x_end[moved], x_adv[moved])
    assert np.all(t[crossed[moved]] <= t_star[moved][crossed[moved]])
    assert np.all(t[crossed[moved]] >= t_star[moved][crossed[moved]] - 1 / 1024)
    assert np.all(t[~crossed[moved]] == 1.0)  # a correctly classified x_K is kept
    assert np.array_equal(x_adv[~moved], x[~moved])
    record = explored.record
    assert torch.equal(record.ids, ids) and bool(record.attacked.all())
    assert np.array_equal(record.kept.numpy(), ~counter)
    # Eq. 14's h(|∇ₓ̃ CE|) with the L∞ norm of the threat model, at the returned x̃
    grad = (softmax(x_adv @ W.T + b) - np.eye(4)[y]) @ W
    assert np.allclose(record.grad_norm.double().numpy(), np.abs(grad).max(1), rtol=1e-6)


class Band(torch.nn.Module):
    """Class 1 only while 0.555 < x₁ < 0.605; the CE gradient of class 0 always pushes x₁ up."""

    def forward(self, x):
        t = x[:, 0]
        inside = ((t > 0.555) & (t < 0.605)).to(x.dtype)
        return torch.stack([torch.zeros_like(t), 0.01 * t + 20 * inside - 10], dim=1)


def test_a_trajectory_that_crosses_and_returns_clears_flag2():
    x = torch.tensor([[0.5, 0.3], [0.7, 0.3]], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    # steps of 4·0.2/20 = 0.04: 0.54, 0.58 (inside the band), 0.62, ... up to the corner 0.7;
    # the second example starts past the band and never meets it
    out = exploration_pgd(Band(), x, y, torch.tensor([0.2, 0.2], dtype=torch.float64))
    expected_end = torch.tensor([[0.7, 0.3], [0.9, 0.3]], dtype=torch.float64)
    assert torch.allclose(out.x_last, expected_end, atol=1e-12)
    assert torch.allclose(out.x_out, expected_end, atol=1e-12)  # the correct last iterate
    assert out.kept.tolist() == [False, True]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_epgd_stays_in_each_examples_own_ball(norm, trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:64], y[:64]
    defense = smd(norm)
    state = defense.init_state(num_examples=1000, batch_size=64, num_classes=10, epochs=150)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randperm(1000, generator=generator)[:64]
    state.levels[ids] = torch.randint(0, 40, (64,), generator=generator).float()
    x_adv, record = defense.perturb(trained_mlp, x, y, state, ids=ids)
    unit = (1.0 if norm == "linf" else math.sqrt(784)) / 255
    radius = state.levels[ids].double() * unit
    delta = (x_adv - x).flatten(1).double()
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= radius + 1e-5).all())
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    attacked = record.attacked
    with torch.no_grad():
        assert torch.equal(trained_mlp(x).argmax(1) == y, attacked)
        assert bool((trained_mlp(x_adv[attacked]).argmax(1) == y[attacked]).all())
    assert torch.equal(x_adv[~attacked], x[~attacked])
    assert bool((size[attacked & (radius > 0)] > 0).any())


# --------------------------------------------------------------------------- Algorithm 1
def margin_update_by_hand(E, expand, grad_norm, distance, epochs):
    """Lines 11–12 in input-space units: E + Δε·ρ^floor(E/h(x/255))·1/(1 + ‖g‖), else ‖x − x̃‖."""
    unit = 1 / 255
    step = math.ceil((1 / epochs) / unit) * unit
    return np.where(expand, E + step * 0.9 ** np.floor(E / unit) / (1 + grad_norm), distance)


def test_next_levels_matches_the_update_rule():
    E = np.array([0.5, 2.5, 7.3, 12.9, 30.2, 4.4]) / 255
    expand = np.array([True, True, True, True, False, False])
    grad_norm = np.array([0.0, 0.3, 2.0, 0.05, 1.0, 0.0])
    distance = np.array([0.1, 0.2, 0.3, 0.4, 11.5, 0.0]) / 255
    expected = margin_update_by_hand(E, expand, grad_norm, distance, epochs=150)
    actual = next_levels(torch.from_numpy(E * 255), torch.from_numpy(expand),
                         torch.from_numpy(grad_norm), torch.from_numpy(distance * 255),
                         expansion=2).numpy() / 255
    assert np.allclose(actual, expected, rtol=1e-12, atol=0)


def test_step_loss_and_margins_by_hand():
    rng = np.random.default_rng(3)
    n, d, k, epochs = 8, 5, 3, 100
    W, b = rng.normal(size=(k, d)), rng.normal(size=k)
    x = rng.uniform(0.2, 0.8, size=(n, d))
    step_by_coordinate = np.array([0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0, 10.5]) / 255
    x_adv = x + step_by_coordinate[:, None] * rng.choice([-1.0, 1.0], size=(n, d))
    y = rng.integers(0, k, size=n)
    attacked = np.array([True, True, True, True, True, False, True, False])
    kept = np.array([True, True, False, True, False, False, True, False])
    grad_norm = np.where(attacked, rng.uniform(0, 3, size=n), 0.0)
    x_adv[~attacked] = x[~attacked]  # perturb leaves unattacked examples clean

    defense = smd()
    state = defense.init_state(num_examples=50, batch_size=n, num_classes=k, epochs=epochs)
    ids = torch.tensor([41, 3, 17, 0, 29, 8, 44, 12])
    state.levels[ids] = torch.tensor([0.0, 2.5, 6.0, 13.7, 21.0, 3.0, 40.2, 1.0])
    E = state.levels[ids].double().numpy() / 255
    before = state.state_dict()
    record = ExplorationRecord(ids, torch.from_numpy(attacked), torch.from_numpy(kept),
                               torch.from_numpy(grad_norm).float())
    tx, tx_adv, ty = (torch.from_numpy(a) for a in (x, x_adv, y))
    loss, metrics, new_state = defense.step(linear_model(W, b), tx, ty, Explored(tx_adv, record),
                                            state, ids=ids)

    rows = np.arange(n)
    ce = lambda z: -np.log(softmax(z)[rows, y])  # noqa: E731
    clean, robust = ce(x @ W.T + b).mean(), ce(x_adv @ W.T + b)[attacked].mean()
    assert abs(loss.item() - (clean + robust) / 2) / ((clean + robust) / 2) < 1e-5
    assert abs(metrics["natural_loss"] - clean) / clean < 1e-5

    distance = np.abs(x_adv - x).max(1)
    expected = margin_update_by_hand(E, attacked & kept, grad_norm.astype(np.float32), distance,
                                     epochs)
    margins = new_state.margins()
    assert np.allclose(margins[ids].numpy(), expected, rtol=1e-6, atol=1e-9)
    others = torch.ones(50, dtype=torch.bool)
    others[ids] = False
    assert torch.equal(margins[others], state.margins()[others])
    assert torch.equal(new_state.visited, ~others)
    assert all(torch.equal(v, before[key]) if torch.is_tensor(v) else v == before[key]
               for key, v in state.state_dict().items())  # step leaves its input state alone

    nothing = ExplorationRecord(ids, torch.zeros(n, dtype=torch.bool),
                                torch.zeros(n, dtype=torch.bool), torch.zeros(n))
    loss, _, empty = defense.step(linear_model(W, b), tx, ty, Explored(tx, nothing), state,
                                  ids=ids)
    assert abs(loss.item() - clean / 2) / clean < 1e-5  # no Flag1 example: L₁ = 0
    assert torch.equal(empty.margins()[ids], torch.zeros(n, dtype=torch.float64))


def test_step_refuses_a_batch_perturb_did_not_see(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    defense = smd()
    state = defense.init_state(num_examples=512, batch_size=8, num_classes=10, epochs=150)
    with pytest.raises(ValueError, match="exploration record"):
        defense.step(trained_mlp, x[:8], y[:8], x[:8], state, ids=torch.arange(8))
    x_adv = defense.perturb(trained_mlp, x[:8], y[:8], state, ids=torch.arange(8))
    with pytest.raises(ValueError, match="exploration record"):
        defense.step(trained_mlp, x[:8], y[:8], x_adv, state, ids=torch.arange(8, 16))


# --------------------------------------------------------------------------- state and training
def test_state_round_trip_and_id_indexing(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    ids = torch.randperm(512, generator=torch.Generator().manual_seed(2))[:32]
    x, y = x[ids], y[ids]  # a shuffled batch: row k is example ids[k]
    defense = smd()
    state = defense.init_state(num_examples=512, batch_size=32, num_classes=10, epochs=150)

    def advance(current):
        explored = defense.perturb(trained_mlp, x, y, current, ids=ids)
        return (*explored, defense.step(trained_mlp, x, y, explored, current, ids=ids)[2])

    x_adv, record, state = advance(state)
    expand = record.attacked & record.kept
    assert 0 < expand.sum() < 32
    margins = state.margins()[ids]
    distance = (x_adv - x).flatten(1).abs().amax(1).double()
    assert torch.allclose(margins[~expand], distance[~expand], atol=1e-7)
    assert bool((margins[expand] > 2 / 255).all())

    loaded = defense.init_state(num_examples=512, batch_size=32, num_classes=10, epochs=150)
    loaded.load_state_dict(saved_and_loaded(state.state_dict()))
    assert torch.equal(loaded.levels, state.levels)
    assert torch.equal(loaded.visited, state.visited)
    assert torch.equal(advance(loaded)[2].levels, advance(state)[2].levels)
    with pytest.raises(ValueError, match="512 margins"):
        SMDState.initial(100, 150, 1 / 255).load_state_dict(state.state_dict())


def test_train_epoch_on_mnist_changes_margins(mnist_test_slice):
    x, y = mnist_test_slice
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, image_size=28, hidden=32, layers=1,
                         mean=(0.1307,), std=(0.3081,))
    defense = create_defense("smd", attack=LINF)
    state = defense.init_state(num_examples=512, batch_size=32, num_classes=10, epochs=10)
    initial = state.margins().clone()
    order = torch.randperm(512, generator=torch.Generator().manual_seed(0))[:192]
    batches = [(x[i], y[i], i) for i in order.split(32)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        metrics, state = train_epoch(model, defense, batches, optimizer, state)
        assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["train_attacked_fraction"] > 0.3
    margins = state.margins()
    assert torch.equal(state.visited.nonzero().flatten(), order.sort().values)
    assert bool((margins[order] != initial[order]).any())
    assert torch.equal(margins[~state.visited], initial[~state.visited])
    assert bool((margins[order] > initial[order]).any())  # expanded
    assert bool((margins[order] < initial[order]).any())  # reset to the boundary distance
    export = export_margins(state, bins=10)
    assert torch.equal(export.ids, order.sort().values)
    assert torch.equal(export.margins, margins[export.ids])
    assert export.counts.sum().item() == 192 and len(export.edges) == 11
