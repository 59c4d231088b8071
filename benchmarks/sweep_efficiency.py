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

Pareto mode (``--pareto``). The same workload with two objectives, the final-epoch validation
clean and robust accuracy, both maximised, as a ``--sampler nsga2`` sweep optimises them. For
each seed, two sweeps of ``--samples`` trials, every trial trained to the full budget (no early
stopping; no margin measurements): NSGA-II from ``create_sampler("nsga2")`` (its
population sized to the budget) and random search from ``create_sampler("random")``, both with
that seed, over EMR's whole search space as the runner builds it (``--space restricted``:
temperature × λ_EMR only). Each sweep's Pareto front (its non-dominated trials) is scored by
its hypervolume above a common reference point, the worst clean and the worst robust accuracy
of any trial of either sweep of that seed; NSGA-II beats random on a seed when its front's
hypervolume is larger. Also printed: the fraction of each front's points that the other front
dominates. The last line counts the seeds NSGA-II won against the target of more than half.

    .venv/bin/python benchmarks/sweep_efficiency.py --pareto --epochs 4 --samples 16 \\
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import functools
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
from sweeps.runner import PARETO, defense_space
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
    parser.add_argument("--pareto", action="store_true",
                        help="clean and robust accuracy: NSGA-II's front against random search's")
    parser.add_argument("--space", default="defense", choices=("defense", "restricted"),
                        help="Pareto mode's search space (default: %(default)s)")
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


# -------------------------------------------------------------------- Pareto mode
Point = tuple[float, float]


def run_pareto(args: argparse.Namespace, sampler: str, seed: int, storage: str) -> list[Point]:
    """A two-objective sweep with ``sampler``, every trial to the full budget: each trial's
    final (clean, robust) validation accuracy, diverged trials left out."""
    space = (restricted_space if args.space == "restricted"
             else functools.partial(defense_space, "emr"))
    searcher = OptunaSearch(space=space, metric=list(PARETO), mode=["max", "max"],
                            sampler=create_sampler(sampler, seed=seed, num_samples=args.samples))
    name = f"pareto-{sampler}-{seed}"
    base = merge(base_config(args), {"margin_every": 0})
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space={"base": base, "sweep": {"name": name}},
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=args.concurrency),
            num_samples=args.samples, reuse_actors=True),
        run_config=run_config(name, storage))
    points = []
    for result in tuner.fit():
        if result.error is not None:
            raise RuntimeError(f"trial failed: {result.error}")
        point = tuple(float(result.metrics.get(key, math.nan)) for key in PARETO)
        if not any(math.isnan(value) for value in point):
            points.append(point)
    return points


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` in both objectives (maximised) and better in one."""
    return a[0] >= b[0] and a[1] >= b[1] and a != b


def pareto_front(points: list[Point]) -> list[Point]:
    """The non-dominated points, each once."""
    return sorted({p for p in points if not any(dominates(q, p) for q in points)})


def hypervolume(front: list[Point], reference: Point) -> float:
    """The area dominated by ``front`` (both objectives maximised) above ``reference``."""
    area, floor = 0.0, reference[1]
    for x, y in sorted(front, reverse=True):  # x falling, so y rises along a front
        if x > reference[0] and y > floor:
            area += (x - reference[0]) * (y - floor)
            floor = y
    return area


def dominated_share(front: list[Point], by: list[Point]) -> float:
    """The fraction of ``front``'s points that some point of ``by`` dominates."""
    return sum(any(dominates(q, p) for q in by) for p in front) / max(len(front), 1)


def compare_fronts(args: argparse.Namespace, storage: str) -> int:
    """Per seed, NSGA-II's and random search's fronts; the number of seeds NSGA-II won."""
    wins = 0
    for seed in args.seeds:
        nsga2, random = (run_pareto(args, sampler, seed, storage)
                         for sampler in ("nsga2", "random"))
        everything = nsga2 + random
        reference = (min(p[0] for p in everything), min(p[1] for p in everything))
        fronts = {"nsga2": pareto_front(nsga2), "random": pareto_front(random)}
        volumes = {name: hypervolume(front, reference) for name, front in fronts.items()}
        wins += volumes["nsga2"] > volumes["random"]
        for name, front in fronts.items():
            other = fronts["random" if name == "nsga2" else "nsga2"]
            print(f"seed {seed} {name:<6}: {len(nsga2 if name == 'nsga2' else random)} trials, "
                  f"front of {len(front)} "
                  + " ".join(f"({c:.3f}, {r:.3f})" for c, r in front)
                  + f"; hypervolume {volumes[name]:.5f}; "
                  f"{dominated_share(front, other):.0%} of it dominated by the other front")
        winner = ("nsga2 wins" if volumes["nsga2"] > volumes["random"] else "random wins"
                  if volumes["random"] > volumes["nsga2"] else "a tie (no win)")
        print(f"seed {seed}: reference (clean {reference[0]:.3f}, robust {reference[1]:.3f}); "
              f"{winner}")
    return wins


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start = time.perf_counter()
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="sweep-efficiency-")
    if args.pareto:
        wins = compare_fronts(args, storage)
        ray.shutdown()
        print(f"wall time {time.perf_counter() - start:.0f} s")
        print(f"nsga2 beats random: {wins}/{len(args.seeds)} seeds (target > half)")
        return
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
