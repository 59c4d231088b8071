"""Engine overhead: our PGD-AT training step against a minimal hand-written PyTorch loop doing
the same work (same model initialisation, same real MNIST batches in the same order, PGD-k with
a uniform start in eval mode, one SGD step on CE at the adversarial points in train mode).

The engine runs with its default options (``train_epoch`` given only the model, the defense,
the batches and the optimizer). Each side trains its own copy of the model, one step per
round, on the same batch; rounds interleave the two in a balanced order (``ratios``) so that
machine noise falls on both alike. The figure is the median over rounds of the per-step ratio
ours / minimal, with a bootstrap 95 % interval; rounds are added until the interval is under
±0.03 (``--half-width``) or ``--max-seconds`` is spent, and the output says which. Steps are
timed by the wall clock, or with ``--threads 1 --clock cpu`` by the thread's CPU time, which
other processes on a shared machine do not inflate.

    .venv/bin/python benchmarks/engine_overhead.py --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from ratios import CLOCKS, HALF_WIDTH, interleave

from trainables import data
from trainables.defenses import AttackSettings, create_defense
from trainables.engine import train_epoch
from trainables.models import create_model


def minimal_epoch(model, batches, optimizer, *, epsilon: float, steps: int, step_size: float,
                  generator: torch.Generator) -> None:
    """The reference: what a researcher would write by hand for one PGD-AT epoch."""
    for x, y in batches:
        model.eval()
        x_adv = (x + torch.empty_like(x).uniform_(-epsilon, epsilon, generator=generator)
                 ).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"),
                                          x_adv)
            with torch.no_grad():
                x_adv = torch.min(torch.max(x_adv + step_size * grad.sign(), x - epsilon),
                                  x + epsilon).clamp(0, 1)
        model.train()
        loss = F.cross_entropy(model(x_adv.detach()), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def epochs_of(dataset: data.ArrayDataset, batch_size: int) -> Iterator:
    """The engine's own batches, epoch after epoch."""
    while True:
        yield from data.iterate_batches(dataset, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--examples", type=int, default=2048, help="images the steps cycle over")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--half-width", type=float, default=HALF_WIDTH,
                        help="stop once the 95%% interval is narrower than ± this")
    parser.add_argument("--min-rounds", type=int, default=30)
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                        help="wall, or cpu (this thread's CPU time; --threads 1): shared machines")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="time cap")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    epsilon, step_size = 0.3, 0.01
    dataset = data.load_dataset("mnist", "train", subset=args.examples)
    info = data.dataset_info("mnist")
    model = create_model(args.model, num_classes=10, in_channels=1, image_size=28,
                         mean=info.mean, std=info.std)
    defense = create_defense("pgd_at", attack=AttackSettings(
        epsilon=epsilon, steps=args.steps, step_size=step_size, random_start="uniform"))
    premade = itertools.cycle([(x, y) for x, y, _ in
                               data.iterate_batches(dataset, args.batch_size)])
    ours_model, minimal_model = model, copy.deepcopy(model)
    ours_optimizer, minimal_optimizer = (
        torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (model, minimal_model))
    ours_batches = epochs_of(dataset, args.batch_size)
    generator = torch.Generator().manual_seed(0)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        raise SystemExit("--clock cpu times the calling thread only: give --threads 1")
    clock = CLOCKS[args.clock]

    def ours() -> float:
        start = clock()
        train_epoch(ours_model, defense, itertools.islice(ours_batches, 1), ours_optimizer)
        return clock() - start

    def minimal() -> float:
        batch = next(premade)
        start = clock()
        minimal_epoch(minimal_model, [batch], minimal_optimizer, epsilon=epsilon,
                      steps=args.steps, step_size=step_size, generator=generator)
        return clock() - start

    measured = interleave({"ours": ours, "minimal": minimal}, reference="minimal",
                          half_width=args.half_width, min_rounds=args.min_rounds,
                          max_seconds=args.max_seconds,
                          progress=lambda m: print(m.summary(), file=sys.stderr, flush=True))
    ratio = measured.ratio("ours")
    print(f"{args.model}, {args.examples} real MNIST images, batch {args.batch_size}, PGD-"
          f"{args.steps}, {args.threads} threads, {args.clock} clock, {measured.rounds} "
          f"interleaved rounds of one step each: median ours "
          f"{1000 * measured.median_seconds('ours'):.1f} ms, minimal loop "
          f"{1000 * measured.median_seconds('minimal'):.1f} ms per step")
    print(measured.summary())
    print(f"engine overhead, ours / minimal PyTorch loop: {ratio} (target ≤ 1.00)")


if __name__ == "__main__":
    main()
