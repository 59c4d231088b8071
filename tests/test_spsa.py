"""SPSA: exact answers on linear models, agreement with PGD on a real MNIST MLP, query
accounting, determinism without the global RNG, presets, argument checks and model mode."""

import time

import numpy as np
import pytest
import torch
from linear import linear_model
from torch import nn

from attacks.pgd import pgd
from attacks.spsa import SPSA_PRESETS, margin_loss, spsa, spsa_preset, spsa_with_stats

EPS = 0.05


def two_class_points(seed=0, d=20):
    """A 2-class float64 linear model and points at chosen L∞ distances from its boundary.

    With w = W[y] − W[1−y] and b_y − b_{1−y} = c, the margin at x is w·x + c and the smallest
    L∞ perturbation that flips it has size (w·x + c) / ‖w‖₁. Each point starts near 0.5 and
    is moved along ±sign(w) until its distance is ``fraction``·ε, so x ± ε stays inside [0, 1].
    """
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(2, d))
    w = W[0] - W[1]
    b = np.array([-w @ np.full(d, 0.5), 0.0])  # boundary through the centre of the cube
    fractions = np.array([0.3, 0.6, 0.8, 0.9, 1.15, 1.4, 2.0, 3.0] * 2)
    labels = np.repeat([0, 1], 8)
    xs = []
    for fraction, label in zip(fractions, labels, strict=True):
        sign = 1.0 if label == 0 else -1.0
        x0 = 0.5 + rng.uniform(-0.05, 0.05, size=d)
        shift = (fraction * EPS * np.abs(w).sum() - sign * (w @ x0 + b[0])) / np.abs(w).sum()
        xs.append(x0 + sign * shift * np.sign(w))
    return W, b, np.array(xs), labels, fractions


def linear_margin(W, b, x, y):
    """z_y − z_{1−y} of the 2-class linear model, in numpy."""
    z = x @ W.T + b
    return z[np.arange(len(y)), y] - z[np.arange(len(y)), 1 - y]


def test_linf_spsa_breaks_exactly_the_breakable_points_of_a_linear_model():
    W, b, x, y, fractions = two_class_points()
    breakable = fractions < 1
    assert x.min() > EPS and x.max() < 1 - EPS  # the [0, 1] box never binds
    # By hand: x − ε·sign(w_y) flips every breakable point; the ball's best is > 0 for the rest.
    w_y = (W[y] - W[1 - y])
    corner = x - EPS * np.sign(w_y)
    assert (linear_margin(W, b, x, y) > 0).all()
    assert (linear_margin(W, b, corner[breakable], y[breakable]) < 0).all()
    worst_case = linear_margin(W, b, x, y) - EPS * np.abs(w_y).sum(axis=1)
    assert (worst_case[~breakable] > 0).all()

    model = linear_model(W, b)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    x_adv = spsa(model, x_t, y_t, epsilon=EPS, steps=60, samples=32, delta=0.01, lr=0.01)
    margins = linear_margin(W, b, x_adv.numpy(), y)
    np.testing.assert_array_equal(margins < 0, breakable)
    assert (x_adv - x_t).abs().max() <= EPS + 1e-12
    assert not x_adv.requires_grad and x_adv.dtype == torch.float64


def test_query_accounting_and_early_stop_on_a_linear_model():
    W, b, x, y, fractions = two_class_points(seed=1)
    model = linear_model(W, b)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    y_t[0] = 1 - y_t[0]  # misclassified from the start: only the first evaluation is spent
    steps, samples = 30, 16
    full = 1 + steps * (samples + 1)
    _, queries = spsa_with_stats(model, x_t, y_t, epsilon=EPS, steps=steps, samples=samples,
                                 max_batch=64)
    assert queries.dtype == torch.long and queries.shape == (len(y),)
    assert queries[0] == 1
    unbreakable = torch.from_numpy(fractions >= 1)
    unbreakable[0] = False
    assert (queries[unbreakable] == full).all()
    breakable = ~unbreakable
    breakable[0] = False
    assert (queries[breakable] < full).all()  # frozen once misclassified
    assert ((queries[breakable] - 1) % (samples + 1) == 0).all()
    _, queries = spsa_with_stats(model, x_t, y_t, epsilon=EPS, steps=steps, samples=samples,
                                 early_stop=False)
    assert (queries == full).all()


def test_first_step_is_a_bias_corrected_adam_step():
    """After one bias-corrected Adam step m̂/√v̂ = g/|g|, so every coordinate moves by exactly
    lr, against the sign of the margin's gradient w_y wherever the estimate can resolve it."""
    W, b, x, y, _ = two_class_points(seed=2)
    model = linear_model(W, b)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    x_adv = spsa(model, x_t, y_t, epsilon=EPS, steps=1, samples=512, lr=0.01, early_stop=False)
    step = x_adv.numpy() - x
    np.testing.assert_allclose(np.abs(step), 0.01, rtol=1e-5)
    w_y = W[y] - W[1 - y]
    large = np.abs(w_y) >= np.median(np.abs(w_y))  # the estimate's error is ~‖w‖₂/16 each
    np.testing.assert_array_equal(np.sign(step)[large], -np.sign(w_y)[large])


class TurningValley(torch.nn.Module):
    """Two logits whose margin is c − u − a·u·mean(v), with u = x₀ − 0.5 and v = x₁.. − 0.5.

    At the clean point the margin's gradient is −1 along u and exactly 0 along v; the v
    directions only start to pay once u > 0. An attack must re-estimate the gradient at its
    current iterate to reach the corner (u, v) = (ε, ε), where the margin is c − ε − aε² < 0;
    one that keeps using the clean point's gradient stalls near c − ε > 0.
    """

    def __init__(self, c=0.11, a=40.0):
        super().__init__()
        self.c, self.a = c, a

    def forward(self, x):
        u, v = x[:, 0] - 0.5, x[:, 1:] - 0.5
        margin = self.c - u - self.a * u * v.mean(dim=1)
        return torch.stack([margin, torch.zeros_like(margin)], dim=1)


def test_gradient_is_estimated_at_the_current_iterate():
    model = TurningValley()
    x = torch.full((8, 9), 0.5, dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)
    assert model.c - EPS > 0 > model.c - EPS - model.a * EPS**2  # the corner breaks, u alone not
    x_adv = spsa(model, x, y, epsilon=EPS, steps=60, samples=32, delta=0.01, lr=0.01)
    with torch.no_grad():
        assert (model(x_adv)[:, 0] < 0).all()
    assert (x_adv - x).abs().max() <= EPS + 1e-12


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def smooth_model():
    """A small smooth MNIST classifier: 4×4 average pooling, one softplus layer of 64 units,
    trained for 3 epochs on 6,000 real images (about 84% clean accuracy on the test slice)."""
    from trainables.data import iterate_batches, load_dataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(49, 64), nn.Softplus(),
                          nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train = load_dataset("mnist", "train", subset=6000)
    for epoch in range(3):
        for x, y, _ in iterate_batches(train, 100, shuffle=True,
                                       generator=torch.Generator().manual_seed(epoch)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def test_spsa_matches_pgd_within_two_points_on_a_smooth_mnist_model(smooth_model,
                                                                     mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:200], y[:200]
    clean = accuracy(smooth_model, x, y)
    x_pgd = pgd(smooth_model, x, y, epsilon=0.1, steps=100, step_size=0.01,
                random_start="none")
    start = time.perf_counter()
    x_adv = spsa(smooth_model, x, y, epsilon=0.1, steps=60, samples=1024, delta=0.01, lr=0.03)
    seconds = time.perf_counter() - start
    pgd_accuracy, spsa_accuracy = accuracy(smooth_model, x_pgd, y), accuracy(smooth_model,
                                                                            x_adv, y)
    print(f"SPSA {seconds / len(y) * 1000:.1f} ms/example; robust accuracy clean {clean:.3f} "
          f"SPSA {spsa_accuracy:.3f} PGD-100 {pgd_accuracy:.3f}")
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert clean - pgd_accuracy > 0.4  # a real fight: PGD removes most of the accuracy
    assert abs(spsa_accuracy - pgd_accuracy) <= 0.02


def test_l2_spsa_stays_in_the_ball_and_the_box(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:32], y[:32]
    x_adv = spsa(trained_mlp, x, y, epsilon=1.5, steps=20, samples=64, lr=0.05, norm="l2",
                 random_start=True)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 1.5 + 1e-4
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(trained_mlp, x_adv, y) < accuracy(trained_mlp, x, y)


def test_same_seed_same_result_and_the_global_rng_is_untouched(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:16], y[:16]
    settings = dict(epsilon=0.1, steps=5, samples=32, random_start=True, early_stop=False)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    first = spsa(trained_mlp, x, y, generator=torch.Generator().manual_seed(7), **settings)
    assert torch.equal(torch.get_rng_state(), rng_before)
    second = spsa(trained_mlp, x, y, generator=torch.Generator().manual_seed(7), **settings)
    assert torch.equal(first, second)
    assert torch.equal(spsa(trained_mlp, x, y, seed=7, **settings), first)
    assert not torch.equal(spsa(trained_mlp, x, y, seed=8, **settings), first)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_presets_hold_the_papers_numbers():
    assert SPSA_PRESETS["lma-at"] == {"delta": 0.001, "samples": 100, "steps": 20, "lr": 0.01}
    for steps in (20, 50, 80):
        assert SPSA_PRESETS[f"he-{steps}"] == {"delta": 0.001, "samples": 128, "steps": steps,
                                               "lr": 0.01}
    assert SPSA_PRESETS["strong"] == {"delta": 0.01, "samples": 8192, "steps": 100, "lr": 0.01}
    preset = spsa_preset("he-50")
    preset["steps"] = 1
    assert SPSA_PRESETS["he-50"]["steps"] == 50
    with pytest.raises(ValueError, match="lma-at.*strong"):
        spsa_preset("he-100")


def test_lma_at_preset_runs(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:48], y[:48]
    start = time.perf_counter()
    x_adv = spsa(trained_mlp, x, y, epsilon=0.1, **spsa_preset("lma-at"))
    print(f"SPSA lma-at {(time.perf_counter() - start) / len(y) * 1000:.1f} ms/example")
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert accuracy(trained_mlp, x_adv, y) < accuracy(trained_mlp, x, y)


@pytest.mark.parametrize("bad, match", [
    ({"samples": 7}, "even"), ({"samples": 0}, "even"), ({"delta": 0.0}, "delta"),
    ({"epsilon": -0.1}, "epsilon"), ({"norm": "l1"}, "norm"), ({"max_batch": 1}, "max_batch"),
    ({"steps": -1}, "steps"), ({"lr": 0.0}, "lr"),
])
def test_bad_arguments_fail_clearly(bad, match):
    model = torch.nn.Linear(4, 3)
    x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        spsa(model, x, y, **{"epsilon": 0.1, "steps": 2, "samples": 4, **bad})


def test_labels_must_match_the_inputs():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="labels"):
        spsa(model, torch.rand(5, 4), torch.zeros(4, dtype=torch.long), epsilon=0.1)
    with pytest.raises(ValueError, match="labels"):
        spsa(model, torch.rand(5, 4), torch.zeros(5), epsilon=0.1)


class ModeRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.linear(x)


def test_model_is_attacked_in_eval_mode_and_its_mode_restored():
    model = ModeRecorder().train()
    x, y = torch.rand(6, 4), torch.arange(6) % 3
    spsa(model, x, y, epsilon=0.1, steps=3, samples=4, early_stop=False)
    assert model.training
    assert model.modes and not any(model.modes)


class Notch(torch.nn.Module):
    """One input u, margin z₀ − z₁ = −a + k₊·(u − u₀)⁺ + k₋·(u₀ − u)⁺: misclassified only in
    a notch around u₀ narrower than one Adam step, steeper on the right, so SPSA's first
    finite difference points right and its first step (exactly lr) lands left of the notch."""

    def __init__(self, u0=0.5, a=0.01, right=2.0, left=1.0):
        super().__init__()
        self.u0, self.a, self.right, self.left = u0, a, right, left

    def forward(self, x):
        u = x[:, 0]
        margin = (-self.a + self.right * (u - self.u0).clamp_min(0)
                  + self.left * (self.u0 - u).clamp_min(0))
        return torch.stack([margin, torch.zeros_like(margin)], dim=1)


def test_the_start_is_kept_when_no_later_iterate_is_as_low():
    model = Notch()
    x = torch.full((4, 1), 0.5, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    settings = dict(epsilon=0.2, samples=4, delta=0.001, lr=0.05, early_stop=False)
    assert (model(x)[:, 0] < 0).all()  # misclassified at the start only
    assert (model(x - 0.05)[:, 0] > 0).all()  # the first iterate is correctly classified
    for steps in (1, 10):  # the start is the unique lowest margin in the ball
        assert torch.equal(spsa(model, x, y, steps=steps, **settings), x)


def test_the_lowest_margin_iterate_is_kept_so_longer_runs_never_do_worse(trained_mlp,
                                                                           mnist_test_slice):
    """Without early stopping every iteration draws the same directions whatever the budget,
    so a run of k + 1 iterations extends the run of k: its returned margin can only go down."""
    x, y = mnist_test_slice
    x, y = x[:16], y[:16]
    settings = dict(epsilon=0.1, samples=32, lr=0.03, early_stop=False, seed=5)
    margins = []
    for steps in range(9):
        with torch.no_grad():
            margins.append(margin_loss(trained_mlp(spsa(trained_mlp, x, y, steps=steps,
                                                        **settings)), y))
    margins = torch.stack(margins)
    assert (margins[1:] <= margins[:-1]).all()
    assert (margins[-1] < margins[0]).all()  # and it does make progress


def test_settings_spsa_does_not_take_are_refused_when_the_attack_is_made():
    from attacks.suite import create_attack

    for spec in ("spsa:bpda=true", "spsa:eot_samples=4", "spsa:stepz=3"):
        with pytest.raises(ValueError, match="bad settings for attack 'spsa'"):
            create_attack(spec, epsilon=0.1)
    assert create_attack("spsa:steps=3,samples=32", epsilon=0.1).settings["steps"] == 3
