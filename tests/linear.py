"""Float64 linear models f(x) = W x + b and the numpy pieces the closed-form tests share.

On a linear model every loss of the papers has a closed form, so the tests compute it by hand
in numpy from (W, b, x, x_adv, y) and compare it with the defense run on the same numbers.
"""

import io

import numpy as np
import torch


def linear_model(W: np.ndarray, b: np.ndarray) -> torch.nn.Linear:
    """A float64 ``nn.Linear`` holding exactly ``W`` (classes × inputs) and ``b``."""
    model = torch.nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W))
        model.bias.copy_(torch.from_numpy(b))
    return model


def linear_problem(seed=0, n=6, d=5, k=4, *, adversarial_radius=None):
    """Random W, b, inputs x in [0, 1]^d, 'adversarial' inputs and labels, and their model.

    x_adv is uniform in [0, 1]^d, or within ``adversarial_radius`` of x (L∞, clipped to
    [0, 1]). Returns ``(W, b, x, x_adv, y)`` in numpy, the model, and ``[x, x_adv, y]`` as
    tensors.
    """
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(k, d)), rng.normal(size=k)
    x = rng.uniform(size=(n, d))
    if adversarial_radius is None:
        x_adv = rng.uniform(size=(n, d))
    else:
        r = adversarial_radius
        x_adv = np.clip(x + rng.uniform(-r, r, size=(n, d)), 0, 1)
    y = rng.integers(0, k, size=n)
    return (W, b, x, x_adv, y), linear_model(W, b), [torch.from_numpy(a) for a in (x, x_adv, y)]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def relative_error(actual, expected):
    return abs(actual - expected) / abs(expected)


def saved_and_loaded(state_dict):
    """``state_dict`` written with ``torch.save`` and read back as a checkpoint is
    (``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
