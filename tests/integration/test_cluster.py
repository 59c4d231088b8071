"""Sweeps against real clusters: ``ray job submit``, a killed driver, a lost worker node, and a
tracking server that goes away for a minute. Each test starts and stops its own processes."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.cluster import (
    BIN,
    ROOT,
    MlflowServer,
    RayNode,
    assert_sweep_consistent,
    finished_optuna_trials,
    kill_group,
    spawn,
    summary_of,
    trial_runs,
)

pytestmark = pytest.mark.integration
SMOKE = ["sweeps/emr_wrn.py", "--smoke"]


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out waiting for {what}")


def test_ray_job_submit_runs_the_smoke_sweep(tmp_path):
    head = RayNode(tmp_path / "ray", cpus=2, dashboard=True)
    try:
        head.wait_until_up(nodes=1)
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_API_SERVER_ADDRESS": head.dashboard_url}
        runtime_env = json.dumps({"env_vars": {"ROBUST_SWEEPS_HOME": str(tmp_path / "home")}})
        submit = [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--runtime-env-json",
                  runtime_env, "--", str(BIN / "python"), *SMOKE, "--samples", "2", "--epochs",
                  "1"]
        deadline = time.monotonic() + 120
        while True:  # the head's job agent registers a few seconds after the node is up
            result = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=600)
            if "No available agent" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "succeeded" in result.stdout + result.stderr
        log = tmp_path / "job.log"
        log.write_text(result.stdout)
        summary = summary_of(log)
        assert summary["trials"] == 2 and summary["errors"] == 0

        # the evaluation pool, submitted the same way, attacks both published checkpoints
        pool = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--runtime-env-json",
             runtime_env, "--", str(BIN / "python"), "-m", "attacks.pool", "--attacks",
             "pgd:steps=5", "square:queries=50", "--n-examples", "32", "--shard-size", "16",
             "--evaluators", "2", "--settle-seconds", "0.2"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert pool.returncode == 0, pool.stdout[-3000:] + pool.stderr[-3000:]
        lines = [line for line in pool.stdout.splitlines() if line.startswith('{"evaluated"')]
        assert lines, pool.stdout[-3000:]
        assert json.loads(lines[-1])["evaluated"] == 2
        client = MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
        board = client.get_experiment_by_name("leaderboard")
        rows = client.search_runs([board.experiment_id])
        assert len(rows) == 2 and all("pgd5_ce_accuracy" in r.data.metrics for r in rows)
    finally:
        head.stop()


def test_resume_after_the_driver_is_killed(tmp_path):
    """The driver dies the moment Optuna has closed a trial: the study is then ahead of Ray
    Tune's last snapshot, which is the race a resume must survive."""
    env = {"ROBUST_SWEEPS_HOME": str(tmp_path)}
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    optuna_storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [str(BIN / "python"), *SMOKE, "--samples", "4", "--name", "resume"]
    driver = spawn(args, tmp_path / "first.log", env)
    try:
        wait_for(lambda: finished_optuna_trials(optuna_storage, "resume") >= 1, timeout_s=600,
                 what="a first finished trial", poll_s=0.1)
    finally:
        kill_group(driver)  # the driver dies with its local Ray cluster
    second = spawn([*args, "--resume"], tmp_path / "second.log", env)
    assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert_sweep_consistent(summary_of(tmp_path / "second.log"), tracking_uri, optuna_storage,
                            "resume", num_samples=4)


def test_a_lost_worker_node_does_not_lose_trials(tmp_path):
    head = RayNode(tmp_path / "ray", cpus=1)
    worker = None
    try:
        head.wait_until_up(nodes=1)
        worker = RayNode(tmp_path / "ray", cpus=1, head_address=head.address)
        head.wait_until_up(nodes=2)
        env = {"ROBUST_SWEEPS_HOME": str(tmp_path)}
        tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        # no ASHA: a trial stopped early on the lost node would leave nothing to resume
        driver = spawn([str(BIN / "python"), *SMOKE, "--samples", "2", "--address",
                        head.address, "--set", "train_subset=30000", "--epochs", "6",
                        "--no-early-stopping"],
                       tmp_path / "driver.log", env)
        # both trials running (one per node, ~10 s an epoch) and past their first checkpoint
        wait_for(lambda: sum(len(client.get_metric_history(r.info.run_id, "val_robust_accuracy"))
                             >= 1 for client, runs in [trial_runs(tracking_uri)] for r in runs)
                 >= 2, timeout_s=600, what="two trials with a checkpoint")
        worker.stop()
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        summary = summary_of(tmp_path / "driver.log")
        assert summary["trials"] == 2 and summary["errors"] == 0
        results = [json.loads(line) for path in (tmp_path / "ray_results").rglob("result.json")
                   for line in path.read_text().splitlines()]
        assert any(r.get("restarts", 0) >= 1 for r in results), "no trial was resumed"
        resumed = [r for r in results if r.get("restarts", 0) >= 1]
        assert min(r["epoch"] for r in resumed) >= 2, "the resumed trial started from scratch"
    finally:
        if worker is not None:
            worker.stop()
        head.stop()


def test_tracking_server_outage_loses_nothing(tmp_path):
    """Run through the console script on a user's own study file (a YAML study)."""
    study = tmp_path / "my_emr.yaml"
    study.write_text((ROOT / "sweeps" / "studies" / "emr_wrn.yaml").read_text()
                     .replace("name: emr-wrn-34-10-cifar10", "name: my-emr"))
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        env = {"ROBUST_SWEEPS_HOME": str(tmp_path)}
        driver = spawn([str(BIN / "robust-sweeps"), "sweep", "--study", str(study), "--smoke",
                        "--samples", "4", "--tracking-uri", server.uri, "--epochs", "4",
                        "--set", "train_subset=2000"],
                       tmp_path / "driver.log", env)
        wait_for(lambda: trial_runs(server.uri)[1], timeout_s=600, what="a first trial run")
        server.stop()
        time.sleep(60)
        server.start()
        assert driver.wait(timeout=1200) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        summary = summary_of(tmp_path / "driver.log")
        assert summary["trials"] == 4 and summary["errors"] == 0
        client, runs = trial_runs(server.uri)
        assert len(runs) == 4
        by_trial = {r.data.tags["trial_id"]: r for r in runs}
        for result in summary["results"]:
            run = by_trial[result["trial_id"]]
            history = client.get_metric_history(run.info.run_id, "val_robust_accuracy")
            assert [m.step for m in history] == list(range(1, result["epochs"] + 1))
            if run.info.status == "FINISHED":
                files = {a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")}
                assert "best_checkpoint/model.safetensors" in files
        assert any(r.info.status == "FINISHED" for r in runs)
    finally:
        server.stop()
