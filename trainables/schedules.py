"""Learning-rate schedules, by name: ``learning_rate(config, t)`` at ``t`` epochs of training.

``t`` counts epochs as a real number (``epoch + batch / batches``), so a schedule may change
the rate every iteration. The epoch-wise schedules read ``floor(t)``:

* ``piecewise``: ``lr · γ^k``, k the milestones passed (Madry et al. 2018; Rice et al. 2020
  decay at epochs 100 and 150 of 200);
* ``cosine``: ``lr · (1 + cos(π · epoch / epochs)) / 2``, per epoch;
* ``constant``: ``lr``.

``cyclic`` is the one-cycle triangle of Fast AT (Wong et al. 2020, Sec. 5.1 "cyclic learning
rates"): per iteration, linear from 0 at ``t = 0`` to ``lr`` at ``t = cyclic_peak · epochs``
and back to 0 at ``t = epochs``, as ``torch.optim.lr_scheduler.CyclicLR`` with one cycle over
the whole run steps it. A linear warm-up (``warmup_epochs``, Goyal et al. 2017) scales any
schedule by ``min(1, t' / warmup_epochs)`` with ``t'`` the epochs done after the iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from trainables.registry import Registry

if TYPE_CHECKING:
    from trainables.config import TrialConfig

Schedule = Callable[["TrialConfig", float], float]
SCHEDULES: Registry[Schedule] = Registry("schedule")


@SCHEDULES.register("piecewise")
def piecewise(config: TrialConfig, t: float) -> float:
    epoch = math.floor(t)
    passed = sum(1 for milestone in config.lr_milestones if epoch >= milestone)
    return config.lr * config.lr_gamma ** passed


@SCHEDULES.register("cosine")
def cosine(config: TrialConfig, t: float) -> float:
    return 0.5 * config.lr * (1 + math.cos(math.pi * math.floor(t) / config.epochs))


@SCHEDULES.register("constant")
def constant(config: TrialConfig, t: float) -> float:
    return config.lr


@SCHEDULES.register("cyclic")
def cyclic(config: TrialConfig, t: float) -> float:
    peak = config.cyclic_peak * config.epochs
    if t <= peak:
        return config.lr * t / peak
    return config.lr * max(0.0, (config.epochs - t) / (config.epochs - peak))


def learning_rate(config: TrialConfig, t: float, batches: int = 1) -> float:
    """The rate for the iteration starting at ``t`` epochs (``batches`` iterations an epoch)."""
    rate = SCHEDULES.get(config.schedule)(config, t)
    if config.warmup_epochs > 0:
        rate *= min(1.0, (t + 1 / batches) / config.warmup_epochs)
    return rate


def per_iteration(config: TrialConfig) -> bool:
    """Whether the rate changes within an epoch (else one rate per epoch suffices)."""
    return config.schedule == "cyclic" or config.warmup_epochs > 0
