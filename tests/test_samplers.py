"""The sweep's sampler registry and command-line switches (no Ray)."""

import optuna
import pytest

from sweeps.samplers import SAMPLERS, create_sampler, tpe_startup_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_startup_trials_are_a_quarter_of_the_budget_within_bounds():
    assert [tpe_startup_trials(n) for n in (1, 4, 8, 16, 32, 40, 100, 1000)] == \
        [2, 2, 2, 4, 8, 10, 10, 10]


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
