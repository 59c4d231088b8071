"""Training-step cost of every registered defense, as a ratio to PGD-AT, measured side by side.

All defenses train the same model architecture (each its own copy, from the same
initialisation) on the same real MNIST batches with the same training attack, one step per
round; rounds interleave the defenses in a balanced order (``ratios``) so that machine noise
falls on all of them alike. A defense's figure is the median over rounds of its step time over
``pgd_at``'s in the same round, with a bootstrap 95 % interval; rounds are added until every
ratio with a target has an interval under ±0.03 (``--half-width``) or ``--max-seconds`` is
spent, and the output says which. Steps are timed by the wall clock, or with ``--threads 1
--clock cpu`` by the thread's CPU time, which other processes on a shared machine do not
inflate.

    .venv/bin/python benchmarks/step_cost.py --defenses pgd_at emr trades he lma_at mart

A defense is named alone (its default knobs) or with knobs: ``emr:emr_base=trades,beta=12``.
By default every registered defense is measured, plus TRADES+EMR (the paper's second ratio).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch
import yaml
from ratios import CLOCKS, HALF_WIDTH, interleave

from trainables import data
from trainables.defenses import AttackSettings, create_defense, list_defenses
from trainables.engine import train_epoch
from trainables.models import create_model

REFERENCE = "pgd_at"
EXTRA = ["emr:emr_base=trades"]
# Issue targets (EMR: the paper measured 1.31 on a V100), printed last in this order.
TARGETS = {"trades": 1.15, "he": 1.05, "lma_at": 1.10, "mart": 1.10, "emr": 1.25}


def parse_defense(text: str) -> tuple[str, dict]:
    name, _, knobs = text.partition(":")
    params = {}
    for item in filter(None, knobs.split(",")):
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    return name, params


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4,
                        help="distinct batches the steps cycle over")
    parser.add_argument("--half-width", type=float, default=HALF_WIDTH,
                        help="stop once every targeted 95%% interval is narrower than ± this")
    parser.add_argument("--min-rounds", type=int, default=30)
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                        help="wall, or cpu (this thread's CPU time; --threads 1): shared machines")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="time cap")
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--defenses", nargs="*", default=None, help="default: all registered")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.defenses or [*list_defenses(), *EXTRA]
    if REFERENCE not in names:
        names = [REFERENCE, *names]
    info = data.dataset_info(args.dataset)
    train = data.load_dataset(args.dataset, "train", subset=args.batch_size * args.batches)
    batches = list(data.iterate_batches(train, args.batch_size))
    attack = AttackSettings(epsilon=info.epsilon, steps=args.attack_steps,
                            step_size=info.step_size)
    setups = {}
    for name in names:
        torch.manual_seed(0)
        defense_name, params = parse_defense(name)
        defense = create_defense(defense_name, attack=attack, **params)
        model = defense.model_hook(create_model(
            args.model, num_classes=info.num_classes, in_channels=info.channels,
            image_size=info.image_size, mean=info.mean, std=info.std))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        state = defense.init_state(num_examples=len(data.raw_data(args.dataset).train_labels),
                                   batch_size=args.batch_size, num_classes=info.num_classes,
                                   epochs=1)
        setups[name] = [defense, model, optimizer, state]
    streams = {name: itertools.cycle(batches) for name in names}
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        raise SystemExit("--clock cpu times the calling thread only: give --threads 1")
    clock = CLOCKS[args.clock]

    def step_of(name: str):
        def step() -> float:
            defense, model, optimizer, state = setups[name]
            batch = next(streams[name])
            start = clock()
            _, setups[name][3] = train_epoch(model, defense, [batch], optimizer, state)
            return (clock() - start) / defense.replays
        return step

    tracked = [name for name in TARGETS if name in names]
    measured = interleave({name: step_of(name) for name in names}, reference=REFERENCE,
                          tracked=tracked, half_width=args.half_width,
                          min_rounds=args.min_rounds, max_seconds=args.max_seconds,
                          progress=lambda m: print(m.summary(), file=sys.stderr, flush=True))
    ratios = {name: measured.ratio(name) for name in names if name != REFERENCE}
    print(f"model {args.model}, {args.dataset} batch {args.batch_size}, "
          f"{args.attack_steps}-step training attack, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, "
          f"{measured.rounds} interleaved rounds of one step per defense")
    print(f"{'defense':<24}{'ms/step':>10}{'× pgd_at':>10}  {'95% interval':<16}{'target':>8}")
    for name in sorted(names, key=measured.median_seconds):
        ratio = ratios.get(name)
        interval = f"[{ratio.low:.3f}, {ratio.high:.3f}]" if ratio else ""
        target = f"≤ {TARGETS[name]:.2f}" if name in TARGETS else ""
        print(f"{name:<24}{1000 * measured.median_seconds(name):>10.1f}"
              f"{ratio.value if ratio else 1.0:>10.3f}  {interval:<16}{target:>8}")
    print(measured.summary())
    for name, target in TARGETS.items():  # EMR last: the figure the paper measured
        if name in ratios:
            print(f"{name} step time / pgd_at: {ratios[name]} (target ≤ {target:.2f})")


if __name__ == "__main__":
    main()
