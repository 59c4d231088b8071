"""The searcher's restored state against the Optuna study it writes to (Ray Tune objects only,
no cluster): a driver killed after the study moved on but before Tune's next snapshot."""

import optuna
import pytest

from sweeps.resume import ResumableOptunaSearch


def space(trial):
    return {"overrides": {"lr": trial.suggest_float("lr", 1e-3, 1.0, log=True)}}


def searcher(storage: str) -> ResumableOptunaSearch:
    return ResumableOptunaSearch(space=space, metric="score", mode="max", study_name="s",
                                 storage=optuna.storages.RDBStorage(storage),
                                 sampler=optuna.samplers.RandomSampler(seed=0))


@pytest.fixture
def killed(tmp_path):
    """Snapshot after two suggestions; then trial a finishes and trial c is asked, unsaved."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = searcher(storage)
    configs = {tid: first.suggest(tid) for tid in ("a", "b")}
    first.on_trial_result("a", {"score": 0.3, "training_iteration": 1})
    snapshot = str(tmp_path / "searcher.pkl")
    first.save(snapshot)
    first.on_trial_result("a", {"score": 0.5, "training_iteration": 2})
    first.on_trial_complete("a", {"score": 0.5, "training_iteration": 2})
    configs["c"] = first.suggest("c")
    restored = searcher(storage)
    restored.restore(snapshot)
    return restored, configs, optuna.load_study(study_name="s", storage=storage)


def test_a_replayed_finished_trial_does_not_reach_the_study(killed):
    restored, _, study = killed
    restored.on_trial_result("a", {"score": 0.9, "training_iteration": 2})  # the replay
    restored.on_trial_complete("a", {"score": 0.9, "training_iteration": 2})
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE and first.value == 0.5
    restored.on_trial_result("b", {"score": 0.4, "training_iteration": 1})  # unaffected
    restored.on_trial_complete("b", {"score": 0.4, "training_iteration": 1})
    assert study.trials[1].state == optuna.trial.TrialState.COMPLETE


def test_a_trial_asked_after_the_snapshot_is_adopted_not_asked_again(killed):
    restored, configs, study = killed
    adopted = restored.suggest("d")
    assert adopted["trial_number"] == configs["c"]["trial_number"] == 2
    assert adopted["overrides"] == configs["c"]["overrides"]
    fresh = restored.suggest("e")  # nothing left to adopt: a new trial
    assert fresh["trial_number"] == 3
    restored.on_trial_complete("d", {"score": 0.7, "training_iteration": 1})
    assert len(study.trials) == 4
    assert study.trials[2].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[2].value == 0.7


def test_without_the_reconcile_the_replay_fails_as_ray_does(killed, tmp_path):
    """The race itself: Ray's own searcher, restored the same way, raises on the replay."""
    from ray.tune.search.optuna import OptunaSearch

    plain = OptunaSearch(space=space, metric="score", mode="max", study_name="s",
                         storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"))
    plain.restore(str(tmp_path / "searcher.pkl"))
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        plain.on_trial_result("a", {"score": 0.9, "training_iteration": 3})


def saved_checkpoint(folder, epochs: int) -> None:
    """A trial checkpoint folder as the trainable writes it (files, then the record)."""
    from trainables.trainable import write_record

    (folder / "latest").mkdir(parents=True)
    (folder / "latest" / "model.safetensors").write_bytes(b"w" * (100 + epochs))
    history = [{"epoch": e, "val_robust_accuracy": e / 10, "timestamp": e} for e in
               range(1, epochs + 1)]
    write_record(folder, {"history": history, "best": history[-1], "restarts": 0})


def test_the_newest_complete_checkpoint_is_found_and_a_cut_one_skipped(tmp_path):
    import pyarrow.fs

    from sweeps.resume import is_complete, newest_checkpoint

    fs = pyarrow.fs.LocalFileSystem()
    for epochs in (1, 2, 3):
        saved_checkpoint(tmp_path / f"checkpoint_00000{epochs - 1}", epochs)
    cut = tmp_path / "checkpoint_000002" / "latest" / "model.safetensors"
    cut.write_bytes(cut.read_bytes()[:50])  # the copy to storage was cut short
    (tmp_path / "checkpoint_000003").mkdir()  # created, record never written
    assert is_complete(fs, str(tmp_path / "checkpoint_000002")) is None
    newest = newest_checkpoint(fs, str(tmp_path))
    assert newest.checkpoint.path.endswith("checkpoint_000001")
    assert newest.metrics["training_iteration"] == 2 and newest.metrics["epoch"] == 2
    assert newest.metrics["best_val_robust_accuracy"] == 0.2
    assert newest_checkpoint(fs, str(tmp_path / "missing")) is None


def test_a_sweep_started_again_before_any_snapshot_adopts_the_trials_begun(tmp_path):
    from sweeps.resume import has_snapshot

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    killed = searcher(storage)
    begun = [killed.suggest(tid) for tid in ("a", "b")]  # the driver dies here
    assert not has_snapshot(str(tmp_path / "ray_results" / "s"))
    again = ResumableOptunaSearch(space=space, metric="score", mode="max", study_name="s",
                                  storage=optuna.storages.RDBStorage(storage), adopt_running=True)
    assert [again.suggest(tid) for tid in ("c", "d")] == begun
    assert again.suggest("e")["trial_number"] == 2
    (tmp_path / "ray_results" / "s").mkdir(parents=True)
    (tmp_path / "ray_results" / "s" / "experiment_state-2026-12-04_10-00-00.json").write_text("{}")
    assert has_snapshot(str(tmp_path / "ray_results" / "s"))


def test_a_trial_asked_and_finished_after_the_snapshot_is_adopted_and_not_reported(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = searcher(storage)
    first.suggest("a")
    snapshot = str(tmp_path / "searcher.pkl")
    first.save(snapshot)
    lost = first.suggest("b")  # asked after the snapshot ...
    first.on_trial_complete("b", {"score": 0.8, "training_iteration": 1})  # ... and finished
    restored = searcher(storage)
    restored.restore(snapshot)
    again = restored.suggest("c")
    assert again == lost  # same Optuna trial, same parameters
    restored.on_trial_result("c", {"score": 0.1, "training_iteration": 1})  # the retraining
    restored.on_trial_complete("c", {"score": 0.1, "training_iteration": 1})
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 2 and study.trials[1].value == 0.8


def test_a_store_cut_short_while_being_created_is_never_left_in_place(tmp_path):
    from mlflow.tracking import MlflowClient

    from sweeps.environment import create_sqlite_store

    uri = f"sqlite:///{tmp_path / 'stores' / 'mlflow.db'}"

    def dies_halfway(staging_uri):
        MlflowClient(staging_uri).search_experiments()  # tables made ...
        raise KeyboardInterrupt  # ... and the process stops before the rename

    with pytest.raises(KeyboardInterrupt):
        create_sqlite_store(uri, dies_halfway)
    assert not (tmp_path / "stores" / "mlflow.db").exists()
    assert not list((tmp_path / "stores").glob("*.tmp"))
    create_sqlite_store(uri, lambda staging: MlflowClient(staging).create_experiment("sweeps"))
    assert MlflowClient(uri).get_experiment_by_name("sweeps") is not None
    create_sqlite_store(uri, lambda staging: pytest.fail("an existing store is rebuilt"))
    optuna_uri = f"sqlite:///{tmp_path / 'stores' / 'optuna.db'}"
    create_sqlite_store(optuna_uri, optuna.storages.RDBStorage)
    optuna.create_study(study_name="s", storage=optuna_uri)
