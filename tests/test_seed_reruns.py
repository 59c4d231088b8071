"""Which trials a sweep reruns over seeds, and with which overrides (no cluster needed)."""

import math
from types import SimpleNamespace

from sweeps.cli import SMOKE_BASE
from sweeps.runner import best_finished, rerun_overrides
from sweeps.spec import SweepSpec


def result(number: int, robust: float, *, epoch: int = 3, error=None, seed: int | None = None):
    overrides = {"defense_params": {"beta": float(number)}, "weight_decay": 1e-4 * number}
    if seed is not None:
        overrides["seed"] = seed
    return SimpleNamespace(
        config={"base": {**SMOKE_BASE, "defense": "trades", "seed": 10},
                "overrides": overrides, "trial_number": number},
        metrics={"epoch": epoch, "val_robust_accuracy": robust}, error=error)


def spec(**fields) -> SweepSpec:
    return SweepSpec(name="s", base={**SMOKE_BASE, "defense": "trades", "seed": 10},
                     num_samples=6, **fields)


RESULTS = [result(0, 0.40), result(1, 0.70, epoch=1),  # stopped early by the scheduler
           result(2, 0.55), result(3, 0.90, error=RuntimeError("died")),
           result(4, math.nan), result(5, 0.60, seed=42)]


def test_the_best_trials_that_ran_to_the_end_are_chosen_by_the_objective():
    chosen = best_finished(spec(rerun_top_k=2), RESULTS, 2)
    assert [r.config["trial_number"] for r in chosen] == [5, 2]
    assert [r.config["trial_number"] for r in best_finished(spec(), RESULTS, 6)] == [5, 2, 0]


def test_each_rerun_keeps_its_trials_overrides_and_takes_the_next_seeds():
    reruns = rerun_overrides(spec(rerun_top_k=2, rerun_seeds=3), RESULTS)
    assert reruns == [
        {"defense_params": {"beta": 5.0}, "weight_decay": 5e-4, "seed": 43},
        {"defense_params": {"beta": 5.0}, "weight_decay": 5e-4, "seed": 44},
        {"defense_params": {"beta": 2.0}, "weight_decay": 2e-4, "seed": 11},  # base seed 10
        {"defense_params": {"beta": 2.0}, "weight_decay": 2e-4, "seed": 12},
    ]
    assert rerun_overrides(spec(), RESULTS) == []  # rerun_top_k = 0: none
