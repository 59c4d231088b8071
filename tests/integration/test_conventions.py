"""The ecosystems' own variables: a flag wins, else ``$MLFLOW_TRACKING_URI`` /
``$OPTUNA_STORAGE`` / ``$RAY_ADDRESS``, else the embedded default under ``$ROBUST_SWEEPS_HOME``;
and a real smoke sweep started with ``$MLFLOW_TRACKING_URI`` lands its runs in that store."""

from __future__ import annotations

import argparse
import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

from attacks.pool_cli import parse_config
from dashboards.cli import _store
from dashboards.runs import embedded_tracking_uri, resolve_tracking_uri
from sweeps.cli import SMOKE_BASE
from sweeps.cli import main as sweep_main
from sweeps.cluster import cluster_address
from sweeps.console import main as console
from sweeps.environment import embedded_optuna_storage
from sweeps.spec import SweepSpec

VARIABLES = ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "RAY_ADDRESS")


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A fresh ``$ROBUST_SWEEPS_HOME``, none of the ecosystems' variables set."""
    path = tmp_path / "home"
    monkeypatch.setenv("ROBUST_SWEEPS_HOME", str(path))
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return path


FLAG, ENV = "sqlite:////flag/mlflow.db", "sqlite:////env/mlflow.db"


# ---------------------------------------------------------------- the MLflow tracking URI
# How each command resolves its tracking URI from its flag (None: no flag given).
TRACKING_URI_OF = {
    "sweep": lambda flag: SweepSpec(name="s", base={}, tracking_uri=flag).resolved().tracking_uri,
    "pool": lambda flag: parse_config([] if flag is None else ["--tracking-uri", flag])
    .tracking_uri,
    # report, leaderboard and compare share one parser and its _store
    "report/leaderboard/compare": lambda flag: _store(argparse.Namespace(tracking_uri=flag))[0],
}


@pytest.mark.parametrize("command", list(TRACKING_URI_OF))
def test_the_tracking_uri_is_the_flag_else_the_variable_else_the_homes(command, home,
                                                                       monkeypatch):
    tracking_uri_of = TRACKING_URI_OF[command]
    assert tracking_uri_of(None) == embedded_tracking_uri(home)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ENV)
    assert tracking_uri_of(None) == ENV
    assert tracking_uri_of(FLAG) == FLAG


def test_the_resolver_itself(home, monkeypatch):
    assert resolve_tracking_uri(None, home) == f"sqlite:///{home.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ENV)
    assert resolve_tracking_uri(None, home) == ENV
    assert resolve_tracking_uri(FLAG, home) == FLAG
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # set but empty: not a store
    assert resolve_tracking_uri(None, home) == embedded_tracking_uri(home)


def test_verify_reads_the_store_the_variable_names(home, tmp_path, monkeypatch, capsys):
    store = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    MlflowClient(store).create_experiment("leaderboard")  # that store has a leaderboard
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert console(["verify", "abc"]) == 2
    assert "0 leaderboard rows match 'abc'" in capsys.readouterr().err
    # the flag wins over the variable: the home's store has no leaderboard
    assert console(["verify", "abc", "--tracking-uri", embedded_tracking_uri(home)]) == 2
    assert "no experiment 'leaderboard' in this store" in capsys.readouterr().err


def test_a_tracking_server_keeps_its_own_artifacts(home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://192.0.2.1:5000")
    assert SweepSpec(name="s", base={}).resolved().artifact_location is None
    assert parse_config([]).artifact_location is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ENV)
    assert SweepSpec(name="s", base={}).resolved().artifact_location == (
        (home / "mlartifacts").resolve().as_uri())


# ---------------------------------------------------------------- Optuna and Ray
def test_the_optuna_storage_is_the_flag_else_the_variable_else_the_homes(home, monkeypatch):
    assert SweepSpec(name="s", base={}).resolved().optuna_storage == embedded_optuna_storage(home)
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://u@192.0.2.1/env")
    assert SweepSpec(name="s", base={}).resolved().optuna_storage == (
        "postgresql://u@192.0.2.1/env")
    flagged = SweepSpec(name="s", base={}, optuna_storage="postgresql://u@192.0.2.1/flag")
    assert flagged.resolved().optuna_storage == "postgresql://u@192.0.2.1/flag"


def test_the_ray_address_is_the_flag_else_the_variable_else_a_local_cluster(home, monkeypatch):
    assert cluster_address(None) is None  # ray.init(address=None): a new local cluster
    monkeypatch.setenv("RAY_ADDRESS", "192.0.2.1:6379")
    assert cluster_address(None) == "192.0.2.1:6379"
    assert cluster_address("198.51.100.1:6379") == "198.51.100.1:6379"


@pytest.mark.parametrize("argv, variables", [
    (["sweep", "he_wrn", "--help"], ["$MLFLOW_TRACKING_URI", "$OPTUNA_STORAGE", "$RAY_ADDRESS"]),
    (["pool", "--help"], ["$MLFLOW_TRACKING_URI", "$RAY_ADDRESS"]),
    (["verify", "--help"], ["$MLFLOW_TRACKING_URI"]),
    (["leaderboard", "--help"], ["$MLFLOW_TRACKING_URI"]),
    (["report", "--help"], ["$MLFLOW_TRACKING_URI", "$OPTUNA_STORAGE"]),
    (["compare", "--help"], ["$MLFLOW_TRACKING_URI"]),
])
def test_each_help_names_the_variable(argv, variables, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")
    try:
        console(argv)
    except SystemExit as exit_info:
        assert exit_info.code == 0
    shown = capsys.readouterr().out
    assert all(variable in shown for variable in variables), shown


# ---------------------------------------------------------------- a real sweep
@pytest.mark.integration
def test_a_sweep_lands_its_runs_in_the_store_the_variable_names(ray_cluster, home, tmp_path,
                                                                monkeypatch, capsys):
    """The cluster (started before the variables were set) has workers without them: the
    trials find the store through the sweep's config, and the driver through the variable."""
    tracking = f"sqlite:///{tmp_path / 'stores' / 'tracking.db'}"
    studies = f"sqlite:///{tmp_path / 'stores' / 'studies.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("OPTUNA_STORAGE", studies)
    spec = SweepSpec(name="conventions", base={**SMOKE_BASE, "defense": "pgd_at", "epochs": 1},
                     num_samples=1, max_concurrent=1)
    assert sweep_main(spec, "a one-trial sweep", argv=[]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["trials"] == 1 and summary["errors"] == 0

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([experiment.experiment_id])
    kinds = sorted(run.data.tags.get("kind") for run in runs)
    assert kinds == ["sweep", "trial"]
    (trial,) = [run for run in runs if run.data.tags["kind"] == "trial"]
    assert trial.info.status == "FINISHED"
    assert client.get_metric_history(trial.info.run_id, "val_robust_accuracy")
    assert trial.data.tags.get("evaluation_status") == "pending"
    assert len(optuna.load_study(study_name="conventions", storage=studies).trials) == 1
    # nothing in the home's own stores
    assert not (home / "mlflow.db").exists() and not (home / "optuna.db").exists()
    # the report finds the sweep's study through the same variable
    assert console(["report", "--out", str(tmp_path / "report")]) == 0
    assert list((tmp_path / "report").glob("sweep_conventions*.png"))
