"""Evaluation cost: seconds per example of every attack, our AutoAttack path against a direct
pyautoattack call, and the evaluation pool's throughput with 1 and 2 evaluators.

The model is trained here (PGD-AT, ε = 0.1, on a real MNIST slice) so that attacks face robust
points, as on a real leaderboard; ``--checkpoint`` evaluates a saved one instead. The AutoAttack
ratio interleaves the two calls over ``--rounds`` rounds on the same points and seed (and checks
that they agree); the pool runs twice on fresh MLflow stores holding the same two checkpoints.

    .venv/bin/python benchmarks/eval_overhead.py --n 100 --rounds 3
    .venv/bin/python benchmarks/eval_overhead.py --pool-only --pool-rounds 3

The pool's scaling is the ratio of its rates with 2 evaluators and 1 over the evaluation (from
the evaluators' start to the last leaderboard row; their start-up, a few seconds once per pool,
is printed beside), the median of ``--pool-rounds`` interleaved pairs, in full mode (one unit
per attack and shard).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

ATTACKS = ["fgsm", "pgd-20", "pgd-100-ce", "pgd-100-cw", "apgd-ce", "apgd-t", "fab-t",
           "square:queries=5000", "spsa-light", "spsa:preset=he-80", "aa-standard"]
POOL_ATTACKS = ["pgd-100-ce", "square:queries=1000", "spsa-light"]


def trained_checkpoint(folder: Path, epochs: int) -> Path:
    from trainables.checkpoints import save_checkpoint
    from trainables.config import TrialConfig
    from trainables.engine import TrainingRun

    config = TrialConfig.from_dict({
        "dataset": "mnist", "model": "mlp", "model_params": {"hidden": 256, "layers": 2},
        "defense": "pgd_at", "epsilon": 0.1, "attack_steps": 10, "attack_step_size": 0.02,
        "epochs": epochs, "batch_size": 100, "lr": 0.05, "schedule": "constant",
        "lr_milestones": [], "train_subset": 10000, "val_subset": 200, "num_threads": 1})
    run = TrainingRun(config)
    while not run.finished:
        run.run_epoch()
    return save_checkpoint(folder / "ckpt", model=run.model, config=run.config)


def per_attack_seconds(model, x, y, epsilon: float) -> dict[str, dict]:
    from attacks.evaluate import evaluate_model

    report = evaluate_model(model, x, y, attacks=ATTACKS, epsilon=epsilon, checks=False)
    rows = {}
    for label, result in report.attacks.items():
        rows[label] = {"seconds_per_example": result.seconds / len(x),
                       "accuracy": result.robust.float().mean().item()}
        print(f"{label:>22}: {result.seconds / len(x) * 1000:9.1f} ms/example  "
              f"robust {rows[label]['accuracy']:.1%}", flush=True)
    print(f"{'clean':>22}: {report.clean.float().mean():.1%}; worst case "
          f"{report.worst_case.float().mean():.1%}", flush=True)
    return rows


def autoattack_ratio(model, x, y, epsilon: float, rounds: int) -> float:
    from pyautoattack import AutoAttack

    from attacks.evaluate import evaluate_model

    ours, direct = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        report = evaluate_model(model, x, y, attacks=["aa-standard"], epsilon=epsilon,
                                checks=False)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        adversary = AutoAttack(model, eps=epsilon, norm="Linf", seed=0, version="standard")
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=500)
        direct.append(time.perf_counter() - start)
        with torch.no_grad():
            expected = (model(x_adv).argmax(1) == y).float().mean().item()
        assert report.accuracy("aa-standard") == expected, "the two paths disagree"
    print(f"autoattack: ours {statistics.median(ours):.1f} s, direct "
          f"{statistics.median(direct):.1f} s (medians of {rounds})", flush=True)
    return statistics.median(ours) / statistics.median(direct)


def run_pool(checkpoint: Path, *, n: int, evaluators: int, attacks, shard_size: int,
             gpus_per_evaluator: float = 0.0) -> dict:
    """One pool run on a fresh sqlite store holding two published copies of ``checkpoint``;
    the pool's summary (examples, wall_seconds, ...)."""
    from attacks.pool_cli import main as pool_main
    from dashboards.queue import STATUS_TAG
    from dashboards.runs import TrialTracker, now_ms
    from trainables.checkpoints import load_checkpoint

    config = load_checkpoint(checkpoint).config
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        for trial in ("a", "b"):
            tracker = TrialTracker(uri, "sweeps", "bench", trial, None, config.to_dict(),
                                   artifact_location=(root / "art").as_uri())
            tracker.publish([{"epoch": 1, "timestamp": now_ms()}], checkpoint,
                            tags={STATUS_TAG: "pending", "best_val_robust_accuracy": "0.5"})
        return pool_main(["--tracking-uri", uri, "--state-dir", str(root / "state"),
                          "--attacks", *attacks, "--n-examples", str(n),
                          "--shard-size", str(shard_size), "--evaluators", str(evaluators),
                          "--gpus-per-evaluator", f"{gpus_per_evaluator:g}",
                          "--settle-seconds", "0.1", "--mode", "full"])


def pool_throughput(checkpoint: Path, n: int, evaluators: int) -> dict:
    """One pool run of the workload; its rates over the evaluation (from the evaluators'
    start to the last leaderboard row) and over the whole wall time (their start-up too)."""
    summary = run_pool(checkpoint, n=n, evaluators=evaluators, attacks=POOL_ATTACKS,
                       shard_size=max(1, n // 4))
    rates = {"evaluation": summary["examples_per_evaluation_second"],
             "wall": summary["examples_per_second"],
             "startup_seconds": summary["startup_seconds"],
             "overhead_per_unit_seconds": summary["overhead_per_unit_seconds"],
             "prepare_seconds": summary["prepare_seconds"],
             "finalize_seconds": summary["finalize_seconds"]}
    print(f"pool, {evaluators} evaluator(s): {summary['examples']} examples × "
          f"{len(POOL_ATTACKS)} attacks in {summary['evaluation_seconds']:.1f} s after "
          f"{summary['startup_seconds']:.1f} s of start-up = {rates['evaluation']:.2f} "
          f"examples/s ({rates['wall']:.2f} over the wall time); per unit "
          f"{summary['overhead_per_unit_seconds']:.3f} s outside the attack code; driver: "
          f"{summary['prepare_seconds']:.1f} s preparing checkpoints, "
          f"{summary['finalize_seconds']:.1f} s writing rows", flush=True)
    return rates


def pool_scaling(checkpoint: Path, n: int, rounds: int) -> dict:
    """1 and 2 evaluators, interleaved over ``rounds``; the median ratio of the two rates."""
    ones, twos = [], []
    for _ in range(rounds):
        ones.append(pool_throughput(checkpoint, n, 1))
        twos.append(pool_throughput(checkpoint, n, 2))
    ratio = {key: statistics.median(t[key] / o[key] for o, t in zip(ones, twos, strict=True))
             for key in ("evaluation", "wall")}
    return {"pool_1": ones, "pool_2": twos, "scaling": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="evaluate this checkpoint instead")
    parser.add_argument("--epochs", type=int, default=2, help="PGD-AT epochs of the model")
    parser.add_argument("--n", type=int, default=100, help="test points per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool-n", type=int, default=200, help="points per pool checkpoint")
    parser.add_argument("--pool-rounds", type=int, default=3, help="interleaved pool runs")
    parser.add_argument("--pool-only", action="store_true",
                        help="measure the pool's scaling only (no per-attack costs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    from attacks.targets import load_points
    from trainables.checkpoints import load_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or trained_checkpoint(Path(folder), args.epochs)
        loaded = load_checkpoint(checkpoint)
        x, y = load_points(loaded.config.dataset, args.n, "cpu")
        epsilon = loaded.config.resolved_epsilon
        print(f"model: {loaded.config.model} {loaded.config.model_params} "
              f"({loaded.config.defense}), {args.n} MNIST test points, ε = {epsilon}, "
              "1 CPU thread", flush=True)
        rows = ratio = None
        if not args.pool_only:
            rows = per_attack_seconds(loaded.model, x, y, epsilon)
            ratio = autoattack_ratio(loaded.model, x, y, epsilon, args.rounds)
        ray.init(num_cpus=2, log_to_driver=False, configure_logging=False,
                 include_dashboard=False)  # the pool alone on the two cores
        pool = pool_scaling(checkpoint, args.pool_n, args.pool_rounds)
        ray.shutdown()
    print(json.dumps({"per_attack": rows, "autoattack_ratio": ratio, **pool}))
    if ratio is not None:
        print(f"autoattack overhead, ours / pyautoattack: {ratio:.3f} (target ≤ 1.05)")
    print(f"pool scaling over the wall time, start-up included: {pool['scaling']['wall']:.2f}")
    print(f"pool scaling, 2 evaluators / 1: {pool['scaling']['evaluation']:.2f} (target ≥ 1.8)")


if __name__ == "__main__":
    main()
