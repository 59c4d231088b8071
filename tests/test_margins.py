"""Margin diagnostics against closed-form distances (linear and piecewise-linear models)."""

import numpy as np
import pytest
import torch
from torch import nn

from attacks.margins import (
    amr_margin_lower_bound,
    amr_margin_summary,
    effective_margin,
    effective_margin_summary,
    margin_histogram,
)
from attacks.pgd import pgd


def linear(seed=0, n=40, d=6, k=4):
    rng = np.random.default_rng(seed)
    W, b, x = rng.normal(size=(k, d)), rng.normal(size=k), rng.uniform(size=(n, d))
    y = rng.integers(0, k, size=n)
    model = nn.Linear(d, k).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W))
        model.bias.copy_(torch.from_numpy(b))
    return (W, b, x, y), model, torch.from_numpy(x), torch.from_numpy(y)


def pairwise_distance(W, b, x, label):
    """Signed distance of each x_i to the hyperplanes f_label = f_j; min over j ≠ label."""
    out = np.empty(len(x))
    for i, (xi, c) in enumerate(zip(x, label, strict=True)):
        out[i] = min(((W[c] - W[j]) @ xi + b[c] - b[j]) / np.linalg.norm(W[c] - W[j])
                     for j in range(len(b)) if j != c)
    return out


def test_effective_margin_of_a_linear_model_is_the_distance_to_the_boundary():
    (W, b, x, y), model, tx, ty = linear()
    expected = pairwise_distance(W, b, x, y)
    margins = effective_margin(model, tx, ty, batch_size=16).numpy()
    assert np.allclose(margins, expected, rtol=1e-10)
    correct = (x @ W.T + b).argmax(1) == y
    assert 0 < correct.sum() < len(y)
    assert ((margins > 0) == correct).all()  # positive exactly when correctly classified
    # the textbook closed form on the correctly classified examples: |·| / ‖w_y − w_j‖
    closed = [min(abs((W[y[i]] - W[j]) @ x[i] + b[y[i]] - b[j]) / np.linalg.norm(W[y[i]] - W[j])
                  for j in range(len(b)) if j != y[i]) for i in np.flatnonzero(correct)]
    summary = effective_margin_summary(model, tx, ty, batch_size=16)
    assert abs(summary["effective_margin_mean"] - np.mean(closed)) <= 1e-5 * np.mean(closed)
    assert abs(summary["effective_margin_std"] - np.std(closed)) <= 1e-5 * np.std(closed)
    assert summary["effective_margin_count"] == correct.sum() and summary["n"] == len(y)


def test_effective_margin_uses_the_local_weights_of_a_relu_net():
    rng = np.random.default_rng(1)
    d, h, k, n = 5, 12, 3, 20
    W1, b1, W2, b2 = (rng.normal(size=(h, d)), rng.normal(size=h), rng.normal(size=(k, h)),
                      rng.normal(size=k))
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k)).double()
    with torch.no_grad():
        for layer, (w, bias) in zip((model[0], model[2]), ((W1, b1), (W2, b2)), strict=True):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(bias))
    x, y = rng.uniform(size=(n, d)), rng.integers(0, k, size=n)
    pre = x @ W1.T + b1
    logits = np.maximum(pre, 0) @ W2.T + b2
    expected = np.empty(n)
    for i in range(n):
        local = W2 @ np.diag((pre[i] > 0).astype(float)) @ W1  # W(x_i)
        expected[i] = min((logits[i, y[i]] - logits[i, j]) / np.linalg.norm(local[y[i]] - local[j])
                          for j in range(k) if j != y[i])
    model.train()
    margins = effective_margin(model, torch.from_numpy(x), torch.from_numpy(y)).numpy()
    assert np.allclose(margins, expected, rtol=1e-10)
    assert model.training  # the mode is restored


@pytest.mark.parametrize("radius", [0.2, 10.0])
def test_amr_bound_is_exact_for_a_linear_model(radius):
    (W, b, x, y), model, tx, ty = linear(seed=2)
    predicted = (x @ W.T + b).argmax(1)
    distance = pairwise_distance(W, b, x, predicted)  # ≥ 0: distance to the predicted region
    expected = np.minimum(distance, radius)
    bound = amr_margin_lower_bound(model, tx, radius=radius, samples=3, batch_size=16,
                                   generator=torch.Generator().manual_seed(0)).numpy()
    assert np.allclose(bound, expected, rtol=1e-10)
    summary = amr_margin_summary(model, tx, ty, radius=radius, samples=3, batch_size=16)
    signed = np.where(predicted == y, expected, -expected)
    assert abs(summary["average_margin"] - expected.mean()) <= 1e-5 * expected.mean()
    assert abs(summary["minimum_margin"] - signed.min()) <= 1e-5 * abs(signed.min())
    assert summary["n"] == len(y)


def test_amr_bound_never_exceeds_a_found_adversarial_distance(trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice
    x, y = x[:32], y[:32]
    radius = 3.0
    bound = amr_margin_lower_bound(trained_mlp, x, radius=radius, samples=32,
                                   generator=torch.Generator().manual_seed(0))
    assert ((bound >= 0) & (bound <= radius)).all()
    assert (bound > 0).float().mean() > 0.8
    with torch.no_grad():
        predicted = trained_mlp(x).argmax(1)
    found = torch.full((len(x),), float("inf"))
    for epsilon in np.arange(1, 31) / 10:  # fine enough that x's gradient alone overshoots
        x_adv = pgd(trained_mlp, x, predicted, epsilon=float(epsilon), steps=10,
                    step_size=float(epsilon) / 4, norm="l2", random_start="none")
        with torch.no_grad():
            flipped = trained_mlp(x_adv).argmax(1) != predicted
        distance = (x_adv - x).flatten(1).norm(dim=1)
        found = torch.where(flipped, torch.minimum(found, distance), found)
    assert torch.isfinite(found).sum() >= 24  # the attack flips most predictions
    assert (bound <= found + 1e-5).all()


def test_histogram_counts_every_example():
    margins = torch.tensor([0.1, 0.5, 0.5, 2.0, -1.0, 3.0, float("nan")])
    counts, edges = margin_histogram(margins, bins=4)
    assert counts.sum() == 6 and len(edges) == 5  # NaN is dropped
    assert edges[0] == -1.0 and edges[-1] == 3.0
    np_counts, _ = np.histogram(margins.numpy()[:-1], bins=4)
    assert counts.tolist() == np_counts.tolist()
    counts, edges = margin_histogram(margins[:-1], bins=2, range=(0.0, 1.0))
    assert counts.tolist() == [2, 4]  # out-of-range values land in the end bins
    counts, _ = margin_histogram([0.0, 0.25, 1.0], bins=[0.0, 0.5, 1.0])
    assert counts.tolist() == [2, 1]
    with pytest.raises(ValueError):
        margin_histogram(margins, bins=[1.0, 0.0])
