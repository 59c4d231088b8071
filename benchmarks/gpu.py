"""GPU training and evaluation throughput: WRN-34-10 PGD-10 adversarial training images/s and
model FLOP utilisation, defense step costs relative to PGD-AT, and evaluation-pool scaling.

Training runs ``trainables.engine.train_epoch`` on CIFAR-shaped batches of the registered
``fake32`` dataset (no download) under each configuration of bf16 autocast, channels_last and
``torch.compile``. FLOPs of one training step (the PGD-k attack's forward+backward passes plus
the training forward+backward) are counted once with ``FlopCounterMode``; MFU is the achieved
FLOP/s over the GPU's dense bf16 peak (a table by device name, else ``--peak-tflops``).
Defense ratios interleave the defenses in shuffled rounds, as ``step_cost.py`` does. The pool
runs ``attacks.pool_cli.main`` on fresh sqlite stores with N evaluators of 1/N GPU each.

    .venv/bin/python benchmarks/gpu.py                # on a CUDA machine
    .venv/bin/python benchmarks/gpu.py --small        # CPU smoke size (default without CUDA)
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainables import data
from trainables.defenses import AttackSettings, create_defense
from trainables.engine import train_epoch
from trainables.models import create_model

# dense bf16 tensor-core peaks; the first name fragment found in the device name wins
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12)]
DEFENSES = ["pgd_at", "emr", "trades", "he", "lma_at", "mart"]
POOL_ATTACKS = ["pgd-100-ce", "square:queries=1000"]
MFU_TARGET = 0.40


@dataclass(frozen=True)
class Size:
    """What one run measures: the full GPU size or the CPU smoke size."""

    model: str
    batch_size: int
    steps: int  # timed training steps per configuration
    configs: tuple[str, ...]
    pool_evaluators: tuple[int, ...]
    pool_model: str
    pool_examples: int


GPU_SIZE = Size("wrn-34-10", 128, 10, ("fp32", "bf16", "bf16+cl", "bf16+compile",
                                       "bf16+cl+compile"), (1, 2, 4), "preact_resnet18", 1000)
CPU_SIZE = Size("wrn-10-1", 16, 2, ("fp32", "fp32+cl"), (1, 2), "mlp", 40)


@dataclass(frozen=True)
class Setting:
    """One training configuration, parsed from a name like ``bf16+cl+compile``."""

    bf16: bool
    channels_last: bool
    compile: bool

    @classmethod
    def parse(cls, name: str) -> Setting:
        parts = set(name.split("+"))
        unknown = parts - {"fp32", "bf16", "cl", "compile"}
        if unknown:
            raise ValueError(f"unknown configuration part(s) {sorted(unknown)} in {name!r}; "
                             "known: fp32, bf16, cl, compile")
        return cls("bf16" in parts, "cl" in parts, "compile" in parts)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true",
                        help="CPU smoke size (chosen automatically when CUDA is unavailable)")
    parser.add_argument("--configs", nargs="*", help="e.g. fp32 bf16+cl bf16+cl+compile")
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="defense-ratio rounds")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak when not in the table")
    parser.add_argument("--pool-dataset", default="mnist")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "defenses", "pool"])
    args = parser.parse_args()
    args.cuda = torch.cuda.is_available() and not args.small
    args.size = GPU_SIZE if args.cuda else CPU_SIZE
    args.device = torch.device("cuda" if args.cuda else "cpu")
    return args


def peak_flops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not args.cuda:
        return None
    name = torch.cuda.get_device_name()
    return next((peak for fragment, peak in PEAK_BF16 if fragment in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(batch_size: int, device: torch.device, channels_last: bool):
    """One fixed CIFAR-shaped batch (x, y, ids) already on ``device``."""
    dataset = data.load_dataset("fake32", "train", subset=batch_size, augment=False)
    x, y, ids = next(data.iterate_batches(dataset, batch_size))
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device), ids.to(device)


def build(defense_name: str, args: argparse.Namespace, setting: Setting):
    """(defense, model, optimizer, state) for one defense on the benchmark model."""
    torch.manual_seed(0)
    info = data.dataset_info("fake32")
    attack = AttackSettings(epsilon=info.epsilon, steps=args.attack_steps,
                            step_size=info.step_size)
    defense = create_defense(defense_name, attack=attack)
    model = defense.model_hook(create_model(
        args.size.model, num_classes=info.num_classes, in_channels=info.channels,
        image_size=info.image_size, mean=info.mean, std=info.std)).to(args.device)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if setting.compile:
        model = torch.compile(model)
    state = defense.init_state(num_examples=len(data.raw_data("fake32").train_labels),
                               batch_size=args.size.batch_size,
                               num_classes=info.num_classes, epochs=1)
    return defense, model, optimizer, state


class _GlobalOnly(contextlib.nullcontext):
    """Stands in for FlopCounterMode's module tracker: every FLOP goes to the global total."""

    parents = frozenset({"Global"})


def step_flops(args: argparse.Namespace) -> float:
    """FLOPs of one PGD-AT training step (attack passes included), counted in eager fp32."""
    defense, model, optimizer, state = build("pgd_at", args, Setting(False, False, False))
    batch = make_batch(args.size.batch_size, args.device, False)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # its module hooks break autograd.grad w.r.t. inputs
    with counter:
        train_epoch(model, defense, [batch], optimizer, state, device=args.device)
    return float(counter.get_total_flops())


def timed_steps(setup: list, batch, steps: int, args, bf16: bool) -> float:
    """Seconds per training step over ``steps`` steps on one batch (updates setup's state)."""
    defense, model, optimizer, state = setup
    sync(args.device)
    start = time.perf_counter()
    _, setup[3] = train_epoch(model, defense, [batch] * steps, optimizer, state,
                              device=args.device, bf16=bf16)
    sync(args.device)
    return (time.perf_counter() - start) / (steps * defense.replays)


def training_table(args: argparse.Namespace, flops: float, peak: float | None) -> dict:
    """images/s and MFU of PGD-AT under each configuration; returns {config: mfu or None}."""
    size, results = args.size, {}
    print(f"\n{size.model} PGD-{args.attack_steps} AT, fake32 batch {size.batch_size}, "
          f"{flops / 1e12:.3f} TFLOP per step, peak "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}")
    print(f"{'configuration':<20}{'ms/step':>10}{'images/s':>10}{'TFLOP/s':>10}{'MFU':>8}")
    for name in args.configs or size.configs:
        setting = Setting.parse(name)
        setup = list(build("pgd_at", args, setting))
        batch = make_batch(size.batch_size, args.device, setting.channels_last)
        timed_steps(setup, batch, 1, args, setting.bf16)  # warm-up (and compilation)
        seconds = timed_steps(setup, batch, size.steps, args, setting.bf16)
        achieved = flops / seconds
        mfu = achieved / peak if peak else None
        results[name] = mfu
        print(f"{name:<20}{1000 * seconds:>10.1f}{size.batch_size / seconds:>10.1f}"
              f"{achieved / 1e12:>10.2f}{f'{mfu:.3f}' if mfu is not None else '-':>8}",
              flush=True)
    return results


def defense_ratios(args: argparse.Namespace) -> dict[str, float]:
    """Median step time of each defense over PGD-AT's, interleaved in shuffled rounds."""
    setting = Setting(args.cuda, args.cuda, False)  # bf16 + channels_last on the GPU
    batch = make_batch(args.size.batch_size, args.device, setting.channels_last)
    setups = {name: list(build(name, args, setting)) for name in DEFENSES}
    times: dict[str, list[float]] = {name: [] for name in DEFENSES}
    order = list(DEFENSES)
    for round_index in range(args.rounds + 1):  # round 0 warms up and is discarded
        random.Random(round_index).shuffle(order)
        for name in order:
            seconds = timed_steps(setups[name], batch, args.size.steps, args, setting.bf16)
            if round_index:
                times[name].append(seconds)
    reference = statistics.median(times["pgd_at"])
    ratios = {name: statistics.median(times[name]) / reference for name in DEFENSES}
    print(f"\ndefense step cost on {args.device.type} ({args.size.model}, "
          f"{'bf16+cl' if args.cuda else 'fp32'}), median of {args.rounds} rounds")
    for name in sorted(ratios, key=ratios.get):
        print(f"{name:<12}{1000 * statistics.median(times[name]):>10.1f} ms{ratios[name]:>8.2f}"
              " × pgd_at")
    return ratios


def pool_checkpoint(folder: Path, args: argparse.Namespace) -> Path:
    """A briefly PGD-AT-trained checkpoint, so attacks face correctly classified points."""
    from trainables.checkpoints import save_checkpoint
    from trainables.config import TrialConfig
    from trainables.engine import TrainingRun

    config = TrialConfig.from_dict({
        "dataset": args.pool_dataset, "model": args.size.pool_model, "defense": "pgd_at",
        "epsilon": 0.1, "attack_steps": 5, "attack_step_size": 0.03, "epochs": 1,
        "batch_size": 100, "lr": 0.05, "schedule": "constant", "lr_milestones": [],
        "train_subset": 5000 if args.cuda else 1000, "val_subset": 100, "num_threads": 1,
        "device": "auto" if args.cuda else "cpu"})
    run = TrainingRun(config)
    while not run.finished:
        run.run_epoch()
    return save_checkpoint(folder / "ckpt", model=run.model, config=run.config)


def pool_rate(checkpoint: Path, args: argparse.Namespace, evaluators: int) -> float:
    """examples/s of one pool run with ``evaluators`` actors on two published checkpoints."""
    from eval_overhead import run_pool  # a sibling script: benchmarks/ is on sys.path

    n = args.size.pool_examples
    gpus = 1 / evaluators if args.cuda else 0.0
    summary = run_pool(checkpoint, n=n, evaluators=evaluators, attacks=POOL_ATTACKS,
                       shard_size=max(1, n // 8), gpus_per_evaluator=gpus)
    rate = summary["examples"] / summary["wall_seconds"]
    print(f"pool, {evaluators} evaluator(s) × {gpus:g} GPU: {summary['examples']} examples in "
          f"{summary['wall_seconds']:.1f} s = {rate:.2f} examples/s", flush=True)
    return rate


def pool_scaling(args: argparse.Namespace) -> dict[int, float]:
    """Throughput with N evaluators over throughput with one, for each N of the size."""
    import ray

    cpus = torch.get_num_threads() if args.cuda else 2
    ray.init(num_cpus=cpus, num_gpus=1 if args.cuda else 0, log_to_driver=False,
             configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = pool_checkpoint(Path(folder), args)
            rates = {n: pool_rate(checkpoint, args, n) for n in args.size.pool_evaluators}
    finally:
        ray.shutdown()
    for n, rate in list(rates.items())[1:]:
        print(f"pool scaling, {n} evaluators / 1: {rate / rates[1]:.2f} "
              f"(target ≥ {0.85 * n:.2f})")
    return {n: rate / rates[1] for n, rate in rates.items()}


def main() -> None:
    args = parse_args()
    if not args.cuda:
        torch.set_num_threads(2)
        print("no CUDA GPU (or --small): CPU smoke size; GPU figures are pending")
    peak = peak_flops(args)
    mfu: dict[str, float | None] = {}
    if "train" not in args.skip:
        mfu = training_table(args, step_flops(args), peak)
    if "defenses" not in args.skip:
        defense_ratios(args)
    if "pool" not in args.skip:
        pool_scaling(args)
    label = f"{GPU_SIZE.model} PGD-{args.attack_steps} AT model FLOP utilisation"
    known = {name: value for name, value in mfu.items() if value is not None}
    if args.cuda and known:
        best = max(known, key=known.get)
        print(f"{label} ({best}): {known[best]:.2f} (target ≥ {MFU_TARGET:.2f})")
    else:
        reason = "no GPU" if not args.cuda else "unknown peak; pass --peak-tflops"
        print(f"{label} (bf16+cl+compile): pending ({reason}; target ≥ {MFU_TARGET:.2f})")


if __name__ == "__main__":
    main()
