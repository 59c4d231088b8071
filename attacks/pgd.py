"""One functional PGD for training and evaluation (L∞ / L2; CE, CW-margin or any loss).

``pgd`` maximises a per-example loss inside the ε-ball ∩ [0, 1]. Gradients are taken with
respect to the input only (``torch.autograd.grad``), so parameters never accumulate ``.grad``.
The model runs in the mode asked for (eval by default, so BatchNorm statistics stay untouched)
and is returned to its previous mode afterwards. FGSM is ``pgd(steps=1, step_size=epsilon,
random_start="none")``.

Training uses the last iterate (``keep="last"``, each defense's paper); evaluation keeps each
example's strongest iterate (``keep="best"``), so an ascent that crosses the decision boundary
and comes back still counts the example as broken. ``eot_samples`` averages the gradient over
several forward passes of a randomised model (Expectation over Transformation, Athalye et al.
2018, §4.1).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> per-example loss
Verdict = tuple[torch.Tensor, torch.Tensor]  # per example: (misclassified, loss), detached
Judge = Callable[[torch.Tensor], Verdict]  # x_adv -> its verdict
Step = Callable[[torch.Tensor], tuple[torch.Tensor, Verdict | None]]  # x_adv -> (∇, verdict)
KEEPS = ("last", "best")
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


# the mode an "eval" request means inside ``training_attack_mode`` (None: eval)
_TRAINING_ATTACK_MODE: ContextVar[str | None] = ContextVar("training_attack_mode", default=None)


@contextmanager
def training_attack_mode(mode: str):
    """Within this block, a model asked to run in eval mode runs in ``mode`` instead: the
    training engine wraps a defense's inner maximisation in it, so that the attack runs with
    BatchNorm in train mode when asked (Pang et al. 2021, "Bag of Tricks for Adversarial
    Training", Sec. 4, BN mode when crafting adversarial examples)."""
    if mode not in ("eval", "train"):
        raise ValueError(f"the training attack runs in eval or train mode, got {mode!r}")
    token = _TRAINING_ATTACK_MODE.set(mode)
    try:
        yield
    finally:
        _TRAINING_ATTACK_MODE.reset(token)


@contextmanager
def model_mode(model: nn.Module, mode: str):
    """Run with the model in ``mode`` ("eval", "train" or "keep"), then restore its mode."""
    if mode not in MODEL_MODES:
        raise ValueError(f"unknown model mode {mode!r}; known: {', '.join(MODEL_MODES)}")
    if mode == "eval":
        mode = _TRAINING_ATTACK_MODE.get() or "eval"
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


def stronger(new: Verdict, old: Verdict) -> torch.Tensor:
    """Per example, whether verdict ``new`` beats ``old``: a misclassified point beats a
    correctly classified one, and a higher loss breaks ties (strictly, so ties keep ``old``)."""
    return (new[0] & ~old[0]) | ((new[0] == old[0]) & (new[1] > old[1]))


def keep_stronger(best: tuple[torch.Tensor, Verdict] | None, x_adv: torch.Tensor,
                  verdict: Verdict) -> tuple[torch.Tensor, Verdict]:
    """The per-example stronger of the kept ``best = (point, verdict)`` and ``x_adv``."""
    if best is None:
        return x_adv, verdict
    kept, old = best
    better = stronger(verdict, old)
    return (torch.where(better.view(-1, *([1] * (x_adv.dim() - 1))), x_adv, kept),
            (torch.where(better, verdict[0], old[0]), torch.where(better, verdict[1], old[1])))


def prediction_judge(model: nn.Module, y: torch.Tensor, loss: str | LossFn = "cw") -> Judge:
    """A judge by the model's prediction: misclassified when ``argmax ≠ y``, ties broken by
    ``loss`` (the CW margin by default), one forward pass per judged batch."""
    loss_fn = _resolve_loss(loss)

    @torch.no_grad()
    def judge(x_adv: torch.Tensor) -> Verdict:
        logits = model(x_adv)
        return logits.argmax(1) != y, loss_fn(logits, y)

    return judge


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` (sign for L∞, normalised for L2)."""
    return grad.sign() if norm == "linf" else grad / _per_example_norm(grad)


def _ascent(step: Step, x: torch.Tensor, x_adv: torch.Tensor, *, epsilon: float, steps: int,
            step_size: float, norm: str,
            judge: Judge | None) -> tuple[torch.Tensor, Verdict | None]:
    """``steps`` projected ascent steps from ``x_adv``. When ``step`` returns verdicts and a
    final ``judge`` is given, the per-example strongest iterate (start, every step and the
    final point) is returned with its verdict; otherwise the last iterate and ``None``."""
    best = None
    for _ in range(steps):
        grad, verdict = step(x_adv)
        with torch.no_grad():
            if verdict is not None:
                best = keep_stronger(best, x_adv, verdict)
            x_adv = project(x_adv + step_size * _direction(grad, norm), x, epsilon, norm)
    if judge is None:
        return x_adv.detach(), None
    with torch.no_grad():
        return keep_stronger(best, x_adv.detach(), judge(x_adv.detach()))


def _objective_gradient(objective: Callable[[torch.Tensor], torch.Tensor],
                        x_adv: torch.Tensor) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(objective(x_adv), x_adv, allow_unused=True,
                                      materialize_grads=True)
    return grad


def _check_keep(keep: str) -> None:
    if keep not in KEEPS:
        raise ValueError(f"unknown keep {keep!r}; known: {', '.join(KEEPS)}")


def ascend(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
           epsilon: float, steps: int, step_size: float, norm: str = "linf",
           random_start: str = "uniform", generator: torch.Generator | None = None,
           gaussian_std: float = 0.001, keep: str = "last",
           judge: Judge | None = None) -> torch.Tensor:
    """Projected steepest ascent on a scalar ``objective(x_adv)`` whose per-example parts are
    independent (a sum or mean of per-example terms), from ``random_start``. An objective that
    does not depend on ``x_adv`` (a defense that attacks none of these points) leaves the
    points where they started.

    ``keep="last"`` (training) returns the last iterate at no extra cost. ``keep="best"``
    (evaluation) needs a ``judge`` (e.g. :func:`prediction_judge`) and returns, per example,
    the strongest iterate it saw (start, every step, the final point) by :func:`stronger`;
    the objective is opaque, so judging costs one extra call of ``judge`` per iterate.
    """
    _check_keep(keep)
    if keep == "best" and judge is None:
        raise ValueError("ascend(keep='best') needs a judge, e.g. prediction_judge(model, y)")
    judging = judge if keep == "best" else None

    def step(x_adv: torch.Tensor) -> tuple[torch.Tensor, Verdict | None]:
        grad = _objective_gradient(objective, x_adv)
        if judging is None:
            return grad, None
        with torch.no_grad():
            return grad, judging(x_adv.detach())

    start = random_start_point(x, epsilon, norm, random_start, generator, gaussian_std)
    x_adv, _ = _ascent(step, x, start, epsilon=epsilon, steps=steps, step_size=step_size,
                       norm=norm, judge=judging)
    return x_adv


def _expected(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
              samples: int, gradient: bool,
              judging: bool) -> tuple[torch.Tensor | None, Verdict | None]:
    """The loss gradient averaged over ``samples`` forward passes (Athalye et al. 2018, §4.1,
    Expectation over Transformation: ∇ E[f(x)] = E[∇ f(x)]), and, when ``judging``, the
    verdict from the same passes: misclassified when the mean logits' argmax ≠ y, and the mean
    loss. One pass (``samples=1``) is plain PGD's gradient."""
    x_adv = x_adv.detach().requires_grad_(gradient)
    grad = logits_sum = loss_sum = None
    for _ in range(samples):
        with torch.set_grad_enabled(gradient):
            logits = model(x_adv)
            loss = loss_fn(logits, y)
            if gradient:
                (g,) = torch.autograd.grad(loss.sum(), x_adv, allow_unused=True,
                                           materialize_grads=True)
                grad = g if grad is None else grad + g
        if judging:
            logits, loss = logits.detach(), loss.detach()
            logits_sum = logits if logits_sum is None else logits_sum + logits
            loss_sum = loss if loss_sum is None else loss_sum + loss
    if grad is not None and samples > 1:
        grad = grad / samples
    verdict = None
    if judging:
        verdict = (logits_sum.argmax(1) != y, loss_sum / samples)
    return grad, verdict


def _single_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                epsilon: float, steps: int, step_size: float, norm: str, start: str,
                generator: torch.Generator | None, gaussian_std: float, keep: str,
                eot_samples: int) -> tuple[torch.Tensor, Verdict | None]:
    """One PGD run from a fresh start; with ``keep="best"`` its strongest iterate and verdict,
    else its last iterate and ``None``."""
    judging = keep == "best"

    def step(x_adv: torch.Tensor) -> tuple[torch.Tensor, Verdict | None]:
        return _expected(model, x_adv, y, loss_fn, eot_samples, True, judging)

    def judge(x_adv: torch.Tensor) -> Verdict:
        return _expected(model, x_adv, y, loss_fn, eot_samples, False, True)[1]

    x_adv = random_start_point(x, epsilon, norm, start, generator, gaussian_std)
    return _ascent(step, x, x_adv, epsilon=epsilon, steps=steps, step_size=step_size,
                   norm=norm, judge=judge if judging else None)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, steps: int,
        step_size: float, norm: str = "linf", loss: str | LossFn = "ce",
        random_start: str | bool | None = "uniform", restarts: int = 1, mode: str = "eval",
        generator: torch.Generator | None = None, gaussian_std: float = 0.001,
        keep: str = "last", eot_samples: int = 1) -> torch.Tensor:
    """Projected gradient ascent on ``loss`` inside the ``norm`` ball of radius ``epsilon``.

    ``random_start``: "uniform" (in the ball), "gaussian" (``gaussian_std``·N(0, 1), as TRADES
    and LMA-AT), or "none"; ``True``/``False`` mean "uniform"/"none", and ``None`` (what the
    attack spec ``random_start=none`` parses to) means "none". With ``restarts`` > 1 each
    example keeps its strongest run: a misclassified point beats a correctly classified one, and
    a higher final loss breaks ties. Returns a detached tensor shaped like ``x``.

    ``keep``: "last" returns each run's last iterate (the training defenses' semantics);
    "best" (evaluation) returns each run's strongest iterate by the same rule over the start
    point, every step and the final point, so a run that passed through a misclassified point
    and left it still counts it. Iterate t is judged from the logits of the forward pass that
    gives its gradient; only the final point costs one more forward pass (per EOT sample).

    ``eot_samples``: the gradient at each step is the mean over this many forward passes, for
    randomised models (Athalye et al. 2018, "Obfuscated Gradients Give a False Sense of
    Security", §4.1 Expectation over Transformation); judging then uses the mean logits.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    if random_start is None or isinstance(random_start, bool):
        random_start = "uniform" if random_start else "none"
    if random_start not in RANDOM_STARTS:
        raise ValueError(f"unknown random start {random_start!r}; known: {RANDOM_STARTS}")
    if epsilon < 0 or steps < 0 or restarts < 1:
        raise ValueError("pgd needs epsilon >= 0, steps >= 0 and restarts >= 1")
    _check_keep(keep)
    if not isinstance(eot_samples, int) or eot_samples < 1:
        raise ValueError(f"pgd needs an integer eot_samples >= 1, got {eot_samples!r}")
    loss_fn = _resolve_loss(loss)
    x, y = x.detach(), y.detach()
    with model_mode(model, mode), torch.enable_grad():
        best = None
        for _ in range(restarts):
            x_adv, verdict = _single_run(model, x, y, loss_fn, epsilon, steps, step_size, norm,
                                         random_start, generator, gaussian_std, keep,
                                         eot_samples)
            if restarts == 1:
                return x_adv
            if verdict is None:
                verdict = _expected(model, x_adv, y, loss_fn, eot_samples, False, True)[1]
            best = keep_stronger(best, x_adv, verdict)
        return best[0]


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
         norm: str = "linf", mode: str = "eval", keep: str = "last") -> torch.Tensor:
    """Fast gradient sign method: one full-size PGD step from the clean point (with
    ``keep="best"``, the stronger of the clean point and the step, as :func:`pgd`)."""
    return pgd(model, x, y, epsilon=epsilon, steps=1, step_size=epsilon, norm=norm,
               random_start="none", mode=mode, keep=keep)
