"""One functional PGD for training and evaluation (L∞ / L2; CE, CW-margin or any loss).

``pgd`` maximises a per-example loss inside the ε-ball ∩ [0, 1]. Gradients are taken with
respect to the input only (``torch.autograd.grad``), so parameters never accumulate ``.grad``.
The model runs in the mode asked for (eval by default, so BatchNorm statistics stay untouched)
and is returned to its previous mode afterwards. FGSM is ``pgd(steps=1, step_size=epsilon,
random_start="none")``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> per-example loss
NORMS = ("linf", "l2")
RANDOM_STARTS = ("uniform", "gaussian", "none")
MODEL_MODES = ("eval", "train", "keep")


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini–Wagner margin: largest wrong logit minus the true logit."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return wrong.max(dim=1).values - true


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "cw": cw_loss}


@contextmanager
def model_mode(model: nn.Module, mode: str):
    """Run with the model in ``mode`` ("eval", "train" or "keep"), then restore its mode."""
    if mode not in MODEL_MODES:
        raise ValueError(f"unknown model mode {mode!r}; known: {', '.join(MODEL_MODES)}")
    was_training = model.training
    if mode != "keep":
        model.train(mode == "train")
    try:
        yield model
    finally:
        model.train(was_training)


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """Projection onto {x' : ‖x' − x‖ ≤ ε} ∩ [0, 1]^d."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-epsilon, epsilon)
    else:
        delta = delta * (epsilon / _per_example_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start_point(x: torch.Tensor, epsilon: float, norm: str, kind: str,
                       generator: torch.Generator | None = None,
                       gaussian_std: float = 0.001) -> torch.Tensor:
    if kind == "none":
        return x.clone()
    if kind == "gaussian":
        noise = gaussian_std * torch.randn(x.shape, generator=generator, device=x.device)
    elif norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * epsilon
    else:  # uniform in the L2 ball: random direction, radius ε·u^(1/d)
        direction = torch.randn(x.shape, generator=generator, device=x.device)
        direction = direction / _per_example_norm(direction)
        d = x[0].numel()
        radius = torch.rand(x.shape[0], generator=generator, device=x.device) ** (1.0 / d)
        noise = direction * epsilon * radius.view(-1, *([1] * (x.dim() - 1)))
    return project(x + noise, x, epsilon, norm)


def _resolve_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown PGD loss {loss!r}; known: {', '.join(LOSSES)} or a callable")
    return LOSSES[loss]


def ascend(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
           epsilon: float, steps: int, step_size: float, norm: str = "linf",
           random_start: str = "uniform", generator: torch.Generator | None = None,
           gaussian_std: float = 0.001) -> torch.Tensor:
    """Projected steepest ascent on a scalar ``objective(x_adv)`` whose per-example parts are
    independent (a sum or mean of per-example terms), from ``random_start``. An objective that
    does not depend on ``x_adv`` (a defense that attacks none of these points) leaves the
    points where they started."""
    x_adv = random_start_point(x, epsilon, norm, random_start, generator, gaussian_std)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(objective(x_adv), x_adv, allow_unused=True,
                                          materialize_grads=True)
        with torch.no_grad():
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / _per_example_norm(grad)
            x_adv = project(x_adv + step_size * step, x, epsilon, norm)
    return x_adv.detach()


def _single_run(model, x, y, loss_fn, epsilon, steps, step_size, norm, start, generator,
                gaussian_std):
    return ascend(lambda x_adv: loss_fn(model(x_adv), y).sum(), x, epsilon=epsilon,
                  steps=steps, step_size=step_size, norm=norm, random_start=start,
                  generator=generator, gaussian_std=gaussian_std)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, steps: int,
        step_size: float, norm: str = "linf", loss: str | LossFn = "ce",
        random_start: str | bool | None = "uniform", restarts: int = 1, mode: str = "eval",
        generator: torch.Generator | None = None, gaussian_std: float = 0.001) -> torch.Tensor:
    """Projected gradient ascent on ``loss`` inside the ``norm`` ball of radius ``epsilon``.

    ``random_start``: "uniform" (in the ball), "gaussian" (``gaussian_std``·N(0, 1), as TRADES
    and LMA-AT), or "none"; ``True``/``False`` mean "uniform"/"none", and ``None`` (what the
    attack spec ``random_start=none`` parses to) means "none". With ``restarts`` > 1 each
    example keeps its strongest run: a misclassified point beats a correctly classified one, and
    a higher final loss breaks ties. Returns a detached tensor shaped like ``x``.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    if random_start is None or isinstance(random_start, bool):
        random_start = "uniform" if random_start else "none"
    if random_start not in RANDOM_STARTS:
        raise ValueError(f"unknown random start {random_start!r}; known: {RANDOM_STARTS}")
    if epsilon < 0 or steps < 0 or restarts < 1:
        raise ValueError("pgd needs epsilon >= 0, steps >= 0 and restarts >= 1")
    loss_fn = _resolve_loss(loss)
    x, y = x.detach(), y.detach()
    with model_mode(model, mode), torch.enable_grad():
        best = _single_run(model, x, y, loss_fn, epsilon, steps, step_size, norm, random_start,
                           generator, gaussian_std)
        if restarts == 1:
            return best
        best_score = _strength(model, best, y, loss_fn)
        for _ in range(restarts - 1):
            candidate = _single_run(model, x, y, loss_fn, epsilon, steps, step_size, norm,
                                    random_start, generator, gaussian_std)
            score = _strength(model, candidate, y, loss_fn)
            better = (score[0] > best_score[0]) | ((score[0] == best_score[0])
                                                   & (score[1] > best_score[1]))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, best)
            best_score = (torch.where(better, score[0], best_score[0]),
                          torch.where(better, score[1], best_score[1]))
        return best


@torch.no_grad()
def _strength(model, x_adv, y, loss_fn):
    logits = model(x_adv)
    return (logits.argmax(1) != y).float(), loss_fn(logits, y)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
         norm: str = "linf", mode: str = "eval") -> torch.Tensor:
    """Fast gradient sign method: one full-size PGD step from the clean point."""
    return pgd(model, x, y, epsilon=epsilon, steps=1, step_size=epsilon, norm=norm,
               random_start="none", mode=mode)
