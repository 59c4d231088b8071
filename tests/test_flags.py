"""One mechanism turns typed configs into flags and back: every field is a flag, and
``to_argv`` writes the flags that ``parse`` turns back into the same config."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from attacks.pool_config import PoolConfig
from sweeps.spec import SweepSpec
from trainables.config import TrialConfig
from trainables.flags import flag, parse, to_argv


def test_a_trial_config_round_trips_through_its_flags():
    config = TrialConfig(dataset="fashion_mnist", model="small_cnn", defense="trades",
                         defense_params={"beta": 3.0}, model_params={"width": 8},
                         epsilon=0.2, lr_milestones=[2, 5], bf16=True, train_subset=100,
                         attack_random_start="none")
    argv = to_argv(config)
    assert "--defense-params" in argv and "--bf16" in argv and "--lr-milestones" in argv
    assert parse(TrialConfig, argv) == config
    assert to_argv(TrialConfig()) == []


def test_a_pool_config_and_a_sweep_spec_round_trip():
    pool = PoolConfig(tracking_uri="http://192.0.2.1:5000", state_dir=Path("/tmp/pool"),
                      attacks=("pgd-100-ce", "square:queries=10"), epsilon_curve=(0.1, 0.3),
                      margins=True, experiments=["a", "b"], top_k=2, sweep="s")
    assert parse(PoolConfig, to_argv(pool)) == pool
    spec = SweepSpec(name="s", base={"defense": "trades", "epochs": 2}, num_samples=3,
                     early_stopping=False, storage_path="s3://bucket/ray",
                     optuna_storage="postgresql://u@192.0.2.1/optuna", extra_tags={"a": "b"})
    default = SweepSpec(name="x", base={})
    assert parse(SweepSpec, to_argv(spec, against=default), default=default) == spec


@pytest.mark.parametrize("cls, default", [(TrialConfig, None), (PoolConfig, None),
                                          (SweepSpec, SweepSpec(name="x", base={}))])
def test_every_field_is_a_flag(cls, default, capsys):
    with pytest.raises(SystemExit):
        parse(cls, ["--help"], default=default)
    shown = capsys.readouterr().out
    assert all(flag(f.name) in shown for f in dataclasses.fields(cls)), shown


def test_aliases_keep_the_older_sweep_flags():
    default = SweepSpec(name="x", base={})
    spec = parse(SweepSpec, ["--samples", "5", "--concurrency", "3", "--storage", "/s"],
                 default=default)
    assert (spec.num_samples, spec.max_concurrent, spec.storage_path) == (5, 3, "/s")


def test_a_new_field_is_a_flag_at_once_and_bad_values_exit_2(capsys):
    @dataclass(frozen=True)
    class Settings:
        rate: float = 0.5  # how fast
        names: tuple[str, ...] = ()
        extra: dict[str, int] = field(default_factory=dict)

    assert parse(Settings, ["--rate", "2", "--names", "a", "b", "--extra", '{"k": 1}']) == \
        Settings(2.0, ("a", "b"), {"k": 1})
    with pytest.raises(SystemExit) as exit_info:
        parse(Settings, ["--rate", "fast"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        parse(Settings, ["--help"])
    assert exit_info.value.code == 0 and "how fast" in capsys.readouterr().out
