"""A sweep that reruns its best trial with another seed: Ray Tune + Optuna + MLflow (sqlite) on
real MNIST, one epoch per trial."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from dashboards.groups import GROUP, config_group, run_group, seed_groups
from sweeps.cli import SMOKE_BASE, summarize
from sweeps.runner import run_sweep
from sweeps.spec import SweepSpec

pytestmark = pytest.mark.integration


@pytest.fixture()
def sweep_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_SWEEPS_HOME", str(tmp_path))
    return tmp_path


def test_the_best_trial_reruns_with_another_seed_in_its_group(ray_cluster, sweep_home):
    spec = SweepSpec(name="reruns", base={**SMOKE_BASE, "defense": "trades", "epochs": 1,
                                          "seed": 5},
                     num_samples=2, max_concurrent=2, early_stopping=False, rerun_top_k=1,
                     rerun_seeds=2)
    results = run_sweep(spec)
    assert summarize(results)["trials"] == 3 and summarize(results)["errors"] == 0
    search, (rerun,) = results[:2], results[2:]
    best = max(search, key=lambda r: r.metrics["val_robust_accuracy"])
    other = next(r for r in search if r is not best)
    assert rerun.config["overrides"] == {**best.config["overrides"], "seed": 6}

    resolved = spec.resolved()
    client = MlflowClient(resolved.tracking_uri)
    experiment = client.get_experiment_by_name(resolved.experiment)
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs(
        [experiment.experiment_id], filter_string="tags.kind = 'trial'")}
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs.values())
    best_run, rerun_run, other_run = (runs[r.metrics["trial_id"]] for r in (best, rerun, other))
    assert rerun_run.data.tags["seed_rerun"] == "true"
    assert "seed_rerun" not in best_run.data.tags | other_run.data.tags
    assert (best_run.data.params["seed"], rerun_run.data.params["seed"]) == ("5", "6")
    assert ({k: v for k, v in rerun_run.data.params.items() if k != "seed"}
            == {k: v for k, v in best_run.data.params.items() if k != "seed"})
    assert rerun_run.data.tags[GROUP] == best_run.data.tags[GROUP] != other_run.data.tags[GROUP]
    # the tag is what a run without it would be grouped by: its params without the seed
    assert all(config_group(r.data.params) == r.data.tags[GROUP] for r in runs.values())
    assert rerun_run.data.tags["evaluation_status"] == "pending"  # published like any trial

    rows = pd.DataFrame([{"run_id": r.info.run_id, GROUP: run_group(r.data.tags, r.data.params),
                          "seed": r.data.params["seed"],
                          "val_robust_accuracy": r.data.metrics["val_robust_accuracy"]}
                         for r in runs.values()])
    groups = seed_groups(rows, ["val_robust_accuracy"]).set_index(GROUP)
    group = groups.loc[best_run.data.tags[GROUP]]
    assert group["n"] == 2 and group["seeds"] == (5, 6)
    assert set(group["run_ids"]) == {best_run.info.run_id, rerun_run.info.run_id}
    assert group["val_robust_accuracy_mean"] == pytest.approx(
        (best.metrics["val_robust_accuracy"] + rerun.metrics["val_robust_accuracy"]) / 2)
    assert groups.loc[other_run.data.tags[GROUP], "n"] == 1
