"""Sweep efficiency: trial-epochs ASHA+TPE spends to match a full grid, over the grid's spend.

Protocol. On real MNIST with a small MLP (the sweeps' smoke settings, with 5,000 training and
5,000 validation images, so that one point of accuracy is above the validation noise — its
binomial standard error is 0.65 points at 70 % — and a cosine learning-rate schedule, so that
a trial's last epoch is an annealed model rather than a snapshot of SGD noise at a constant
rate; one thread per trial, CPU), EMR's two knobs
``temperature`` and ``lambda_emr`` are searched two ways, every other knob fixed at its default:

* a full 5 × 5 grid over log-spaced values spanning the search space (t ∈ [0.1, 100],
  λ_EMR ∈ [0.01, 10], as in the EMR paper's sensitivity study), every trial trained to the full
  epoch budget (no early stopping); run once, it is deterministic given its training seed. Its
  best is the best *trained* cell, i.e. the highest final-epoch validation robust accuracy, as
  a grid search would read it (Tune's ``scope="last"``);
* the sweep as ``sweeps.runner`` builds it (Optuna TPE from ``create_sampler``, ASHA stopping on
  ``val_robust_accuracy`` with grace 1 and reduction 2, at most 2 trials at once), with the
  space restricted to exactly those two knobs over the same ranges, repeated for 3 sampler seeds.

Each reported epoch of a trial is one trial-epoch. The sweep's reported epochs, taken across all
its trials in order of their wall-clock time, are counted until one first reaches within
``--tolerance`` (1 point) of the grid's best validation robust accuracy; that count over the
grid's total trial-epochs (25 × epochs) is the seed's ratio. A seed that never gets there has
no finite ratio (``inf``): a sweep that stops early without matching the grid has not saved
anything. The last line gives the median ratio over the seeds against the target of 0.25.

    .venv/bin/python benchmarks/sweep_efficiency.py --epochs 8 --samples 16 --seeds 0 1 2

The runner's ``build_searcher`` always uses the defense's whole space (base, β, weight decay),
so the restricted space is passed to ``OptunaSearch`` here with the runner's own sampler.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from typing import Any

import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sweeps.cli import SMOKE_BASE
from sweeps.samplers import create_sampler
from trainables.config import merge
from trainables.trainable import OBJECTIVE, train_trial

TEMPERATURES = (0.1, 0.5, 3.0, 20.0, 100.0)  # log-spaced over the searched [0.1, 100]
LAMBDAS = (0.01, 0.05, 0.3, 2.0, 10.0)  # log-spaced over the searched [0.01, 10]
TARGET = 0.25


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial (ASHA's max_t)")
    parser.add_argument("--samples", type=int, default=16, help="trials per sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--val-subset", type=int, default=5000)
    parser.add_argument("--schedule", default="cosine", choices=("cosine", "constant"),
                        help="learning-rate schedule of every trial (default: %(default)s)")
    return parser.parse_args()


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The smoke settings with EMR and the epoch budget; per-epoch validation as the runner."""
    return merge(SMOKE_BASE, {"defense": "emr", "epochs": args.epochs, "eval_every": 1,
                              "schedule": args.schedule,
                              "margin_every": max(1, args.epochs // 10),
                              "train_subset": args.train_subset, "val_subset": args.val_subset})


def restricted_space(trial: optuna.Trial) -> dict[str, Any]:
    """EMR's temperature × λ_EMR, with the ranges of ``EffectiveMarginRegularization``."""
    return {"overrides": {"defense_params": {
        "lambda_emr": trial.suggest_float("lambda_emr", 0.01, 10.0, log=True),
        "temperature": trial.suggest_float("temperature", 0.1, 100.0, log=True)}}}


def run_config(name: str, storage: str) -> tune.RunConfig:
    return tune.RunConfig(name=name, storage_path=storage, verbose=0,
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1))


def epoch_rows(results: tune.ResultGrid) -> pd.DataFrame:
    """Every reported epoch of every trial, ordered by when it was reported."""
    frames = []
    for result in results:
        if result.error is not None:
            raise RuntimeError(f"trial failed: {result.error}")
        frame = result.metrics_dataframe
        frames.append(frame[["trial_id", "epoch", "timestamp", OBJECTIVE]])
    rows = pd.concat(frames, ignore_index=True)
    return rows.sort_values(["timestamp", "trial_id", "epoch"], kind="stable").reset_index(
        drop=True)


def run_grid(args: argparse.Namespace, storage: str) -> pd.DataFrame:
    """The 5 × 5 grid, every trial to the full budget."""
    param_space = {"base": base_config(args), "sweep": {"name": "grid"}, "overrides": {
        "defense_params": {"temperature": tune.grid_search(list(TEMPERATURES)),
                           "lambda_emr": tune.grid_search(list(LAMBDAS))}}}
    tuner = tune.Tuner(tune.with_resources(train_trial, {"cpu": 1}), param_space=param_space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=args.concurrency,
                                                   reuse_actors=True),
                       run_config=run_config("grid", storage))
    return epoch_rows(tuner.fit())


def run_asha_tpe(args: argparse.Namespace, seed: int, storage: str) -> pd.DataFrame:
    """The runner's TPE + ASHA sweep over the restricted space."""
    sampler = create_sampler("tpe", seed=seed, num_samples=args.samples)
    searcher = OptunaSearch(space=restricted_space, metric=OBJECTIVE, mode="max", sampler=sampler)
    scheduler = ASHAScheduler(metric=OBJECTIVE, mode="max", max_t=args.epochs,
                              grace_period=1, reduction_factor=2, time_attr="epoch")
    param_space = {"base": base_config(args), "sweep": {"name": f"asha-tpe-{seed}"}}
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}), param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=args.concurrency),
            scheduler=scheduler, num_samples=args.samples, reuse_actors=True),
        run_config=run_config(f"asha-tpe-{seed}", storage))
    return epoch_rows(tuner.fit())


def grid_best(rows: pd.DataFrame) -> float:
    """The best trained cell: the highest final-epoch objective over the grid's trials."""
    final = rows.sort_values("epoch", kind="stable").groupby("trial_id")[OBJECTIVE].last()
    return float(final.max())


def spend_to_reach(rows: pd.DataFrame, goal: float) -> int | None:
    """Trial-epochs reported up to and including the first at or above ``goal``; None if none."""
    hits = [index for index, value in enumerate(rows[OBJECTIVE]) if value >= goal]
    return hits[0] + 1 if hits else None


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start = time.perf_counter()
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="sweep-efficiency-")
    grid = run_grid(args, storage)
    grid_spend = len(TEMPERATURES) * len(LAMBDAS) * args.epochs
    if len(grid) != grid_spend:
        raise RuntimeError(f"grid reported {len(grid)} trial-epochs, expected {grid_spend}")
    best = grid_best(grid)
    goal = best - args.tolerance - 1e-9
    print(f"grid: {len(TEMPERATURES)} x {len(LAMBDAS)} (temperature x lambda_emr), "
          f"{args.epochs} epochs, {grid_spend} trial-epochs, best trained cell's val robust "
          f"accuracy {best:.3f} (best single epoch {grid[OBJECTIVE].max():.3f}); "
          f"goal >= {best - args.tolerance:.3f}")
    ratios = []
    for seed in args.seeds:
        rows = run_asha_tpe(args, seed, storage)
        spend = spend_to_reach(rows, goal)
        reached = spend is not None
        ratios.append(spend / grid_spend if reached else math.inf)
        print(f"seed {seed}: {rows['trial_id'].nunique()} trials, {len(rows)} trial-epochs in "
              f"all, best {rows[OBJECTIVE].max():.3f}; "
              + (f"reached after {spend} trial-epochs" if reached
                 else f"not reached in {len(rows)} trial-epochs")
              + f"; ratio {ratios[-1]:.3f}")
    ray.shutdown()
    median = statistics.median(ratios)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    print(f"sweep efficiency, ASHA+TPE trial-epochs / grid trial-epochs: {median:.3f} "
          f"(target ≤ {TARGET})" if not math.isnan(median) else "no result")


if __name__ == "__main__":
    main()
