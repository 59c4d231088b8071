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


def nsga2_population(num_samples: int) -> int:
    """NSGA-II's population (trials per generation): a quarter of the budget, 4 to 50.

    Optuna's fixed default (50) is more trials than a 4-32 trial Pareto sweep runs, which would
    then never leave its random first generation. A quarter of the budget gives four generations
    (one random, three bred from the front so far) at any budget up to 200 trials; the floor of 4
    keeps a binary tournament choosing between different parents (the uniform crossover takes 2),
    so budgets under 8 stay one random generation, and 50 is Optuna's own size for large budgets.
    """
    return max(4, min(50, num_samples // 4))


SAMPLER_FACTORIES: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, n: optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=tpe_startup_trials(n)),
    "nsga2": lambda seed, n: optuna.samplers.NSGAIISampler(
        seed=seed, population_size=nsga2_population(n)),
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
