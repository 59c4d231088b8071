"""Evaluation bookkeeping against a real sqlite MLflow store: finding, leasing, downloading and
recording published checkpoints. Runs are published the way trials publish them."""

from __future__ import annotations

import pytest
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from dashboards import queue
from dashboards.artifacts import download_checkpoint
from dashboards.queue import (
    EVAL_FAILURE,
    EVAL_LEASE_EXPIRES,
    EVAL_LEASE_OWNER,
    EVAL_RESULT,
    MAX_FAILURE_LENGTH,
    STATUS_TAG,
    claim,
    completed_evaluation,
    find_candidates,
    finish,
    record_evaluation,
    renew,
)
from dashboards.runs import TrialTracker

CHECKPOINT_FILES = {"model.safetensors": bytes(range(256)) * 40,
                    "config.json": b'{"defense": "trades", "model": "mlp"}'}


class Store:
    def __init__(self, root):
        self.root = root
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.artifacts = (root / "art").as_uri()
        self.client = MlflowClient(self.uri)
        self.checkpoint = root / "checkpoint"
        self.checkpoint.mkdir()
        for name, data in CHECKPOINT_FILES.items():
            (self.checkpoint / name).write_bytes(data)

    def experiment(self, name: str) -> str:
        return self.client.create_experiment(name, artifact_location=self.artifacts)

    def trial(self, experiment: str, sweep: str, trial_id: str, best: float | None,
              status: str | None = "pending") -> str:
        """A trial run as ``train_trial`` leaves it: published (``status``) or still running."""
        tracker = TrialTracker(
            tracking_uri=self.uri, experiment=experiment, sweep=sweep, trial_id=trial_id,
            parent_run_id=None, artifact_location=self.artifacts,
            params={"lr": 0.1, "defense_params": {"beta": 6.0}},
            tags={"sweep": sweep, "defense": "trades", "dataset": "mnist", "model": "mlp",
                  "code_version": "abc123", "data_checksum": "d41d8"})
        history = [{"epoch": 1, "timestamp": 1_000, "val_robust_accuracy": best or 0.0}]
        if status is None:
            assert tracker.sync(history)
        else:
            tracker.publish(history, self.checkpoint, timeout_s=0, tags={
                STATUS_TAG: status, "best_epoch": "1", "best_val_robust_accuracy": str(best)})
        return tracker.run_id

    def tags(self, run_id: str) -> dict[str, str]:
        return self.client.get_run(run_id).data.tags


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("mlflow"))


def ids(candidates) -> list[str]:
    return [c.run_id for c in candidates]


def test_find_candidates_returns_pending_published_trials(store):
    store.experiment("find")
    low = store.trial("find", "s1", "t-low", 0.4)
    high = store.trial("find", "s1", "t-high", 0.7)
    store.trial("find", "s1", "t-running", None, status=None)
    store.trial("find", "s1", "t-done", 0.9, status="done")
    store.trial("find", "s1", "t-failed", 0.95, status="failed")

    found = find_candidates(store.uri, experiments=["find"])
    assert ids(found) == [high, low]  # best validation robust accuracy first
    best = found[0]
    assert best.run_name == "t-high" and best.best_metric == pytest.approx(0.7)
    assert best.tags["kind"] == "trial" and best.tags["sweep"] == "s1"
    assert best.params["defense_params.beta"] == "6.0" and best.params["lr"] == "0.1"
    assert best.experiment_id == store.client.get_experiment_by_name("find").experiment_id
    assert {high, low} <= set(ids(find_candidates(store.uri)))  # all experiments
    assert find_candidates(store.uri, experiments=["no-such-experiment"]) == []
    assert find_candidates(store.uri, experiments=["find"], sweep="other") == []


def test_lease_blocks_others_until_it_expires(store):
    store.experiment("lease")
    run = store.trial("lease", "s", "t", 0.5)
    assert claim(store.uri, run, owner="A", lease_seconds=60, settle_seconds=0, now=1000)
    tags = store.tags(run)
    assert (tags[STATUS_TAG], tags[EVAL_LEASE_OWNER]) == ("claimed", "A")
    assert float(tags[EVAL_LEASE_EXPIRES]) == 1060

    assert not claim(store.uri, run, owner="B", lease_seconds=60, settle_seconds=0, now=1030)
    assert store.tags(run)[EVAL_LEASE_OWNER] == "A"
    assert find_candidates(store.uri, experiments=["lease"], now=1030) == []
    assert ids(find_candidates(store.uri, experiments=["lease"], owner="A", now=1030)) == [run]
    # a restarted pool takes its own work back, with a fresh lease
    assert claim(store.uri, run, owner="A", lease_seconds=60, settle_seconds=0, now=1030)
    assert float(store.tags(run)[EVAL_LEASE_EXPIRES]) == 1090

    assert ids(find_candidates(store.uri, experiments=["lease"], now=1091)) == [run]
    assert claim(store.uri, run, owner="B", lease_seconds=60, settle_seconds=0, now=1091)
    assert store.tags(run)[EVAL_LEASE_OWNER] == "B"
    assert not renew(store.uri, run, owner="A", lease_seconds=60, now=1092)
    assert not finish(store.uri, run, owner="A", status="done", now=1092)
    assert store.tags(run)[STATUS_TAG] == "claimed"
    assert renew(store.uri, run, owner="B", lease_seconds=60, now=1100)
    assert float(store.tags(run)[EVAL_LEASE_EXPIRES]) == 1160


def test_claim_lost_to_a_later_writer_backs_off(store, monkeypatch):
    """A rival that read "pending" just before A's write writes during A's settle delay."""
    store.experiment("race")
    run = store.trial("race", "s", "t", 0.5)
    rival_tags = [RunTag(STATUS_TAG, "claimed"), RunTag(EVAL_LEASE_OWNER, "B"),
                  RunTag(EVAL_LEASE_EXPIRES, "1600")]
    settles = []

    def rival_writes_while_settling(seconds):
        settles.append(seconds)
        store.client.log_batch(run, tags=rival_tags)

    monkeypatch.setattr(queue.time, "sleep", rival_writes_while_settling)
    assert not claim(store.uri, run, owner="A", lease_seconds=600, settle_seconds=0.25, now=1000)
    monkeypatch.undo()
    assert settles == [0.25]
    assert store.tags(run)[EVAL_LEASE_OWNER] == "B"
    assert not renew(store.uri, run, owner="A", lease_seconds=600, now=1001)
    assert claim(store.uri, run, owner="B", lease_seconds=600, settle_seconds=0, now=1001)


def test_done_and_failed_are_never_returned_or_claimed(store):
    store.experiment("terminal")
    done = store.trial("terminal", "s", "t-done", 0.5)
    failed = store.trial("terminal", "s", "t-failed", 0.6)
    for run in (done, failed):
        assert claim(store.uri, run, owner="A", lease_seconds=60, settle_seconds=0, now=0)
    assert finish(store.uri, done, owner="A", status="done", result_run="leaderboard-run")
    assert finish(store.uri, failed, owner="A", status="failed", reason="x" * 50_000)

    tags = store.tags(done)
    assert (tags[STATUS_TAG], tags[EVAL_RESULT]) == ("done", "leaderboard-run")
    assert EVAL_LEASE_EXPIRES not in tags
    tags = store.tags(failed)
    assert tags[STATUS_TAG] == "failed" and EVAL_LEASE_EXPIRES not in tags
    assert tags[EVAL_FAILURE] == "x" * MAX_FAILURE_LENGTH
    assert not finish(store.uri, done, owner="A", status="failed", reason="late")  # done stays

    for now in (0, 1e12):
        assert find_candidates(store.uri, experiments=["terminal"], owner="A", now=now) == []
        for run in (done, failed):
            assert not claim(store.uri, run, owner="A", lease_seconds=60, settle_seconds=0,
                             now=now)
    assert store.tags(done)[STATUS_TAG] == "done"
    with pytest.raises(ValueError, match="status"):
        finish(store.uri, done, owner="A", status="claimed")


def test_top_k_ranks_published_trials_then_keeps_those_awaiting(store):
    store.experiment("rank")
    accuracy = {"t1": 0.50, "t2": 0.90, "t3": 0.70, "t4": 0.80, "t5": 0.60}
    runs = {trial: store.trial("rank", "sweep-a", trial, best,
                               status="done" if trial == "t2" else "pending")
            for trial, best in accuracy.items()}
    store.trial("rank", "sweep-b", "other", 0.99)  # another sweep's better run
    store.trial("rank", "sweep-a", "running", None, status=None)  # not published

    top3 = find_candidates(store.uri, experiments=["rank"], sweep="sweep-a", top_k=3)
    assert ids(top3) == [runs["t4"], runs["t3"]]  # 0.9 is the best but already done
    assert [c.best_metric for c in top3] == [0.80, 0.70]
    everything = find_candidates(store.uri, experiments=["rank"], sweep="sweep-a")
    assert ids(everything) == [runs[t] for t in ("t4", "t3", "t5", "t1")]

    # a finalist under someone else's valid lease is skipped, not replaced by a weaker run
    assert claim(store.uri, runs["t4"], owner="X", lease_seconds=60, settle_seconds=0, now=0)
    top3 = find_candidates(store.uri, experiments=["rank"], sweep="sweep-a", top_k=3, now=30)
    assert ids(top3) == [runs["t3"]]
    top3 = find_candidates(store.uri, experiments=["rank"], sweep="sweep-a", top_k=3, now=61)
    assert ids(top3) == [runs["t4"], runs["t3"]]


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_download_is_complete_and_idempotent(store, tmp_path, monkeypatch):
    store.experiment("download")
    run = store.trial("download", "s", "t", 0.5)
    path = download_checkpoint(store.uri, run, tmp_path / "cache")
    assert path == tmp_path / "cache" / run
    assert _tree(path) == CHECKPOINT_FILES
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [run]  # no staging left behind

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(MlflowClient, "download_artifacts", no_download)
    assert download_checkpoint(store.uri, run, tmp_path / "cache") == path
    monkeypatch.undo()

    partial = tmp_path / "partial" / run  # e.g. copied by hand, never marked complete
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"trunc")
    (partial / "stray.txt").write_text("left over")
    assert _tree(download_checkpoint(store.uri, run, tmp_path / "partial")) == CHECKPOINT_FILES


def test_download_without_published_checkpoint_is_a_clear_error(store, tmp_path):
    store.experiment("unpublished")
    run = store.trial("unpublished", "s", "t", None, status=None)
    with pytest.raises(FileNotFoundError, match=f"{run}.*best_checkpoint"):
        download_checkpoint(store.uri, run, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_record_evaluation_writes_one_complete_run(store, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "per_example.csv").write_text("index,pgd\n0,1\n")
    identity = {"source_run": "trial-run-1", "attack_suite": "quick"}
    kwargs = dict(identity=identity, run_name="trades-mlp", params={"epsilon": "0.1"},
                  tags={"defense": "trades"}, artifacts_dir=report,
                  artifact_location=store.artifacts)
    assert completed_evaluation(store.uri, "leaderboard", identity) is None  # no experiment yet

    run_id, written = record_evaluation(store.uri, "leaderboard", metrics={
        "clean_accuracy": 0.98, "robust_accuracy": 0.91}, **kwargs)
    assert written
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"epsilon": "0.1"}
    assert run.data.metrics == {"clean_accuracy": 0.98, "robust_accuracy": 0.91}
    assert [m.step for m in store.client.get_metric_history(run_id, "robust_accuracy")] == [0]
    assert {"kind": "evaluation", "evaluation_complete": "true", "defense": "trades",
            **identity}.items() <= run.data.tags.items()
    assert [a.path for a in store.client.list_artifacts(run_id, "evaluation")] == [
        "evaluation/per_example.csv"]
    assert completed_evaluation(store.uri, "leaderboard", identity) == run_id
    assert completed_evaluation(store.uri, "leaderboard", {**identity, "source_run": "x"}) is None

    again, written = record_evaluation(store.uri, "leaderboard", metrics={
        "clean_accuracy": 0.10, "robust_accuracy": 0.05}, **kwargs)
    assert (again, written) == (run_id, False)
    assert store.client.get_run(run_id).data.metrics["robust_accuracy"] == 0.91
    experiment = store.client.get_experiment_by_name("leaderboard").experiment_id
    assert len(store.client.search_runs([experiment])) == 1


def test_record_evaluation_resumes_an_interrupted_run(store):
    experiment = store.experiment("interrupted")
    identity = {"source_run": "trial-run-2", "kind": "evaluation"}
    started = store.client.create_run(experiment, tags=identity).info.run_id  # crashed here
    assert completed_evaluation(store.uri, "interrupted", {"source_run": "trial-run-2"}) is None
    run_id, written = record_evaluation(
        store.uri, "interrupted", identity={"source_run": "trial-run-2"}, run_name="r",
        params={}, metrics={"robust_accuracy": 0.5}, tags={}, artifacts_dir=None)
    assert (run_id, written) == (started, True)
    assert store.client.get_run(run_id).data.tags["evaluation_complete"] == "true"


def test_a_published_trial_is_recorded_with_its_reproducibility_record(store):
    """The row of a checkpoint found in the queue carries the training run's seed, schedule,
    batch size, epochs, lr and training data checksum beside the evaluation's own seed."""
    import json

    import torch

    from attacks.evaluate import AttackResult, build_report
    from attacks.pool import record_row
    from attacks.schema import EvaluationRecord
    from attacks.shards import Plan
    from attacks.suite import create_attack
    from trainables.config import TrialConfig

    store.experiment("reproducible")
    run = store.trial("reproducible", "s", "t", 0.5)
    (candidate,) = find_candidates(store.uri, experiments=["reproducible"])
    attack = create_attack("pgd-100-cw", epsilon=0.1, seed=9)
    report = build_report(torch.tensor([True, True, False]), [AttackResult(
        "pgd-100-cw", attack.name, True, attack.settings, torch.tensor([True, False, True]),
        3.0)], epsilon=0.1, norm="linf", seed=9)
    plan = Plan(attacks=("pgd-100-cw",), epsilon=0.1, norm="linf", seed=9, n_examples=3,
                shard_size=3)
    config = TrialConfig(seed=21, epochs=4, lr=0.2, batch_size=32, schedule="piecewise",
                         lr_milestones=[2, 3], lr_gamma=0.5).to_dict()
    row, written = record_row(store.uri, "board", report=report, plan=plan, config=config,
                              candidate=candidate, checkpoint="/ck", data_checksum="points",
                              seconds=5.0, train_seconds=60.0,
                              artifact_location=store.artifacts)
    assert written
    data = store.client.get_run(row).data
    assert {"eval_seed": "9", "train_seed": "21", "epochs": "4", "lr": "0.2",
            "batch_size": "32", "lr_schedule": "piecewise", "lr_milestones": "[2, 3]",
            "lr_gamma": "0.5", "train_data_checksum": "d41d8"}.items() <= data.params.items()
    # a point misclassified clean counts as broken, whatever the attack reported
    assert data.metrics["pgd100_cw_accuracy"] == pytest.approx(1 / 3)
    assert data.tags["source_run"] == run and data.tags["attack.pgd100_cw"]
    path = store.client.download_artifacts(row, "evaluation/report.json", str(store.root))
    with open(path) as file:
        record = EvaluationRecord.from_dict(json.load(file))
    assert record.source.source_run == run and record.source.data_checksum == "points"
    assert (record.training.seed, record.training.data_checksum) == (21, "d41d8")
    assert record.training.lr_milestones == (2, 3) and record.eval_seed == 9
