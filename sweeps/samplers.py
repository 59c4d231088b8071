"""The Optuna samplers a sweep can use, by name (``--sampler``)."""

from __future__ import annotations

from collections.abc import Callable

import optuna


def tpe_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the space: a quarter of the budget, 2 to 10.

    Optuna's fixed default (10) suits budgets of a hundred trials or more; with the 16-32 trials
    a GPU sweep affords it would leave TPE little budget to exploit what it learnt.
    """
    return max(2, min(10, num_samples // 4))


SAMPLER_FACTORIES: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, n: optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=tpe_startup_trials(n)),
    "nsga2": lambda seed, n: optuna.samplers.NSGAIISampler(seed=seed),
    "cmaes": lambda seed, n: optuna.samplers.CmaEsSampler(seed=seed,
                                                          warn_independent_sampling=False),
    "random": lambda seed, n: optuna.samplers.RandomSampler(seed=seed),
}
SAMPLERS = tuple(SAMPLER_FACTORIES)


def create_sampler(name: str, *, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler registered as ``name``, seeded, sized for ``num_samples`` trials."""
    if name not in SAMPLER_FACTORIES:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    return SAMPLER_FACTORIES[name](seed, num_samples)
