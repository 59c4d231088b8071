"""Bad input is refused when it is read, with its reason, before any training or cluster time.

One table: config fields, defense knobs, sweep specs and search spaces, attack specs, command
lines (``robust-sweeps train|sweep|pool``: exit status 2, one message, no traceback) and
corrupt files. Each row names the exact error class and a fragment of its message. Nothing here
trains a model or starts Ray.
"""

from __future__ import annotations

import math
import re

import pytest

from attacks.pool_config import check_attack
from sweeps.cli import SMOKE_BASE
from sweeps.console import main as console
from sweeps.spec import SweepSpec, check_search_space
from sweeps.study import StudyError, load_study
from trainables import data
from trainables.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from trainables.config import MAX_STEP_RATIO, ConfigError, TrialConfig
from trainables.defenses import defense_class, list_defenses
from trainables.models import create_model


def config(**values):
    return lambda tmp_path: TrialConfig.from_dict(values)


def knobs(defense: str, **params):
    return config(defense=defense, defense_params=params)


def spec(**fields):
    return lambda tmp_path: SweepSpec(name="bad", base=dict(SMOKE_BASE), **fields).check()


def space(**ranges):
    """A define-by-run space searching each field over ``ranges[field] = (low, high)``."""
    def suggest(trial):
        return {name: trial.suggest_float(name, low, high) for name, (low, high) in
                ranges.items()}

    return lambda tmp_path: check_search_space(dict(SMOKE_BASE), suggest, "the test space")


def knob_space(defense: str, **ranges):
    def suggest(trial):
        return {"defense_params": {name: trial.suggest_float(name, low, high)
                                   for name, (low, high) in ranges.items()}}

    base = {**SMOKE_BASE, "defense": defense}
    return lambda tmp_path: check_search_space(base, suggest, f"defense {defense!r}")


def attack(spec_: str):
    return lambda tmp_path: check_attack(spec_)


def command(*argv: str):
    """``robust-sweeps ARGV`` in this process; its exit status is raised as SystemExit."""
    def run(tmp_path):
        raise SystemExit(console(list(argv)))

    return run


def file(name: str, text: str, load):
    def run(tmp_path):
        path = tmp_path / name
        path.write_text(text)
        return load(path)

    return run


def train_with_file(text: str):
    def run(tmp_path):
        path = tmp_path / "typo.yaml"
        path.write_text(text)
        raise SystemExit(console(["train", "--config", str(path)]))

    return run


def truncated_checkpoint(load):
    def run(tmp_path):
        trial = TrialConfig.from_dict({"model": "mlp", "model_params": {"hidden": 8,
                                                                        "layers": 1}})
        model = create_model("mlp", in_channels=1, image_size=28, hidden=8, layers=1)
        path = save_checkpoint(tmp_path / "checkpoint", model=model, config=trial,
                               training_state={"epoch": 1})
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        return load(path)

    return run


def resume_cli(path):
    raise SystemExit(console(["train", "--resume", str(path), "--quiet"]))


ROWS = [
    # ---- TrialConfig fields: the threat model
    (config(epsilon=5), ConfigError, "epsilon must lie in (0, 1] for norm=linf"),
    (config(epsilon=0), ConfigError, "epsilon must lie in (0, 1] for norm=linf"),
    (config(epsilon=29, norm="l2"), ConfigError, "epsilon must lie in (0, 28] for norm=l2"),
    (config(dataset="cifar10", epsilon=-1.0, norm="l2"), ConfigError,
     "epsilon must lie in (0, 55.4256] for norm=l2"),
    (config(epsilon=math.nan), ConfigError, "epsilon must be a finite number"),
    (config(attack_step_size=3), ConfigError,
     "attack_step_size must lie in (0, 2.5·epsilon] = (0, 0.25] for epsilon=0.1"),
    (config(attack_step_size=-0.01), ConfigError, "attack_step_size must lie in (0, 2.5·epsilon]"),
    (config(eval_step_size=10), ConfigError, "eval_step_size must lie in (0, 2.5·epsilon]"),
    (config(epsilon=0.001), ConfigError, "got 0.01 (the dataset's default); set it"),
    # ---- models, checked by name without being built
    (config(model="wrn-35-10"), ConfigError, "wide ResNet depth must be 6n + 4"),
    (config(model="wrn-28-0"), ConfigError, "wide ResNet width must be an integer >= 1"),
    (config(model="wrn-x"), ConfigError, "wide ResNet names read wrn-DEPTH-WIDTH"),
    (config(model="vgg"), ConfigError, "model must be one of"),
    (config(model="mlp", model_params={"hiden": 64}), ConfigError,
     "model_params ['hiden'] are not arguments of model 'mlp'; accepted: ['hidden', 'layers']"),
    # ---- split sizes, against the dataset's own
    (config(val_size=70_000), ConfigError, "val_size must lie in [0, 59999] for mnist"),
    (config(dataset="cifar10", val_size=50_000), ConfigError,
     "val_size must lie in [0, 49999] for cifar10"),
    (config(train_subset=60_000), ConfigError, "train_subset must lie in [1, 55000] for mnist"),
    (config(val_subset=6000), ConfigError, "val_subset must lie in [1, 5000] for mnist"),
    (config(test_subset=10_001), ConfigError, "test_subset must lie in [1, 10000] for mnist"),
    # ---- training budget and optimizer
    (config(epochs=0), ConfigError, "epochs must be >= 1, got 0"),
    (config(batch_size=0), ConfigError, "batch_size must be >= 1, got 0"),
    (config(lr=0.0), ConfigError, "lr must be > 0, got 0.0"),
    (config(lr=math.inf), ConfigError, "lr must be a finite number, got inf"),
    (config(epochs="ten"), ConfigError, "epochs must be int, got 'ten'"),
    (config(learning_rate=0.1), ConfigError,
     "unknown config field(s) ['learning_rate']; allowed: ["),
    # ---- defense knobs
    (knobs("trades", beta=-1), ConfigError, "trades.beta must lie in [0.0, 100.0], got -1.0"),
    (knobs("alp", lambda_alp=-1), ConfigError, "alp.lambda_alp must lie in [0.0, 100.0]"),
    (knobs("emr", lambda_emr=-0.5), ConfigError, "emr.lambda_emr must lie in [0.0, 10000.0]"),
    (knobs("emr", emr_base="trades", beta=-2), ConfigError, "trades.beta must lie in"),
    (knobs("free_at", replays=0), ConfigError, "free_at.replays must lie in [1, 64], got 0"),
    (knobs("mart", beta="six"), ConfigError, "mart.beta must be float, got 'six'"),
    (knobs("trades", gamma=1), ConfigError, "unknown knob(s) ['gamma'] for defense 'trades'"),
    # ---- sweep specs and search spaces, refused before any trial
    (spec(num_samples=0), ConfigError, "num_samples must be >= 1, got 0"),
    (spec(reduction_factor=1), ConfigError, "reduction_factor must be >= 2, got 1"),
    (spec(cpus_per_trial=0), ConfigError, "cpus_per_trial must be > 0, got 0"),
    (spec(sampler="grid"), ConfigError, "sampler must be one of"),
    (spec(rerun_top_k=-1), ConfigError, "rerun_top_k must be >= 0, got -1"),
    (spec(rerun_top_k=1, rerun_seeds=1), ConfigError, "rerun_seeds must be >= 2, got 1"),
    (spec(rerun_top_k=9), ConfigError, "rerun_top_k must be <= num_samples (8), got 9"),
    (spec(rerun_top_k=1, seeds_only=True), ConfigError,
     "rerun_top_k needs a search: a seeds_only sweep already repeats"),
    (lambda tmp_path: SweepSpec(name="bad", base={**SMOKE_BASE, "epsilon": 5}).check(),
     ConfigError, "epsilon must lie in (0, 1]"),
    (space(epsilon=(0.05, 5.0)), ConfigError,
     "the search space of the test space leaves the allowed values at epsilon=5.0 (searched in "
     "[0.05, 5]): epsilon must lie in (0, 1]"),
    (space(attack_step_size=(0.01, 0.5)), ConfigError,
     "attack_step_size=0.5 (searched in [0.01, 0.5]): attack_step_size must lie in"),
    (knob_space("trades", beta=(-1.0, 12.0)), ConfigError,
     "beta=-1.0 (searched in [-1, 12]): defense_params: trades.beta must lie in"),
    # ---- attack specs
    (attack("pgd:steps=-1"), ValueError, "attack 'pgd:steps=-1': steps must be an integer >= 1"),
    (attack("pgd:loss=xx"), ValueError, "attack 'pgd:loss=xx': loss must be one of ce, cw"),
    (attack("nonsense"), ValueError, "unknown attack 'nonsense'; known: adaptive"),
    (attack("pgd:steps"), ValueError, "expected key=value, got 'steps'"),
    (attack("pgd:foo=1"), ValueError, "unexpected keyword argument 'foo'"),
    (attack("square:queries=-5"), ValueError, "square_queries must be an integer >= 1"),
    (attack("autoattack:version=xx"), ValueError, "unknown AutoAttack version 'xx'"),
    # ---- command lines: one message, exit status 2
    (command("train", "--epsilon", "5"), SystemExit,
     "config error: epsilon must lie in (0, 1] for norm=linf"),
    (command("train", "--model", "wrn-35-10"), SystemExit, "wide ResNet depth must be 6n + 4"),
    (command("train", "--no-such-flag"), SystemExit, "Unrecognized options: --no-such-flag"),
    (command("train", "--set", "epsilon"), SystemExit, "override 'epsilon' must read key=value"),
    (command("train", "--set", "val_size=70000"), SystemExit, "val_size must lie in [0, 59999]"),
    (command("train", "--set", "defense_params.beta=-1", "--defense", "trades"), SystemExit,
     "trades.beta must lie in"),
    (command("sweep", "he_wrn", "--smoke", "--set", "epsilon=5"), SystemExit,
     "error: epsilon must lie in (0, 1] for norm=linf"),
    (command("sweep", "emr_wrn", "--smoke", "--set", "attack_step_size=3"), SystemExit,
     "error: attack_step_size must lie in"),
    (command("sweep", "he_wrn", "--smoke", "--set", "epsilon"), SystemExit,
     "error: override 'epsilon' must read key=value"),
    (command("sweep", "no_such_study"), SystemExit, "unknown study 'no_such_study'"),
    (command("sweep", "he_wrn", "--smoke", "--grace-period", "0"), SystemExit,
     "grace_period must be >= 1, got 0"),
    (command("sweep", "he_wrn", "--smoke", "--rerun-top-k", "5"), SystemExit,
     "rerun_top_k must be <= num_samples (4), got 5"),
    (command("pool", "--attacks", "pgd:steps=-1"), SystemExit,
     "attack 'pgd:steps=-1': steps must be an integer >= 1"),
    (command("pool", "--attacks", "nonsense"), SystemExit, "unknown attack 'nonsense'"),
    (command("pool", "--attacks", "pgd:loss=xx"), SystemExit, "loss must be one of ce, cw"),
    (command("pool", "--n-examples", "0"), SystemExit, "n_examples=0"),
    (command("pool", "--top-k", "2"), SystemExit, "--top-k needs --sweep"),
    (command("pool", "--epsilon", "-0.1"), SystemExit, "--epsilon must be > 0"),
    (command("pool", "--eot", "sometimes"), SystemExit, "--eot must be auto, always or never"),
    (command("evaluate", "ckpt", "--attacks", "pgd:steps=-1"), SystemExit,
     "attack 'pgd:steps=-1': steps must be an integer >= 1"),
    (command("evaluate", "ckpt", "--attacks", "pgd-100-ce", "pgd:steps=100"), SystemExit,
     "are the same attack (pgd100_ce)"),
    (command("evaluate", "ckpt", "--attacks", "spsa:bpda=true"), SystemExit,
     "bad settings for attack 'spsa': bpda"),
    # ---- corrupt files
    (file("study.yaml", "- a list\n- not a study\n", load_study), StudyError,
     "a study is a mapping of fields"),
    (file("cfg.yaml", "epoch: 3\n", TrialConfig.from_yaml), ConfigError,
     "unknown config field(s) ['epoch']"),
    (file("cfg.yaml", "- epochs\n", TrialConfig.from_yaml), ConfigError,
     "a trial config is a mapping of fields, got list"),
    (file("cfg.yaml", "epochs: [1,\n", TrialConfig.from_yaml), ConfigError, "is not valid YAML"),
    (train_with_file("dataset: mnist\nepoch: 3\n"), SystemExit,
     "typo.yaml: unknown config field(s) ['epoch']"),
    (truncated_checkpoint(load_checkpoint), CheckpointError, "model.safetensors"),
    (truncated_checkpoint(resume_cli), SystemExit, "cannot resume: cannot read"),
]


def _plain(text: str) -> str:
    """Text without the box drawing of tyro's messages, on one line."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("make, error, fragment", ROWS)
def test_bad_input_is_refused_with_its_reason(make, error, fragment, tmp_path, monkeypatch,
                                              capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("ROBUST_SWEEPS_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "400")  # tyro's messages on one line
    for name in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(error) as raised:
        make(tmp_path)
    assert type(raised.value) is error
    message = str(raised.value)
    if error is SystemExit:
        assert raised.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        message = _plain(err)
    assert fragment in message, message
    # refused before any cluster or tracking work
    assert not (home / "ray_results").exists() and not (home / "mlflow.db").exists()


def test_there_are_at_least_thirty_rows():
    assert len(ROWS) >= 30


def test_the_limits_are_inclusive_where_the_rules_say_so():
    TrialConfig.from_dict({"epsilon": 1.0, "attack_step_size": MAX_STEP_RATIO})
    TrialConfig.from_dict({"norm": "l2", "epsilon": 28.0})  # √784
    TrialConfig.from_dict({"epsilon": 0.1, "attack_step_size": 0.25, "eval_step_size": 0.25})
    TrialConfig.from_dict({"val_size": 59_999, "train_subset": 1, "val_subset": 59_999})
    TrialConfig.from_dict({"val_size": 0, "train_subset": 60_000, "test_subset": 10_000})
    TrialConfig.from_dict({"model": "wrn-16-1", "dataset": "cifar10"})
    TrialConfig.from_dict({"model": "wrn", "model_params": {"depth": 10, "width": 2}})


def test_the_split_sizes_the_checks_use_are_the_datas_own():
    for name in ("mnist", "fake32"):
        info, raw = data.dataset_info(name), data.raw_data(name)
        assert (info.train_size, info.test_size) == (len(raw.train_labels),
                                                      len(raw.test_labels))


@pytest.mark.parametrize("defense", list_defenses())
def test_every_defenses_own_search_space_passes_the_check(defense):
    corners = check_search_space({"defense": defense}, defense_class(defense).search_space)
    assert corners >= 2  # each space searches the weight decay at least: both of its ends
