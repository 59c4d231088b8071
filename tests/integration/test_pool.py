"""The evaluation pool on a real local Ray cluster and a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from attacks.evaluate import evaluate_model
from dashboards.cost import held
from dashboards.queue import STATUS_TAG
from dashboards.runs import TrialTracker, now_ms
from trainables.checkpoints import save_checkpoint
from trainables.config import TrialConfig

pytestmark = pytest.mark.integration

ATTACKS = ["pgd:steps=10", "square:queries=100", "spsa:steps=3,samples=32"]
N, SHARD = 64, 32


def publish(store: dict, model, *, trial: str, score: float, corrupt: bool = False) -> str:
    config = TrialConfig.from_dict({"dataset": "mnist", "model": "mlp", "epsilon": 0.05,
                                    "model_params": {"hidden": 256, "layers": 2}})
    folder = store["root"] / "published" / trial
    save_checkpoint(folder, model=model, config=config, metrics={"val_robust_accuracy": score})
    if corrupt:
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    tracker = TrialTracker(store["uri"], "sweeps", "s1", trial, None, config.to_dict(),
                           tags={"defense": "standard", "dataset": "mnist", "model": "mlp"},
                           artifact_location=store["artifacts"])
    # the epoch as the trainable logs it: its timings and what the trial has held so far
    held_seconds = 7.5
    tracker.publish([{"epoch": 1, "timestamp": now_ms(), "val_robust_accuracy": score,
                      "train_seconds": 5.0, "val_eval_seconds": 2.0,
                      "held_seconds": held_seconds,
                      **held(held_seconds, cpus=1.0, gpus=0.0).metrics()}], folder,
                    tags={STATUS_TAG: "pending", "best_val_robust_accuracy": str(score)})
    return tracker.run_id


@pytest.fixture()
def store(tmp_path):
    root = tmp_path
    return {"root": root, "uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifacts": (root / "artifacts").as_uri(), "state": root / "state"}


def pool_args(store, *extra: str, mode: str = "full") -> list[str]:
    """The pool's flags; the full mode unless told otherwise (these tests read every
    attack's own column and count (shard, attack) units)."""
    return ["--tracking-uri", store["uri"], "--experiments", "sweeps",
            "--state-dir", str(store["state"]), "--attacks", *ATTACKS,
            "--n-examples", str(N), "--shard-size", str(SHARD), "--settle-seconds", "0.1",
            "--leaderboard", "leaderboard", "--mode", mode, *extra]


def leaderboard_runs(store) -> list:
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("leaderboard")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_pool_evaluates_records_and_adds_nothing_on_rerun(ray_cluster, store, trained_mlp,
                                                          mnist_test_slice, capsys):
    from attacks.pool_cli import main

    good = publish(store, trained_mlp, trial="good", score=0.6)
    bad = publish(store, trained_mlp, trial="bad", score=0.9, corrupt=True)
    summary = main(pool_args(store, "--evaluators", "2"))
    assert summary["evaluated"] == 1 and summary["failed"] == 1

    client = MlflowClient(store["uri"])
    failed = client.get_run(bad).data.tags
    assert failed[STATUS_TAG] == "failed" and "CheckpointError" in failed["evaluation_failure"]
    source = client.get_run(good).data.tags
    assert source[STATUS_TAG] == "done"
    runs = leaderboard_runs(store)
    assert len(runs) == 1
    row = runs[0]
    assert source["evaluation_result_run"] == row.info.run_id
    assert row.data.tags["source_run"] == good and row.data.params["dataset"] == "mnist"

    # the pool's numbers are the evaluator's numbers on each shard, merged
    x, y = (t[:N] for t in _first_test_points())
    expected = {label: [] for label in ATTACKS}
    for start in range(0, N, SHARD):
        report = evaluate_model(trained_mlp, x[start:start + SHARD], y[start:start + SHARD],
                                attacks=ATTACKS, epsilon=0.05, seed=0, checks=False)
        for label in ATTACKS:
            expected[label].append(report.attacks[label].robust)
    document = json.loads(Path(client.download_artifacts(
        row.info.run_id, "evaluation/report.json", str(store["root"]))).read_text())
    columns = [document["attacks"][label]["column"] for label in ATTACKS]
    assert columns == ["pgd10_ce", "square_queries100", "spsa_samples32_steps3"]
    for label, column in zip(ATTACKS, columns, strict=True):
        robust = torch.cat(expected[label])
        assert document["attacks"][label]["robust"] == robust.tolist()
        assert row.data.metrics[f"{column}_accuracy"] == pytest.approx(
            robust.float().mean().item())
    assert row.data.metrics["worst_case_accuracy"] <= \
        row.data.metrics["spsa_samples32_steps3_accuracy"]
    assert row.data.metrics["clean_n"] == N and "clean_ci_low" in row.data.metrics
    # its device-hours: the trial's (training and validation) plus its evaluation's
    trained = client.get_run(good).data.metrics["device_hours"]
    cost = row.data.metrics
    assert cost["train_device_hours"] == pytest.approx(trained) and trained >= 7.0 / 3600
    assert cost["evaluation_device_hours"] >= \
        (float(row.data.tags["evaluation_seconds"]) - 0.05) / 3600 > 0
    assert cost["device_hours"] == pytest.approx(
        cost["train_device_hours"] + cost["evaluation_device_hours"])
    assert row.data.tags["device_kind"] == "cpu"
    # the points' labels travel with the record: its classes add up to the whole
    assert document["labels"] == y.tolist()
    assert sum(c["n"] for c in document["per_class"]) == N
    assert sum(c["worst_case_correct"] for c in document["per_class"]) == \
        round(row.data.metrics["worst_case_accuracy"] * N)
    for entry in document["per_class"]:
        assert row.data.metrics[f"class{entry['label']}_clean_accuracy"] == \
            entry["clean"]["accuracy"]
    indicators = {i["name"]: i for i in document["indicators"]}
    assert set(indicators) == {"unbounded", "fgsm_beats_pgd", "more_steps", "restarts",
                               "transfer"}
    assert indicators["transfer"]["n"] > 0  # a surrogate was trained in the evaluator
    assert not any(i["fired"] for i in indicators.values())

    # the kept adversarial points reproduce the worst case without an attack
    from attacks.verify_cli import main as verify

    assert verify([row.info.run_id[:8], "--tracking-uri", store["uri"], "--json"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert found["ok"] and found["robust"] == round(row.data.metrics["worst_case_accuracy"] * N)
    assert found["kept"] == round((row.data.metrics["clean_accuracy"]
                                   - row.data.metrics["worst_case_accuracy"]) * N)

    again = main(pool_args(store, "--evaluators", "1"))
    assert again["evaluated"] == 0 and again["units_run"] == 0
    assert len(leaderboard_runs(store)) == 1


def test_cascade_pool_writes_the_full_worst_case_and_its_mode(ray_cluster, store, trained_mlp,
                                                              capsys):
    from attacks.pool_cli import main
    from attacks.schema import EvaluationRecord

    publish(store, trained_mlp, trial="good", score=0.6)
    summary = main(pool_args(store, "--evaluators", "2", mode="cascade"))
    assert summary["evaluated"] == 1 and summary["units_run"] == 2 + N // SHARD
    (row,) = leaderboard_runs(store)
    assert row.data.params["eval_mode"] == "cascade" and row.data.tags["eval_mode"] == "cascade"
    record = EvaluationRecord.from_dict(json.loads(Path(MlflowClient(store["uri"])
        .download_artifacts(row.info.run_id, "evaluation/report.json", str(store["root"])))
        .read_text()))
    assert record.mode == "cascade"

    # the full evaluation of each shard: the same worst case; the columns that remain are its
    x, y = (t[:N] for t in _first_test_points())
    full = [evaluate_model(trained_mlp, x[start:start + SHARD], y[start:start + SHARD],
                           attacks=ATTACKS, epsilon=0.05, seed=0, checks=False, indicators=None)
            for start in range(0, N, SHARD)]
    assert list(record.worst_case) == torch.cat([r.worst_case for r in full]).tolist()
    assert row.data.metrics["worst_case_accuracy"] == record.worst_case_accuracy.accuracy
    metrics = row.data.metrics
    for label in ATTACKS:
        attack = record.attack(label)
        assert metrics[f"{attack.column}_attacked"] == attack.attacked
        assert metrics[f"{attack.column}_broken"] == attack.broken
        if record.complete(attack):
            own = torch.cat([r.attacks[label].robust & r.clean for r in full])
            assert metrics[f"{attack.column}_accuracy"] == pytest.approx(own.float().mean())
    # SPSA skipped the points PGD broke: no column of its own
    assert metrics["spsa_samples32_steps3_attacked"] < metrics["clean_accuracy"] * N
    assert "spsa_samples32_steps3_accuracy" not in metrics
    assert "pgd10_ce_accuracy" in metrics and "square_queries100_accuracy" in metrics

    from attacks.verify_cli import main as verify

    assert verify([row.info.run_id[:8], "--tracking-uri", store["uri"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ok"]
    again = main(pool_args(store, "--evaluators", "1", mode="cascade"))
    assert again["evaluated"] == 0 and again["units_run"] == 0


def _first_test_points():
    from trainables.data import load_dataset

    return load_dataset("mnist", "test").tensors()


SLOW_ATTACKS = ["pgd:steps=1500", "spsa:steps=40,samples=512", "square:queries=1500"]


def spawn_pool(store, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "attacks.pool", *pool_args(store), "--attacks", *SLOW_ATTACKS,
            "--shard-size", "16", "--pool-id", "pool-A", "--address", "local",
            "--evaluators", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log.open("a"), text=True,
                            env=env, start_new_session=True)


def test_killed_pool_resumes_without_redoing_units(ray_cluster, store, trained_mlp, tmp_path):
    from attacks.pool_cli import main

    publish(store, trained_mlp, trial="only", score=0.5)
    log = tmp_path / "pool.log"
    first = spawn_pool(store, log)
    units = store["state"] / "evaluations"
    deadline = time.monotonic() + 240
    while len(list(units.rglob("shard*.json"))) < 4:
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the pool made no progress"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in units.rglob("shard*.json")}
    assert 4 <= len(before) < 2 + 3 * 4  # stopped in the middle
    assert not leaderboard_runs(store)

    second = spawn_pool(store, log)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log.read_text()[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["units_reused"] == len(before)
    assert summary["units_run"] == 14 - len(before) and summary["evaluated"] == 1
    for path, (mtime, content) in before.items():  # finished work was not redone
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    killed = leaderboard_runs(store)
    assert len(killed) == 1

    # an uninterrupted pool on the same checkpoint, elsewhere, gets the same numbers
    fresh = {"root": tmp_path / "b", "uri": f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}",
             "artifacts": (tmp_path / "b" / "artifacts").as_uri(), "state": tmp_path / "b" / "s"}
    fresh["root"].mkdir()
    publish(fresh, trained_mlp, trial="only", score=0.5)
    main([*pool_args(fresh), "--attacks", *SLOW_ATTACKS, "--shard-size", "16"])
    (clean,) = leaderboard_runs(fresh)
    def measured(run) -> dict[str, float]:  # every metric but the clocks and the costs
        return {k: v for k, v in run.data.metrics.items()
                if not k.endswith(("_seconds", "_hours", "_per_device_hour"))}

    assert measured(killed[0]) == measured(clean)


def test_watch_mode_picks_up_checkpoints_published_later(store, trained_mlp, tmp_path):
    MlflowClient(store["uri"]).search_experiments()  # the store's tables exist before both
    log = tmp_path / "watch.log"
    args = [sys.executable, "-m", "attacks.pool", *pool_args(store), "--attacks", "pgd:steps=5",
            "--watch", "--poll-seconds", "1", "--address", "local", "--evaluators", "1"]
    watcher = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "evaluators; tracking" not in log.read_text():  # polling an empty store
            assert watcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        publish(store, trained_mlp, trial="late", score=0.5)
        while len(leaderboard_runs(store)) < 1:
            assert watcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert watcher.poll() is None  # still watching
    finally:
        os.killpg(watcher.pid, signal.SIGKILL)
        watcher.wait()
