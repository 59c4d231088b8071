"""SPSA: a gradient-free attack that only queries the model's logits (Uesato et al., 2018).

SPSA minimises the margin ``z_y − max_{j≠y} z_j`` (negative once the point is misclassified)
using forward passes only, so it still works when gradients are masked, obfuscated or
non-existent; this is why the leaderboard runs it next to PGD and AutoAttack. Each iteration
estimates the gradient by finite differences along random Rademacher directions
``v ∈ {−1, +1}^d`` in antithetic pairs,

    g = mean_v [(f(x + δv) − f(x − δv)) / (2δ) · v]      (for Rademacher v, v⁻¹ = v),

takes one Adam step on the perturbation with that estimate and projects back onto the
ε-ball ∩ [0, 1]. ``samples`` counts model evaluations per iteration (``samples / 2`` pairs).

Every example keeps its lowest-margin iterate, the starting point included (an iterate that
was misclassified and then left still counts); with ``early_stop`` an example is frozen as soon
as it is misclassified, so no further queries are spent on it. All randomness comes from an
explicit ``torch.Generator``: the global torch RNG is never touched. With ``per_point`` each
example draws from its own generator (:func:`attacks.streams.point_generators`) and the model
sees no batch under :data:`attacks.streams.MIN_ROWS` rows, so an example's result does not
depend on the other examples attacked with it (what a cascade of attacks relies on).
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.pgd import NORMS, cw_loss, model_mode, project, random_start_point
from attacks.streams import padded_forward, point_generators

ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8

# Settings used in the papers this service reproduces; ``spsa(**spsa_preset(name), ...)``.
SPSA_PRESETS: dict[str, dict] = {
    # LMA-AT: perturbation 0.001, 100 samples, 20 iterations, lr 0.01.
    "lma-at": {"delta": 0.001, "samples": 100, "steps": 20, "lr": 0.01},
    # Hypersphere Embedding: 128 samples, perturbation 0.001, 20 / 50 / 80 iterations.
    "he-20": {"delta": 0.001, "samples": 128, "steps": 20, "lr": 0.01},
    "he-50": {"delta": 0.001, "samples": 128, "steps": 50, "lr": 0.01},
    "he-80": {"delta": 0.001, "samples": 128, "steps": 80, "lr": 0.01},
    # The strong setting of Uesato et al.: batch 8192, δ = 0.01, lr 0.01, 100 iterations.
    "strong": {"delta": 0.01, "samples": 8192, "steps": 100, "lr": 0.01},
}


def spsa_preset(name: str) -> dict:
    """A copy of the keyword arguments of preset ``name``; unknown names list the known ones."""
    if name not in SPSA_PRESETS:
        raise ValueError(f"unknown SPSA preset {name!r}; known: {', '.join(SPSA_PRESETS)}")
    return dict(SPSA_PRESETS[name])


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y − max_{j≠y} z_j`` per example: the quantity SPSA minimises (< 0: misclassified)."""
    return -cw_loss(logits, y)


def _validate(x, y, epsilon, steps, samples, delta, lr, norm, max_batch):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    if epsilon < 0:
        raise ValueError(f"spsa needs epsilon >= 0, got {epsilon}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"spsa needs an integer steps >= 0, got {steps!r}")
    if not isinstance(samples, int) or samples < 2 or samples % 2:
        raise ValueError(f"spsa needs an even integer samples >= 2 (antithetic pairs), "
                         f"got {samples!r}")
    if not delta > 0:
        raise ValueError(f"spsa needs delta > 0, got {delta}")
    if not lr > 0:
        raise ValueError(f"spsa needs lr > 0, got {lr}")
    if not isinstance(max_batch, int) or max_batch < 2:
        raise ValueError(f"spsa needs an integer max_batch >= 2 (one pair), got {max_batch!r}")
    if not x.is_floating_point():
        raise ValueError(f"spsa needs floating-point inputs, got {x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ValueError(f"spsa needs integer labels of shape ({x.shape[0]},), "
                         f"got {tuple(y.shape)} {y.dtype}")


def _broadcast(per_example: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_example.view(-1, *([1] * (like.dim() - 1)))


def _gradient_estimate(model, x, y, delta, pairs, max_batch, generator):
    """Antithetic Rademacher finite-difference estimate of ∇ₓ margin, per example of ``x``."""
    grad = torch.zeros_like(x)
    owners = torch.arange(x.shape[0], device=x.device).repeat_interleave(pairs)
    chunk = max_batch // 2  # two evaluations per pair
    for start in range(0, owners.numel(), chunk):
        owner = owners[start:start + chunk]
        v = torch.randint(0, 2, (owner.numel(), *x.shape[1:]), generator=generator,
                          device=x.device).to(x.dtype).mul_(2).sub_(1)
        centre = x[owner]
        probes = torch.empty((2 * owner.numel(), *x.shape[1:]), dtype=x.dtype, device=x.device)
        torch.add(centre, v, alpha=delta, out=probes[:owner.numel()])
        torch.sub(centre, v, alpha=delta, out=probes[owner.numel():])
        losses = margin_loss(model(probes), y[owner].repeat(2))
        plus, minus = losses.chunk(2)
        grad.index_add_(0, owner, _broadcast((plus - minus) / (2 * delta), v) * v)
    return grad / pairs


def _point_gradient_estimate(model, x, y, delta, pairs, max_batch, generators):
    """As :func:`_gradient_estimate`, each example's directions drawn from its own generator in
    blocks of a fixed size and summed block by block: the estimate of an example is the same
    whichever examples share its model calls."""
    grad = torch.zeros_like(x)
    chunk = max_batch // 2
    blocks = [(j, min(chunk, pairs - k)) for j in range(x.shape[0]) for k in range(0, pairs, chunk)]
    group: list[tuple[int, int]] = []
    for index, block in enumerate(blocks):
        group.append(block)
        following = blocks[index + 1][1] if index + 1 < len(blocks) else None
        if following is not None and sum(count for _, count in group) + following <= chunk:
            continue
        directions = [torch.randint(0, 2, (count, *x.shape[1:]), generator=generators[j],
                                    device=x.device).to(x.dtype).mul_(2).sub_(1)
                      for j, count in group]
        owners = torch.cat([torch.full((count,), j, device=x.device) for j, count in group])
        v, centre = torch.cat(directions), x[owners]
        probes = torch.cat([centre + delta * v, centre - delta * v])
        plus, minus = margin_loss(padded_forward(model, probes), y[owners].repeat(2)).chunk(2)
        slope = (plus - minus) / (2 * delta)
        offset = 0
        for (j, count), direction in zip(group, directions, strict=True):
            grad[j] += (_broadcast(slope[offset:offset + count], direction) * direction).sum(0)
            offset += count
        group = []
    return grad / pairs


def _point_start(x, epsilon, norm, generators):
    """A uniform random start in the ball (as :func:`attacks.pgd.random_start_point`), each
    example's noise from its own generator."""
    shape, device = x.shape[1:], x.device
    if norm == "linf":
        noise = torch.stack([(torch.rand(shape, generator=g, device=device) * 2 - 1) * epsilon
                             for g in generators])
    else:
        direction = torch.stack([torch.randn(shape, generator=g, device=device)
                                 for g in generators])
        radius = torch.stack([torch.rand((), generator=g, device=device) for g in generators])
        direction = direction / _broadcast(direction.flatten(1).norm(dim=1).clamp_min(1e-12),
                                           direction)
        noise = direction * epsilon * _broadcast(radius ** (1.0 / x[0].numel()), direction)
    return project(x + noise.to(x.dtype), x, epsilon, norm)


def spsa_with_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                    steps: int = 100, samples: int = 8192, delta: float = 0.01,
                    lr: float = 0.01, norm: str = "linf", random_start: bool = False,
                    early_stop: bool = True, max_batch: int = 4096,
                    generator: torch.Generator | None = None, seed: int = 0,
                    per_point: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SPSA as :func:`spsa`, also returning the model evaluations spent on each example.

    An example costs one evaluation at its starting point, then per iteration it is active
    ``samples`` evaluations for the gradient estimate plus one at the new iterate. Returns
    ``(x_adv, queries)`` with ``queries`` an int64 tensor of shape ``(N,)``.
    """
    _validate(x, y, epsilon, steps, samples, delta, lr, norm, max_batch)
    if per_point and generator is not None:
        raise ValueError("spsa draws per point from seed; it takes no generator then")
    if generator is None and not per_point:
        generator = torch.Generator(device=x.device).manual_seed(seed)
    x, y = x.detach(), y.detach()
    streams = point_generators(x, seed) if per_point else None
    forward = (lambda t: padded_forward(model, t)) if per_point else model
    queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    corrections = [1 - beta ** torch.arange(steps + 1, dtype=x.dtype, device=x.device)
                   for beta in (ADAM_BETA1, ADAM_BETA2)]  # by step count, looked up per example
    with model_mode(model, "eval"), torch.no_grad():
        if per_point and random_start:
            start = _point_start(x, epsilon, norm, streams)
        else:
            start = random_start_point(x, epsilon, norm, "uniform" if random_start else "none",
                                       generator)
        perturbation = start - x
        best, best_loss = start.clone(), margin_loss(forward(start), y)
        queries += 1
        first, second = torch.zeros_like(x), torch.zeros_like(x)
        adam_steps = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        frozen = (best_loss < 0) if early_stop else torch.zeros_like(best_loss, dtype=torch.bool)
        for _ in range(steps):
            active = (~frozen).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            x_a, y_a = x[active], y[active]
            if per_point:
                grad = _point_gradient_estimate(model, x_a + perturbation[active], y_a, delta,
                                                samples // 2, max_batch,
                                                [streams[i] for i in active.tolist()])
            else:
                grad = _gradient_estimate(model, x_a + perturbation[active], y_a, delta,
                                          samples // 2, max_batch, generator)
            # Adam with per-example state: frozen examples keep their moments and step count.
            m = first[active].mul_(ADAM_BETA1).add_(grad, alpha=1 - ADAM_BETA1)
            s = second[active].mul_(ADAM_BETA2).addcmul_(grad, grad, value=1 - ADAM_BETA2)
            t = adam_steps[active] + 1
            m_hat = m / _broadcast(corrections[0][t.long()], m)
            s_hat = s / _broadcast(corrections[1][t.long()], s)
            step = lr * m_hat / (s_hat.sqrt() + ADAM_EPS)
            candidate = project(x_a + perturbation[active] - step, x_a, epsilon, norm)
            first[active], second[active], adam_steps[active] = m, s, t
            perturbation[active] = candidate - x_a
            loss = margin_loss(forward(candidate), y_a)
            queries[active] += samples + 1
            improved = loss < best_loss[active]
            best[active[improved]] = candidate[improved]
            best_loss[active] = torch.minimum(loss, best_loss[active])
            if early_stop:
                frozen[active] = loss < 0
    return best, queries


def spsa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
         steps: int = 100, samples: int = 8192, delta: float = 0.01, lr: float = 0.01,
         norm: str = "linf", random_start: bool = False, early_stop: bool = True,
         max_batch: int = 4096, generator: torch.Generator | None = None,
         seed: int = 0, per_point: bool = False) -> torch.Tensor:
    """Untargeted SPSA inside the ``norm`` ball of radius ``epsilon`` ∩ [0, 1].

    ``samples`` model evaluations (``samples / 2`` antithetic ±v pairs) estimate the gradient
    per iteration, evaluated in chunks of at most ``max_batch`` inputs; ``delta`` is the
    finite-difference step and ``lr`` Adam's learning rate on the perturbation. Random draws
    come from ``generator`` (or a fresh one seeded with ``seed``); with ``per_point``, from one
    generator per example seeded with ``seed`` and the example's values, so that an example's
    result does not depend on the others in ``x``. The model is queried in eval mode and
    returned to its previous mode. Returns the detached lowest-margin iterate of each example,
    shaped like ``x``.
    """
    x_adv, _ = spsa_with_stats(model, x, y, epsilon=epsilon, steps=steps, samples=samples,
                               delta=delta, lr=lr, norm=norm, random_start=random_start,
                               early_stop=early_stop, max_batch=max_batch,
                               generator=generator, seed=seed, per_point=per_point)
    return x_adv
