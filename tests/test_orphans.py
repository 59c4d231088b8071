"""Closing what a killed driver left behind (MLflow sqlite store and Optuna study; no Ray)."""

import optuna

from dashboards.runs import Tracking
from sweeps.cli import SMOKE_BASE
from sweeps.runner import close_orphans
from sweeps.spec import SweepSpec


def test_runs_and_optuna_trials_tune_no_longer_knows_are_closed(tmp_path):
    spec = SweepSpec(name="lost", base=dict(SMOKE_BASE), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                     experiment="sweeps", optuna_storage=f"sqlite:///{tmp_path}/o.db",
                     artifact_location=str(tmp_path / "artifacts"))
    tracking = Tracking(spec.tracking_uri, spec.experiment, spec.artifact_location)
    ids = {}
    for trial_id in ("kept", "done", "lost"):
        ids[trial_id] = tracking.get_or_create_run({"sweep": "lost", "trial_id": trial_id},
                                                   run_name=trial_id, tags={"kind": "trial"})
    tracking.set_terminated(ids["done"], "FINISHED")
    other = tracking.get_or_create_run({"sweep": "other", "trial_id": "x"}, run_name="x",
                                       tags={"kind": "trial"})
    study = optuna.create_study(study_name="lost", storage=spec.optuna_storage,
                                direction="maximize")
    finished = study.ask()
    study.tell(finished, 0.5)
    study.ask()  # suggested to a trial that died with the driver

    close_orphans(spec, tracking, known=[{"trial_id": "kept"}, {"trial_id": "done"}])

    status = {k: tracking.client.get_run(v).info for k, v in ids.items()}
    assert status["lost"].status == "KILLED"
    assert "orphaned" in tracking.client.get_run(ids["lost"]).data.tags
    assert status["kept"].status == "RUNNING" and status["done"].status == "FINISHED"
    assert "orphaned" not in tracking.client.get_run(ids["kept"]).data.tags
    assert tracking.client.get_run(other).info.status == "RUNNING"  # another sweep's run
    states = [t.state for t in optuna.load_study(study_name="lost",
                                                 storage=spec.optuna_storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
