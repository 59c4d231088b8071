"""Device-hour accounting: what a trial and an evaluation cost, and a leaderboard row's sum."""

import math

import pytest
from mlflow.tracking import MlflowClient

from dashboards.cost import (
    HELD,
    Cost,
    device_kind,
    held,
    per_device_hour,
    total,
    trial_cost,
    unit_cost,
)


def test_gpu_work_is_counted_in_gpu_hours_by_the_fraction_it_holds():
    quarter = held(3600, cpus=4, gpus=0.25)
    assert quarter == Cost(gpu_hours=0.25) and quarter.kind == "gpu"
    assert quarter.device_hours == 0.25 and quarter.unit == "GPU-h"
    assert held(1800, cpus=1, gpus=2).device_hours == pytest.approx(1.0)
    assert device_kind(cpus=8, gpus=0.5) == "gpu" and device_kind(cpus=8, gpus=0) == "cpu"


def test_cpu_work_is_counted_in_cpu_core_hours():
    two = held(1800, cpus=2, gpus=0)
    assert two == Cost(cpu_hours=1.0) and two.kind == "cpu" and two.unit == "CPU-core-h"
    assert held(900, cpus=0.5, gpus=0).device_hours == pytest.approx(0.125)
    assert held(0, cpus=1, gpus=0).kind == "none" and held(0, cpus=1, gpus=0).device_hours == 0
    with pytest.raises(ValueError, match="seconds=-1"):
        held(-1, cpus=1, gpus=0)
    with pytest.raises(ValueError, match="gpus=nan"):
        held(1, cpus=1, gpus=math.nan)


def test_a_restarted_trial_pays_for_every_attempt_validation_included():
    # one epoch: 100 s training + 20 s validation + 5 s checkpointing, crash, then a restart
    # from the checkpoint that held its devices 80 s more
    attempts = [100 + 20 + 5, 80]
    cost = trial_cost(attempts, cpus=1, gpus=0)
    assert cost.device_hours == pytest.approx(205 / 3600)
    assert cost.device_hours > (100 + 80) / 3600  # training seconds alone undercount
    assert trial_cost(attempts, cpus=2, gpus=0.5) == Cost(gpu_hours=0.5 * 205 / 3600)


def test_the_trainable_charges_every_attempt_from_its_start():
    import time

    from trainables.trainable import charge

    # restored from a checkpoint that the first attempt wrote after 125 s; 80 s into the second
    record = {"attempt_seconds": [125.0, 0.0]}
    metrics = {"train_seconds": 50.0, "val_eval_seconds": 20.0}
    charge(record, metrics, time.monotonic() - 80.0, cpus=0.5, gpus=0.0)
    assert record["attempt_seconds"][1] == pytest.approx(80.0, abs=1.0)
    assert metrics["held_seconds"] == pytest.approx(205.0, abs=1.0)
    assert metrics["device_hours"] == metrics["cpu_hours"] == pytest.approx(
        0.5 * metrics["held_seconds"] / 3600)
    assert metrics["gpu_hours"] == 0.0


def test_units_never_mix_silently():
    mixed = Cost(gpu_hours=0.5) + Cost(cpu_hours=2.0)
    assert mixed.kind == "mixed" and math.isnan(mixed.device_hours)
    assert mixed.unit == "GPU-h + CPU-core-h"
    assert mixed.text() == "0.500 GPU-h + 2.000 CPU-core-h"
    assert mixed.metrics() == {"gpu_hours": 0.5, "cpu_hours": 2.0}  # no single figure
    assert math.isnan(per_device_hour(0.8, mixed))
    same = total([Cost(cpu_hours=0.5), Cost(cpu_hours=0.25)])
    assert same.text() == "0.750 CPU-core-h" and per_device_hour(0.6, same) == pytest.approx(0.8)
    assert Cost.from_metrics(same.metrics("train_"), "train_") == same
    assert Cost.from_metrics({"device_hours": 1.0}) is None


def test_an_evaluation_unit_costs_what_its_evaluator_held():
    record = {"seconds": 10.0, HELD: {"seconds": 12.0, "cpus": 1.0, "gpus": 0.25}}
    assert unit_cost(record, cpus=1, gpus=0) == Cost(gpu_hours=0.25 * 12 / 3600)
    # a unit saved without it: its own seconds at the pool's evaluator resources
    assert unit_cost({"seconds": 36.0}, cpus=2, gpus=0) == Cost(cpu_hours=0.02)


def test_a_leaderboard_row_costs_its_trial_training_plus_its_evaluation(tmp_path):
    from boards import synthetic_report
    from mlflow.entities import Metric

    from attacks.pool import record_row
    from attacks.shards import Plan
    from dashboards.leaderboard import defense_costs, load, to_html, to_markdown
    from dashboards.queue import Candidate
    from dashboards.runs import Tracking, log_sweep_cost, sweep_costs, training_cost

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweeps = Tracking(uri, "sweeps")
    parent = sweeps.get_or_create_run({"sweep": "s1", "kind": "sweep"}, run_name="s1",
                                      tags={"defense": "emr"})
    # the trial as the trainable logs it: 2 epochs, the last holding the cost so far
    trial = sweeps.get_or_create_run({"sweep": "s1", "trial_number": "0"}, run_name="trial-0",
                                     parent_run_id=parent, tags={"kind": "trial"})
    epochs = [{"train_seconds": 1000.0, "val_eval_seconds": 400.0, "held_seconds": 1500.0,
               **held(1500.0, cpus=2, gpus=0).metrics()},
              {"train_seconds": 1000.0, "val_eval_seconds": 400.0, "held_seconds": 3000.0,
               **held(3000.0, cpus=2, gpus=0).metrics()}]
    sweeps.log(trial, metrics=[Metric(k, v, 1000 + step, step) for step, values
                               in enumerate(epochs, 1) for k, v in values.items()])
    seconds, train = training_cost(uri, trial)
    assert seconds == 3000.0 and train == Cost(cpu_hours=2 * 3000 / 3600)
    assert log_sweep_cost(sweeps, parent, "s1") == train
    assert sweeps.client.get_run(parent).data.metrics["device_hours"] == pytest.approx(
        2 * 3000 / 3600)

    evaluation = held(900.0, cpus=2, gpus=0)
    plan = Plan(attacks=("aa-standard", "pgd-100-ce"), epsilon=0.1, norm="linf", seed=0,
                n_examples=50, shard_size=50)
    candidate = Candidate(trial, sweeps.experiment_id, "trial-0",
                          {"defense": "emr", "sweep": "s1", "dataset": "mnist", "model": "mlp"},
                          {}, 0.5)
    record_row(uri, "leaderboard", report=synthetic_report(45, 34, 36, None), plan=plan,
               config={"dataset": "mnist", "model": "mlp", "defense": "emr", "epsilon": 0.1,
                       "defense_params": {}},
               candidate=candidate, checkpoint="/ck/0", data_checksum="abc", seconds=850.0,
               train_seconds=seconds, train_cost=train, evaluation_cost=evaluation,
               artifact_location=(tmp_path / "art").as_uri())
    (logged,) = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("leaderboard").experiment_id])
    assert logged.data.tags["device_kind"] == "cpu"
    row = load(uri).iloc[0]
    assert row["train_device_hours"] == pytest.approx(3000 * 2 / 3600)
    assert row["evaluation_device_hours"] == pytest.approx(900 * 2 / 3600)
    assert row["device_hours"] == pytest.approx((3000 + 900) * 2 / 3600)
    assert row["device_unit"] == "CPU-core-h"
    assert row["robust_per_device_hour"] == pytest.approx(row["worst_case"] / row["device_hours"])
    frame = load(uri)
    assert "robust_per_device_hour" in to_markdown(frame).splitlines()[0]
    assert f"{100 * row['robust_per_device_hour']:.1f}" in to_markdown(frame)
    assert "device-hours in CPU-core-h" in to_html(frame)  # the shared unit, said once

    (per_defense,) = defense_costs(frame, sweep_costs(uri)).to_dict("records")
    assert per_defense["defense"] == "emr" and per_defense["device_unit"] == "CPU-core-h"
    assert per_defense["device_hours"] == pytest.approx((3000 + 900) * 2 / 3600)


def test_a_row_trained_on_a_gpu_and_evaluated_on_cpus_keeps_both_units(tmp_path):
    from dashboards.leaderboard import row_cost

    metrics = {**Cost(gpu_hours=0.5).metrics("train_"),
               **Cost(cpu_hours=0.25).metrics("evaluation_")}
    cost = row_cost(metrics, 1800.0, 900.0)
    assert cost["train_device_hours"] == 0.5 and cost["train_device_unit"] == "GPU-h"
    assert cost["evaluation_device_unit"] == "CPU-core-h"
    assert math.isnan(cost["device_hours"])
    assert cost["device_unit"] == "0.500 GPU-h + 0.250 CPU-core-h"
    # a row written before device accounting: its seconds on one CPU core
    legacy = row_cost({}, 3600.0, 36.0)
    assert legacy["device_hours"] == pytest.approx(1.01) and legacy["device_unit"] == "CPU-core-h"
