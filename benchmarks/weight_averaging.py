"""EMA of the weights against none: PGD-AT on real MNIST, the 4 × 1024 MLP, AutoAttack.

One training run with ``ema_decay`` set yields both models of a paired comparison with the same
seed: the weight average is passive (it reads the weights after each step and never writes
them), so the run's own weights are bit for bit those of the same run without EMA
(``tests/test_recipes.py`` asserts it). Both are then attacked by AutoAttack (standard) on the
same test points; the script prints each model's clean and robust accuracy with 95 % Wilson
intervals, and an exact McNemar test on the paired robust flags.

    .venv/bin/python benchmarks/weight_averaging.py --epochs 5 --points 1000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from attacks.evaluate import evaluate_model
from attacks.schema import wilson_interval
from dashboards.compare import mcnemar
from trainables import data
from trainables.config import TrialConfig
from trainables.engine import TrainingRun


def train(args: argparse.Namespace) -> TrainingRun:
    config = TrialConfig.from_dict({
        "dataset": "mnist", "model": "mlp", "model_params": {"hidden": 1024, "layers": 4},
        "defense": "pgd_at", "epsilon": 0.1, "attack_steps": 10, "attack_step_size": 0.025,
        "epochs": args.epochs, "batch_size": 128, "lr": 0.05, "schedule": "piecewise",
        "lr_milestones": [args.epochs - 1] if args.epochs > 1 else [], "weight_decay": 5e-4,
        "train_subset": args.train_subset, "val_subset": 1000, "eval_steps": 10,
        "ema_decay": args.ema_decay, "average_for_eval": False, "seed": args.seed,
        "num_threads": args.threads, "device": "cpu"})
    run = TrainingRun(config)
    while not run.finished:
        metrics = run.run_epoch()
        print(f"epoch {metrics['epoch']}/{args.epochs}: loss {metrics['train_loss']:.3f}, "
              f"val clean {metrics['val_clean_accuracy']:.3f}, PGD-10 "
              f"{metrics['val_robust_accuracy']:.3f} (raw weights), "
              f"{metrics['train_seconds']:.0f} s", flush=True)
    return run


def rate(successes: int, n: int) -> str:
    low, high = wilson_interval(successes, n)
    return f"{successes / n:.2%} [{low:.1%}, {high:.1%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    run = train(args)
    test = data.load_dataset("mnist", "test")
    x, y = test.tensors()
    x, y = x[:args.points], y[:args.points]
    models = {"raw": run.model.eval(), "ema": run.average.module.eval()}
    flags, figures = {}, {}
    for name, model in models.items():
        begun = time.perf_counter()
        report = evaluate_model(model, x, y, attacks=["aa-standard"], epsilon=0.1, seed=0,
                                checks=False, indicators=None)
        flags[name] = report.worst_case.tolist()
        clean, robust = int(report.clean.sum()), int(report.worst_case.sum())
        figures[name] = {"clean": clean, "autoattack": robust, "n": len(y),
                         "seconds": time.perf_counter() - begun}
        print(f"{name}: clean {rate(clean, len(y))}, AutoAttack {rate(robust, len(y))} "
              f"({figures[name]['seconds']:.0f} s)", flush=True)
    test_result = mcnemar(flags["ema"], flags["raw"])
    delta = (figures["ema"]["autoattack"] - figures["raw"]["autoattack"]) / len(y)
    print(f"paired on {len(y)} points: robust only with EMA {test_result.only_a}, only without "
          f"{test_result.only_b}, exact McNemar p = {test_result.p_value:.3g}")
    print(f"total {time.perf_counter() - started:.0f} s; EMA decay {args.ema_decay}, "
          f"{run.average.updates} updates, {args.epochs} epochs on {args.train_subset} images")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "figures": figures, "p_value": test_result.p_value},
                      out, indent=2)
    print(f"ema - raw autoattack accuracy: {delta:+.2%} (target: measured, either sign)")


if __name__ == "__main__":
    main()
