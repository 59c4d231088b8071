"""Indicators of attack failure: cheap checks that an attack, not the model, held the points.

A robust accuracy means little when the attack that measured it failed to optimise. Each
indicator here reruns a small part of the evaluation on a subset of the points in a way an
honest evaluation must pass, and says in one sentence what failed and what to do about it:

* ``unbounded``: PGD without a useful bound (L∞ ε = 1, L2 ε = √d, the box's diameter) must
  break (nearly) every point (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
  §§4–5: unbounded attacks reach 100 % success; Pintor et al. 2022, "Indicators of Attack
  Failure", the Unconstrained Attack Failure indicator).
* ``fgsm_beats_pgd``: a single FGSM step must not break points PGD missed (Carlini et al.
  2019: iterative attacks must beat single-step ones).
* ``more_steps``: the attack's loss must have stopped rising over its last steps, and twice the
  steps must not lower robust accuracy by more than its 95 % Wilson half-width (Carlini et al.
  2019: verify convergence by adding iterations; Pintor et al. 2022, Incomplete Optimization).
* ``restarts``: the outcome must not depend on the random start (Carlini et al. 2019: random
  restarts, as Madry et al. 2018 evaluate with).
* ``transfer``: adversarial examples of a standard surrogate of the same architecture must not
  break points the white-box attack missed (Carlini et al. 2019: transferability analysis;
  Pintor et al. 2022, Transfer Failure). :func:`train_surrogate` trains such a surrogate.

Every indicator is a registered function ``(model, x, y, *, epsilon, norm, seed, settings,
surrogate=None) -> Indicator``; :func:`run_indicators` runs any of them. Points the model
misclassifies clean are left out (no attack can break them). The model runs in eval mode, and
randomness comes only from generators seeded by ``seed``: the caller's RNG is left as it was.
Thresholds and budgets live in :class:`IndicatorSettings`, so a result records what it was
compared against.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attacks.pgd import NORMS, fgsm, model_mode, pgd
from attacks.schema import wilson_interval
from trainables.registry import Registry


@dataclass(frozen=True)
class IndicatorSettings:
    """Budgets and thresholds of the indicators.

    Defaults were set on real MNIST, 128-point slices: on an adversarially trained and a
    standard MLP at L∞ ε ∈ {0.05 … 0.3} and L2 ε ∈ {1, 2} (seeds 0–2) no indicator fired
    (largest values: unbounded success 100 %; FGSM-only 0 %; loss rise 1.2 % under L∞, 3.2 %
    under L2, whose normalised steps keep creeping along the sphere; accuracy drop 0.62
    half-widths; restart disagreement 10 %, at twice the training ε; transfer-only 0.9 %),
    while each planted failure of the tests fired at every seed 0–4 (unbounded success ≤ 61 %,
    FGSM-only ≥ 35 %, more_steps value ≥ 1.6, disagreement ≥ 52 %, transfer-only ≥ 37 %).
    """

    subset: int = 100                # first points looked at (clean-wrong ones then dropped)
    steps: int = 50                  # k, the steps of the reference PGD
    step_ratio: float = 2.5          # PGD step size = step_ratio·ε/k (as the suite's pgd)
    unbounded_linf: float = 1.0      # L∞ radius of the unbounded attack (L2: √d)
    unbounded_success: float = 0.99  # the unbounded attack must break at least this share
    fgsm_margin: float = 0.03        # share of points only FGSM breaks
    tail_fraction: float = 0.1       # the last steps whose loss must not still rise …
    loss_rise: float = 0.05          # … by more than this (relative rise of the mean CE)
    restarts: int = 5                # PGD runs from different random starts
    restart_disagreement: float = 0.15  # share of points whose outcome differs across starts
    transfer_margin: float = 0.03    # share of points only the surrogate's examples break
    surrogate_epochs: int = 2        # train_surrogate: epochs of plain SGD …
    surrogate_subset: int = 6000     # … on this many training images …
    surrogate_batch_size: int = 100  # … in batches of this size
    surrogate_lr: float = 0.05       # SGD learning rate (momentum 0.9)

    def __post_init__(self) -> None:
        if self.subset < 1 or self.steps < 2 or self.restarts < 2:
            raise ValueError("indicators need subset >= 1, steps >= 2 and restarts >= 2")
        if not 0 < self.tail_fraction < 1:
            raise ValueError(f"tail_fraction must be in (0, 1), got {self.tail_fraction}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def step_size(self, epsilon: float) -> float:
        return self.step_ratio * epsilon / self.steps


DEFAULT_INDICATORS = IndicatorSettings()


@dataclass(frozen=True)
class Indicator:
    """One indicator's verdict on a model and its points."""

    name: str         # registry name
    fired: bool       # True: the attack failed in the way this indicator looks for
    value: float      # the measured quantity
    threshold: float  # what ``value`` was compared against
    n: int            # points looked at (clean-correct points of the subset)
    seconds: float
    message: str      # one plain sentence; when fired, the failure and the remedy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Indicator:
        types = {"fired": bool, "value": float, "threshold": float, "n": int,
                 "seconds": float, "name": str, "message": str}
        return cls(**{f.name: types[f.name](data[f.name]) for f in fields(cls)})


IndicatorFn = Callable[..., Indicator]
INDICATORS: Registry[IndicatorFn] = Registry("indicator")


def register_indicator(name: str):
    return INDICATORS.register(name)


def list_indicators() -> list[str]:
    return INDICATORS.names()


# -- pieces ----------------------------------------------------------------------------------
def _generator(x: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=x.device).manual_seed(seed)


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with model_mode(model, "eval"):
        return model(x).argmax(1) == y


@torch.no_grad()
def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with model_mode(model, "eval"):
        return F.cross_entropy(model(x).float(), y).item()


def clean_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 subset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``subset`` points, less those the model misclassifies clean."""
    x, y = x[:subset].detach(), y[:subset].detach()
    keep = _correct(model, x, y)
    return x[keep], y[keep]


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, norm: str,
         steps: int, step_size: float, generator: torch.Generator) -> torch.Tensor:
    return pgd(model, x, y, epsilon=epsilon, steps=steps, step_size=step_size, norm=norm,
               random_start="uniform", generator=generator)


def _share(flags: torch.Tensor) -> float:
    return flags.float().mean().item() if len(flags) else 0.0


def _verdict(name: str, started: float, *, fired: bool, value: float, threshold: float, n: int,
             message: str) -> Indicator:
    return Indicator(name, bool(fired), float(value), float(threshold), int(n),
                     time.perf_counter() - started, message)


def _nothing_to_check(name: str, started: float, threshold: float) -> Indicator:
    return _verdict(name, started, fired=False, value=0.0, threshold=threshold, n=0,
                    message=f"{name} not checked: the model misclassifies every point given")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")


def unbounded_radius(x: torch.Tensor, norm: str, settings: IndicatorSettings) -> float:
    """A radius that bounds nothing: ``settings.unbounded_linf`` for L∞, √d (the diameter of
    [0, 1]^d) for L2."""
    return settings.unbounded_linf if norm == "linf" else math.sqrt(x[0].numel())


# -- the indicators --------------------------------------------------------------------------
@register_indicator("unbounded")
def unbounded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
              norm: str = "linf", seed: int = 0,
              settings: IndicatorSettings = DEFAULT_INDICATORS,
              surrogate: nn.Module | None = None) -> Indicator:
    """PGD-k at a radius that bounds nothing must break at least ``unbounded_success`` of the
    points; below it gradients are masked or the attack is broken."""
    started, threshold = time.perf_counter(), settings.unbounded_success
    x, y = clean_points(model, x, y, settings.subset)
    if not len(x):
        return _nothing_to_check("unbounded", started, threshold)
    radius = unbounded_radius(x, norm, settings)
    x_adv = _pgd(model, x, y, epsilon=radius, norm=norm, steps=settings.steps,
                 step_size=settings.step_size(radius), generator=_generator(x, seed))
    success = 1.0 - _share(_correct(model, x_adv, y))
    fired = success < threshold
    message = (f"the attack cannot break the model even without a bound ({success:.1%} of "
               f"{len(x)} points at {norm} ε={radius:g}): gradients are masked or the attack "
               "is broken; try BPDA, a gradient-free attack, or check the model"
               if fired else
               f"PGD without a bound ({norm} ε={radius:g}) breaks {success:.1%} of {len(x)} "
               f"points (at least {threshold:.0%} needed)")
    return _verdict("unbounded", started, fired=fired, value=success, threshold=threshold,
                    n=len(x), message=message)


@register_indicator("fgsm_beats_pgd")
def fgsm_beats_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                   norm: str = "linf", seed: int = 0,
                   settings: IndicatorSettings = DEFAULT_INDICATORS,
                   surrogate: nn.Module | None = None) -> Indicator:
    """Share of points one FGSM step (from the clean point) breaks while PGD-k (from a random
    start) misses them; above ``fgsm_margin`` PGD's optimisation is failing."""
    started, threshold = time.perf_counter(), settings.fgsm_margin
    x, y = clean_points(model, x, y, settings.subset)
    if not len(x):
        return _nothing_to_check("fgsm_beats_pgd", started, threshold)
    by_fgsm = ~_correct(model, fgsm(model, x, y, epsilon=epsilon, norm=norm), y)
    x_pgd = _pgd(model, x, y, epsilon=epsilon, norm=norm, steps=settings.steps,
                 step_size=settings.step_size(epsilon), generator=_generator(x, seed))
    only_fgsm = _share(by_fgsm & _correct(model, x_pgd, y))
    fired = only_fgsm > threshold
    message = (f"FGSM breaks {only_fgsm:.1%} of {len(x)} points that PGD-{settings.steps} "
               "missed: PGD's optimisation is failing; check its step size, try it without a "
               "random start (a flat region around the start) and look for masked gradients"
               if fired else
               f"FGSM breaks {only_fgsm:.1%} of {len(x)} points PGD-{settings.steps} missed "
               f"(at most {threshold:.0%} allowed)")
    return _verdict("fgsm_beats_pgd", started, fired=fired, value=only_fgsm,
                    threshold=threshold, n=len(x), message=message)


def wilson_half_width(successes: int, n: int) -> float:
    low, high = wilson_interval(successes, n)
    return (high - low) / 2


@register_indicator("more_steps")
def more_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
               norm: str = "linf", seed: int = 0,
               settings: IndicatorSettings = DEFAULT_INDICATORS,
               surrogate: nn.Module | None = None) -> Indicator:
    """Is PGD-k done? From one random start (same generator seed) and step size, runs of
    (1 − ``tail_fraction``)·k, k and 2k steps: the mean CE must not rise by more than
    ``loss_rise`` (relative) over the last steps, and 2k steps must not lower robust accuracy
    by more than the 95 % Wilson half-width at k steps. ``value`` is the larger of the two
    ratios rise / ``loss_rise`` and drop / half-width; it fires above ``threshold`` = 1."""
    started, threshold = time.perf_counter(), 1.0
    x, y = clean_points(model, x, y, settings.subset)
    if not len(x):
        return _nothing_to_check("more_steps", started, threshold)
    k = settings.steps
    head = k - max(1, round(settings.tail_fraction * k))

    def run(steps: int) -> torch.Tensor:
        return _pgd(model, x, y, epsilon=epsilon, norm=norm, steps=steps,
                    step_size=settings.step_size(epsilon), generator=_generator(x, seed))

    at_head, at_k, at_2k = run(head), run(k), run(2 * k)
    before, after = _mean_loss(model, at_head, y), _mean_loss(model, at_k, y)
    rise = (after - before) / max(abs(before), 1e-12)
    robust_k, robust_2k = _correct(model, at_k, y), _correct(model, at_2k, y)
    drop = _share(robust_k) - _share(robust_2k)
    half = wilson_half_width(int(robust_k.sum()), len(x))
    value = max(rise / settings.loss_rise, drop / half)
    fired = value > threshold
    measured = (f"the mean loss rose {rise:+.1%} over steps {head}–{k} (at most "
                f"{settings.loss_rise:.0%} allowed) and {2 * k} steps lowered robust accuracy "
                f"by {drop:+.1%} (at most the Wilson half-width {half:.1%}) on {len(x)} points")
    message = (f"optimisation incomplete: {measured}; use more steps"
               if fired else f"PGD-{k} has converged: {measured}")
    return _verdict("more_steps", started, fired=fired, value=value, threshold=threshold,
                    n=len(x), message=message)


@register_indicator("restarts")
def restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
             norm: str = "linf", seed: int = 0,
             settings: IndicatorSettings = DEFAULT_INDICATORS,
             surrogate: nn.Module | None = None) -> Indicator:
    """``restarts`` runs of PGD-k from different random starts (one generator, drawn in turn):
    share of points some runs break and others miss; above ``restart_disagreement`` the result
    depends on the start."""
    started, threshold = time.perf_counter(), settings.restart_disagreement
    x, y = clean_points(model, x, y, settings.subset)
    if not len(x):
        return _nothing_to_check("restarts", started, threshold)
    generator = _generator(x, seed)
    robust = torch.stack([
        _correct(model, _pgd(model, x, y, epsilon=epsilon, norm=norm, steps=settings.steps,
                             step_size=settings.step_size(epsilon), generator=generator), y)
        for _ in range(settings.restarts)])
    disagree = _share(robust.any(0) & ~robust.all(0))
    fired = disagree > threshold
    message = (f"the attack's result depends on its start: {settings.restarts} random starts "
               f"disagree on {disagree:.1%} of {len(x)} points; use more restarts"
               if fired else
               f"{settings.restarts} random starts of PGD-{settings.steps} disagree on "
               f"{disagree:.1%} of {len(x)} points (at most {threshold:.0%} allowed)")
    return _verdict("restarts", started, fired=fired, value=disagree, threshold=threshold,
                    n=len(x), message=message)


@register_indicator("transfer")
def transfer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
             norm: str = "linf", seed: int = 0,
             settings: IndicatorSettings = DEFAULT_INDICATORS,
             surrogate: nn.Module | None = None) -> Indicator:
    """Share of points that PGD-k examples crafted on ``surrogate`` break while white-box PGD-k
    on the model misses them; above ``transfer_margin`` the model's own gradients mislead the
    attack (gradient masking). Without a surrogate, a not-fired result that says so."""
    started, threshold = time.perf_counter(), settings.transfer_margin
    if surrogate is None:
        return _verdict("transfer", started, fired=False, value=0.0, threshold=threshold, n=0,
                        message="transfer skipped: no surrogate model given "
                                "(train one with train_surrogate)")
    x, y = clean_points(model, x, y, settings.subset)
    if not len(x):
        return _nothing_to_check("transfer", started, threshold)
    step_size = settings.step_size(epsilon)
    crafted = _pgd(surrogate, x, y, epsilon=epsilon, norm=norm, steps=settings.steps,
                   step_size=step_size, generator=_generator(x, seed))
    white = _pgd(model, x, y, epsilon=epsilon, norm=norm, steps=settings.steps,
                 step_size=step_size, generator=_generator(x, seed))
    only_transfer = _share(~_correct(model, crafted, y) & _correct(model, white, y))
    fired = only_transfer > threshold
    message = (f"examples crafted on the surrogate break {only_transfer:.1%} of {len(x)} points "
               f"white-box PGD-{settings.steps} missed: gradients are masked; attack through "
               "the surrogate or BPDA, or use a gradient-free attack"
               if fired else
               f"the surrogate's examples break {only_transfer:.1%} of {len(x)} points "
               f"white-box PGD-{settings.steps} missed (at most {threshold:.0%} allowed)")
    return _verdict("transfer", started, fired=fired, value=only_transfer, threshold=threshold,
                    n=len(x), message=message)


# -- all of them -----------------------------------------------------------------------------
def run_indicators(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                   norm: str = "linf", seed: int = 0,
                   settings: IndicatorSettings = DEFAULT_INDICATORS,
                   surrogate: nn.Module | None = None,
                   names: Sequence[str] | None = None) -> list[Indicator]:
    """The indicators ``names`` (all registered ones by default, by name) on ``(x, y)``."""
    if len(x) != len(y):
        raise ValueError(f"need as many labels as inputs (got {len(x)} and {len(y)})")
    _check_norm(norm)
    chosen = [INDICATORS.get(name) for name in (names if names is not None
                                                 else list_indicators())]
    return [check(model, x, y, epsilon=epsilon, norm=norm, seed=seed, settings=settings,
                  surrogate=surrogate) for check in chosen]


def fired_messages(indicators: Sequence[Indicator]) -> list[str]:
    """The messages of the indicators that fired."""
    return [indicator.message for indicator in indicators if indicator.fired]


# -- a surrogate for the transfer indicator --------------------------------------------------
def train_surrogate(dataset: str, model: str, model_kwargs: dict[str, Any] | None = None, *,
                    epochs: int = DEFAULT_INDICATORS.surrogate_epochs,
                    subset: int = DEFAULT_INDICATORS.surrogate_subset, seed: int = 0,
                    batch_size: int = DEFAULT_INDICATORS.surrogate_batch_size,
                    lr: float = DEFAULT_INDICATORS.surrogate_lr,
                    device: str | torch.device = "cpu") -> nn.Module:
    """A standard (not adversarially trained) ``model`` trained with SGD (momentum 0.9) and
    cross-entropy on ``subset`` images of ``dataset``'s training split, in eval mode.

    Trained on ``device``. Initialisation and batch order come from ``seed`` alone (the
    caller's RNG is left as it was), so the same call gives the same weights on one machine.
    """
    from trainables.data import dataset_info, iterate_batches, load_dataset
    from trainables.models import create_model

    info = dataset_info(dataset)
    train = load_dataset(dataset, "train", subset=subset)
    order = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initialisation (and dropout, if the model has any)
        network = create_model(model, num_classes=info.num_classes, in_channels=info.channels,
                               image_size=info.image_size, mean=info.mean, std=info.std,
                               **(model_kwargs or {})).to(device)
        optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9)
        network.train()
        for _ in range(epochs):
            for images, labels, _ in iterate_batches(train, batch_size, shuffle=True,
                                                     generator=order):
                optimizer.zero_grad()
                images, labels = images.to(device), labels.to(device)
                F.cross_entropy(network(images), labels).backward()
                optimizer.step()
    return network.eval()
