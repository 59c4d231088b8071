"""A real smoke sweep: Ray Tune + Optuna (sqlite) + ASHA + MLflow (sqlite) on real MNIST."""

import json

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from sweeps.cli import SMOKE_BASE, summarize
from sweeps.runner import run_sweep
from sweeps.spec import SweepSpec
from trainables import data
from trainables.checkpoints import load_checkpoint
from trainables.engine import evaluate

pytestmark = pytest.mark.integration


@pytest.fixture()
def sweep_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_SWEEPS_HOME", str(tmp_path))
    return tmp_path


def test_smoke_sweep_end_to_end(ray_cluster, sweep_home, capfd):
    trials = 6  # with ASHA's halving, a trial that trails at the first rung stops there
    # epochs long enough (~1 s) for the scheduler's decision to arrive before the next report
    spec = SweepSpec(name="smoke", base={**SMOKE_BASE, "defense": "trades"},
                     num_samples=trials, max_concurrent=2, seed=1)
    results = run_sweep(spec)
    summary = summarize(results)
    assert summary["trials"] == trials and summary["errors"] == 0
    epochs = sorted(r["epochs"] for r in summary["results"])
    assert epochs[0] < SMOKE_BASE["epochs"] == epochs[-1], "ASHA stopped no trial early"

    resolved = spec.resolved()
    client = MlflowClient(resolved.tracking_uri)
    experiment = client.get_experiment_by_name(resolved.experiment)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # the sweep's cost: all its trials', early stopped ones included
    assert parents[0].data.tags["device_kind"] == "cpu"
    assert parents[0].data.metrics["device_hours"] == pytest.approx(
        sum(r.data.metrics["device_hours"] for r in runs if r.data.tags.get("kind") == "trial"))
    assert summary["device_unit"] == "CPU-core-h"
    assert summary["device_hours"] == pytest.approx(parents[0].data.metrics["device_hours"])
    assert len(children) == trials
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    trial_ids = {r["trial_id"] for r in summary["results"]}
    assert {r.data.tags["trial_id"] for r in children} == trial_ids
    for run in children:
        history = client.get_metric_history(run.info.run_id, "val_robust_accuracy")
        reported = next(r for r in summary["results"] if r["trial_id"] == run.data.tags["trial_id"])
        assert len(history) == reported["epochs"]
        assert run.data.params["defense"] == "trades"
        # validated as the sweeps validate: best-iterate PGD on the CW margin
        assert (run.data.params["eval_loss"], run.data.params["eval_keep"]) == ("cw", "best")
        assert {"data_checksum", "code_version", "dataset", "model"} <= set(run.data.tags)
        # the trial paid for every second it held its CPU core, validation included
        timed = sum(m.value for key in ("train_seconds", "val_eval_seconds")
                    for m in client.get_metric_history(run.info.run_id, key))
        assert run.data.tags["device_kind"] == "cpu" and spec.cpus_per_trial == 1.0
        assert run.data.metrics["device_hours"] >= timed * spec.cpus_per_trial / 3600 > 0
        assert run.data.metrics["held_seconds"] >= timed
    finished = [r for r in children if r.info.status == "FINISHED"]
    stopped = [r for r in children if r.info.status == "KILLED"]
    assert finished and stopped and len(finished) + len(stopped) == trials
    assert all(r.data.tags.get("evaluation_status") == "pending" for r in finished)
    assert all(r.data.tags.get("stopped_early") == "true" for r in stopped)

    study = optuna.load_study(study_name="smoke", storage=resolved.optuna_storage)
    assert len(study.trials) == trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

    # one line per trial event on the terminal, Ray Tune's tables nowhere, every result logged
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[smoke] trial")]
    assert sum(" started: " in line for line in lines) == trials
    assert sum(" finished 3 epochs: " in line for line in lines) == len(finished)
    assert sum(" stopped early by the scheduler after " in line for line in lines) == len(stopped)
    assert "Trial status" not in err and "Configuration for experiment" not in err
    events = [json.loads(line) for line in (sweep_home / "logs" / "smoke.log").read_text()
              .splitlines() if line.startswith("{")]
    assert sum(e["event"] == "result" for e in events) == sum(
        r["epochs"] for r in summary["results"])

    # the published best checkpoint loads from MLflow and scores as reported
    best = max(finished, key=lambda r: float(r.data.tags["best_val_robust_accuracy"]))
    local = client.download_artifacts(best.info.run_id, "best_checkpoint", str(sweep_home))
    checkpoint = load_checkpoint(local)
    config = checkpoint.config
    val = data.load_dataset("mnist", "val", subset=config.val_subset)
    # as the trial validated: its loss and iterate kept, the best iterate from a seeded start
    scores = evaluate(checkpoint.model, val, epsilon=config.epsilon, steps=config.eval_steps,
                      step_size=config.eval_step_size, loss=config.eval_loss,
                      keep=config.eval_keep,
                      random_start="uniform" if config.eval_keep == "best" else "none",
                      generator=torch.Generator().manual_seed(config.seed))
    assert scores["robust_accuracy"] == pytest.approx(
        float(best.data.tags["best_val_robust_accuracy"]))
    assert scores["clean_accuracy"] == checkpoint.metrics["val_clean_accuracy"]


def test_a_diverging_trial_fails_with_its_reason(ray_cluster, sweep_home):
    spec = SweepSpec(name="diverge", base={**SMOKE_BASE, "defense": "pgd_at", "lr": 1e30},
                     num_samples=1, max_concurrent=1)
    summary = summarize(run_sweep(spec))
    assert summary["trials"] == 1 and summary["errors"] == 1
    assert "diverged" in summary["results"][0]["error"]
    resolved = spec.resolved()
    client = MlflowClient(resolved.tracking_uri)
    experiment = client.get_experiment_by_name(resolved.experiment)
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.kind = 'trial'")
    assert run.info.status == "FAILED"
    assert "diverged at epoch 1" in run.data.tags["failure"]


@pytest.mark.parametrize("sampler", ["nsga2", "cmaes"])
def test_pareto_and_cma_es_samplers(ray_cluster, sweep_home, sampler):
    spec = SweepSpec(name=f"sampler-{sampler}", base={**SMOKE_BASE, "defense": "trades",
                                                      "epochs": 1},
                     num_samples=2, max_concurrent=2, sampler=sampler)
    summary = summarize(run_sweep(spec))
    assert summary["trials"] == 2 and summary["errors"] == 0
    study = optuna.load_study(study_name=spec.name, storage=spec.resolved().optuna_storage)
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if sampler == "nsga2":  # clean and robust accuracy, both maximised
        assert len(study.directions) == 2
        assert all(len(t.values) == 2 for t in study.trials)
    assert all("beta" in t.params and "weight_decay" in t.params for t in study.trials)
