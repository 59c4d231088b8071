"""The cascade evaluation against the full one: same model, same points, same seed.

The model is the demo's kind (PGD-AT, a 2 × 256 MLP trained at ε = 0.1 with a 3-step attack,
4 epochs on 20,000 real MNIST images, one CPU thread), trained here with
``trainables.engine.TrainingRun``, or ``--checkpoint``. Its first ``--n`` test points are
evaluated with the demo's attacks (AutoAttack standard, PGD-100 CE and CW, Square with 1,000
queries, SPSA-light) in the full and the cascade mode, ``--rounds`` times each, interleaved;
the worst case and the integrity flags of the two must be identical (asserted). Attacks only:
the model probes and the indicators of attack failure are the same in both modes and are left
out of the timing.

Beside the speed-up it prints two bounds. AutoAttack attacks every clean-correct point in both
modes (its verdicts depend on the points in its batch): no cascade with this worst case beats
total / AutoAttack's time. And no cascade can spare the attacks on the points no attack
breaks: the full evaluation of those points alone is a floor under any cascade's time.

    .venv/bin/python benchmarks/cascade.py --n 200 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

# the demo's pool suite (sweeps/demo.py, POOL_ATTACKS)
ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw", "square:queries=1000", "spsa-light")
# the demo's trials (sweeps.cli.SMOKE_BASE under sweeps.demo.DEMO_BASE), PGD-AT, 4 epochs
DEMO_MODEL = {
    "dataset": "mnist", "model": "mlp", "model_params": {"hidden": 256, "layers": 2},
    "defense": "pgd_at", "epochs": 4, "batch_size": 100, "lr": 0.05, "lr_milestones": [],
    "schedule": "constant", "attack_steps": 3, "eval_steps": 5, "train_subset": 20000,
    "val_subset": 200, "num_threads": 1, "device": "cpu", "epsilon": 0.1,
    "attack_step_size": 0.04,
}


def trained_checkpoint(folder: Path) -> Path:
    from trainables.checkpoints import save_checkpoint
    from trainables.config import TrialConfig
    from trainables.engine import TrainingRun

    started = time.perf_counter()
    run = TrainingRun(TrialConfig.from_dict(DEMO_MODEL))
    while not run.finished:
        metrics = run.run_epoch()
    print(f"trained in {time.perf_counter() - started:.0f} s: "
          f"{', '.join(f'{k} {v:.3f}' for k, v in sorted(metrics.items()) if 'val' in k)}",
          flush=True)
    return save_checkpoint(folder / "ckpt", model=run.model, config=run.config)


def evaluate(model, x, y, epsilon: float, mode: str):
    from attacks.evaluate import evaluate_model

    started = time.perf_counter()
    report = evaluate_model(model, x, y, attacks=list(ATTACKS), epsilon=epsilon, seed=0,
                            checks=False, indicators=None, mode=mode)
    return report, time.perf_counter() - started


def table(full, cascade) -> None:
    clean = int(full.clean.sum())
    print(f"{'attack':>22}  {'full s':>7}  {'robust':>7}  {'cascade s':>9}  {'ran on':>6}  "
          f"{'broke':>5}")
    for label, result in cascade.attacks.items():
        own = full.attacks[label]
        print(f"{label:>22}  {own.seconds:7.1f}  {(own.robust & full.clean).float().mean():7.1%}"
              f"  {result.seconds:9.1f}  {result.attacked:>6}  {result.broken:>5}")
    print(f"{'clean':>22}  {clean} of {full.n} points; worst case "
          f"{full.worst_case.float().mean():.1%} in both modes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="evaluate this checkpoint instead")
    parser.add_argument("--n", type=int, default=200, help="test points")
    parser.add_argument("--rounds", type=int, default=2, help="evaluations per mode")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from attacks.targets import load_points
    from trainables.checkpoints import load_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or trained_checkpoint(Path(folder))
        loaded = load_checkpoint(checkpoint)
    torch.set_num_threads(args.threads)  # training sets its own thread count
    model, epsilon = loaded.model.eval(), loaded.config.resolved_epsilon
    x, y = load_points(loaded.config.dataset, args.n, "cpu")
    print(f"model: {loaded.config.model} {loaded.config.model_params} "
          f"({loaded.config.defense}), first {args.n} MNIST test points, ε = {epsilon:g}, "
          f"{args.threads} CPU thread(s); attacks: {', '.join(ATTACKS)}", flush=True)
    seconds: dict[str, list[float]] = {"full": [], "cascade": []}
    reports = {}
    for round_ in range(args.rounds):
        for mode in ("full", "cascade") if round_ % 2 == 0 else ("cascade", "full"):
            reports[mode], spent = evaluate(model, x, y, epsilon, mode)
            seconds[mode].append(spent)
            print(f"round {round_ + 1}, {mode}: {spent:.1f} s", flush=True)
        full, cascade = reports["full"], reports["cascade"]
        assert torch.equal(full.worst_case, cascade.worst_case), "the worst cases differ"
        assert full.flags == cascade.flags, "the integrity flags differ"
    table(full, cascade)
    full_s, cascade_s = statistics.median(seconds["full"]), statistics.median(seconds["cascade"])
    autoattack, robust = full.attacks["aa-standard"].seconds, full.worst_case
    _, floor = evaluate(model, x[robust], y[robust], epsilon, "full")
    print(f"full {full_s:.1f} s, cascade {cascade_s:.1f} s (medians of {args.rounds})")
    print(f"bound: AutoAttack attacks every clean-correct point in both modes ({autoattack:.1f}"
          f" s of the full evaluation): no cascade with this worst case beats "
          f"{full_s / autoattack:.2f}x")
    print(f"bound: every attack on the {int(robust.sum())} points none breaks takes "
          f"{floor:.1f} s: no cascade beats {full_s / floor:.2f}x", flush=True)
    print(f"cascade speed-up: {full_s / cascade_s:.2f}x (target 3x)")


if __name__ == "__main__":
    main()
