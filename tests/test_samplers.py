"""The sweep's sampler registry and command-line switches (no Ray)."""

import optuna
import pytest

from sweeps.samplers import SAMPLERS, create_sampler, nsga2_population, tpe_startup_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_startup_trials_are_a_quarter_of_the_budget_within_bounds():
    assert [tpe_startup_trials(n) for n in (1, 4, 8, 16, 32, 40, 100, 1000)] == \
        [2, 2, 2, 4, 8, 10, 10, 10]


def test_nsga2_population_is_a_quarter_of_the_budget_within_bounds():
    assert [nsga2_population(n) for n in (1, 4, 8, 16, 32, 64, 200, 1000)] == \
        [4, 4, 4, 4, 8, 16, 50, 50]
    for n in (4, 16, 32, 1000):
        sampler = create_sampler("nsga2", seed=0, num_samples=n)
        assert sampler._population_size == nsga2_population(n)


def test_nsga2_breeds_later_generations_within_a_sixteen_trial_budget():
    sampler = create_sampler("nsga2", seed=0, num_samples=16)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        return x ** 2 + y, (1 - x) ** 2 + y

    study.optimize(two_objectives, n_trials=16)
    key = f"{type(sampler).__name__}:generation"
    generations = [trial.system_attrs[key] for trial in study.trials]
    assert generations == sorted(generations)
    assert max(generations) == 16 // nsga2_population(16) - 1


def test_every_registered_sampler_builds_and_unknown_names_fail_listing_them():
    for name in SAMPLERS:
        assert isinstance(create_sampler(name, seed=0, num_samples=8),
                          optuna.samplers.BaseSampler)
    with pytest.raises(ValueError, match="tpe.*random"):
        create_sampler("grid", seed=0, num_samples=8)



def test_sweep_cli_switches_early_stopping_off():
    from sweeps.cli import sweep_spec
    from sweeps.study import load_study

    spec = load_study("emr_wrn").spec
    assert sweep_spec(spec, ["--smoke"]).early_stopping
    off = sweep_spec(spec, ["--smoke", "--no-early-stopping"])
    assert off.early_stopping is False
