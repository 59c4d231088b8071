"""Margin diagnostics: effective margin (EMR Eq. 3) and the Lipschitz margin bound (AMR Thm 3).

* ``effective_margin``: m̃_i = min_{j≠y_i} (f_y(x_i) − f_j(x_i)) / ‖∇ₓf_y(x_i) − ∇ₓf_j(x_i)‖₂,
  the distance to the decision boundary of the model's local linearisation at x_i; positive
  exactly when x_i is classified correctly. The EMR paper reports its mean ± std over the
  correctly classified examples (``effective_margin_summary``).
* ``amr_margin_lower_bound``: d(x) ≥ min(min_{k≠ŷ} (f_ŷ(x) − f_k(x)) / L_x^k, r), where L_x^k is
  estimated, as in the AMR paper (Sec. 5.1, Appendix), by the largest ‖∇(f_ŷ − f_k)‖ over x and
  random points of the L2 ball B(x, r). The estimate is exact for a linear model; for others it
  is as good as the sampled maximum. ``amr_margin_summary`` gives the paper's average margin
  (mean distance) and minimum margin (min of the signed margin: −d for misclassified points).
* ``margin_histogram``: counts and edges of per-example margins (SMD exports them).

All gradients are taken with respect to the inputs only, in eval mode (BatchNorm uses its
running statistics and is not updated), in batches; the model's mode is restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from attacks.pgd import model_mode

_TINY = 1e-12


def _pairwise_margins(model: nn.Module, x: torch.Tensor, label: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, numerators f_label − f_j, gradient norms ‖∇ₓ(f_label − f_j)‖), shapes (n, K)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    label_logit = logits.gather(1, label[:, None])
    differences = label_logit - logits
    norms = torch.empty_like(differences)
    for j in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(differences[:, j].sum(), x, retain_graph=True)
        norms[:, j] = grad.flatten(1).norm(dim=1)
    return logits.detach(), differences.detach(), norms


def _other_classes_min(values: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    own = torch.nn.functional.one_hot(label, values.shape[1]).bool()
    return values.masked_fill(own, math.inf).min(dim=1).values


def _effective_margin_and_correct(model, x, y, batch_size):
    margins, correct = [], []
    with model_mode(model, "eval"), torch.enable_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            logits, numerators, norms = _pairwise_margins(model, xb, yb)
            margins.append(_other_classes_min(numerators / norms.clamp_min(_TINY), yb))
            correct.append(logits.argmax(1) == yb)
    return torch.cat(margins), torch.cat(correct)


def effective_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     batch_size: int = 256) -> torch.Tensor:
    """Per-example effective margin m̃_i (EMR Eq. 3), exact (one input-gradient per class)."""
    return _effective_margin_and_correct(model, x, y, batch_size)[0]


def effective_margin_summary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                             batch_size: int = 256) -> dict[str, float]:
    """Mean and (population) std of m̃ over the correctly classified examples, as EMR reports."""
    margins, correct = _effective_margin_and_correct(model, x, y, batch_size)
    kept = margins[correct].double()
    count = int(kept.numel())
    mean = kept.mean().item() if count else math.nan
    std = kept.std(correction=0).item() if count else math.nan
    return {"effective_margin_mean": mean, "effective_margin_std": std,
            "effective_margin_count": count, "n": int(len(y))}


def _ball_points(x: torch.Tensor, radius: float, count: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """``count`` uniform points of the L2 ball B(x_i, radius) per example: (n·count, ...)."""
    n, shape = x.shape[0], x.shape[1:]
    d = x[0].numel()
    draw = dict(generator=generator, dtype=x.dtype,
                device=generator.device if generator is not None else x.device)
    direction = torch.randn((n, count, d), **draw).to(x.device)
    direction = direction / direction.norm(dim=2, keepdim=True).clamp_min(_TINY)
    scale = torch.rand((n, count, 1), **draw).to(x.device) ** (1.0 / d)
    points = x.reshape(n, 1, d) + radius * scale * direction
    return points.reshape(n * count, *shape)


def amr_margin_lower_bound(model: nn.Module, x: torch.Tensor, *, radius: float = 5.0,
                           samples: int = 100, batch_size: int = 64, points_per_pass: int = 1024,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example lower bound on the L2 distance to the decision boundary (AMR Theorem 3).

    ŷ is the prediction at x. L_x^k is the largest ‖∇(f_ŷ − f_k)‖ over x itself and
    ``samples`` uniform points of B(x, ``radius``) (the paper used r = 5 and 1024×50 points;
    the ball is not clipped to the input box, as the theorem is stated on R^d).
    """
    if radius <= 0 or samples < 0:
        raise ValueError("amr_margin_lower_bound needs radius > 0 and samples >= 0")
    bounds = []
    with model_mode(model, "eval"), torch.enable_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].detach()
            with torch.no_grad():
                predicted = model(xb).argmax(1)
            _, numerators, lipschitz = _pairwise_margins(model, xb, predicted)
            per_pass = max(1, points_per_pass // len(xb))
            for done in range(0, samples, per_pass):
                count = min(per_pass, samples - done)
                points = _ball_points(xb, radius, count, generator)
                _, _, norms = _pairwise_margins(model, points, predicted.repeat_interleave(count))
                lipschitz = torch.maximum(lipschitz, norms.view(len(xb), count, -1).amax(1))
            ratio = numerators / lipschitz.clamp_min(_TINY)
            bounds.append(_other_classes_min(ratio, predicted).clamp(0.0, radius))
    return torch.cat(bounds)


def amr_margin_summary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs
                       ) -> dict[str, float]:
    """AMR's average margin (mean distance bound) and minimum margin (min signed margin).

    The signed margin is +d for correctly classified examples and −d otherwise (AMR Eq. 6);
    ``kwargs`` go to :func:`amr_margin_lower_bound`.
    """
    distance = amr_margin_lower_bound(model, x, **kwargs)
    with model_mode(model, "eval"), torch.no_grad():
        batch_size = kwargs.get("batch_size", 64)
        predicted = torch.cat([model(x[i:i + batch_size]).argmax(1)
                               for i in range(0, len(x), batch_size)])
    signed = torch.where(predicted == y, distance, -distance)
    return {"average_margin": distance.double().mean().item(),
            "minimum_margin": signed.min().item(), "n": int(len(y))}


def margin_histogram(margins: torch.Tensor | Sequence[float], bins: int | Sequence[float] = 20,
                     *, range: tuple[float, float] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (int64) and edges (float64, len = bins + 1) of finite per-example margins.

    With an explicit ``range`` (or explicit edges) values outside it are counted in the first
    or last bin, so histograms of successive epochs share edges and every example is counted.
    """
    values = torch.as_tensor(margins, dtype=torch.float64).flatten().cpu()
    values = values[torch.isfinite(values)]
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if range is None:
            low, high = (values.min().item(), values.max().item()) if len(values) else (0.0, 1.0)
            if low == high:
                low, high = low - 0.5, high + 0.5
        else:
            low, high = range
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    else:
        edges = torch.as_tensor(bins, dtype=torch.float64)
        if edges.dim() != 1 or len(edges) < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("explicit bin edges must be a strictly increasing 1-D sequence")
    index = torch.bucketize(values, edges[1:-1], right=True)  # bins are [e_k, e_{k+1})
    counts = torch.bincount(index, minlength=len(edges) - 1)
    return counts, edges
