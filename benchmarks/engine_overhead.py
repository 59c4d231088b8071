"""Engine overhead: our PGD-AT epoch against a minimal hand-written PyTorch loop doing the same
work (same model, same real MNIST batches in the same order, PGD-k with a uniform start in eval
mode, one SGD step on CE at the adversarial points in train mode).

Rounds interleave the two so machine noise falls on both alike; the printed ratio is the median
epoch time of ``trainables.engine.train_epoch`` over the median of the minimal loop.

    .venv/bin/python benchmarks/engine_overhead.py --model small_cnn --examples 2048 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    epsilon, step_size = 0.3, 0.01
    dataset = data.load_dataset("mnist", "train", subset=args.examples)
    info = data.dataset_info("mnist")
    model = create_model(args.model, num_classes=10, in_channels=1, image_size=28,
                         mean=info.mean, std=info.std)
    initial = copy.deepcopy(model.state_dict())
    defense = create_defense("pgd_at", attack=AttackSettings(
        epsilon=epsilon, steps=args.steps, step_size=step_size, random_start="uniform"))
    premade = [(x, y) for x, y, _ in data.iterate_batches(dataset, args.batch_size)]

    def ours() -> float:
        model.load_state_dict(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        start = time.perf_counter()
        train_epoch(model, defense, data.iterate_batches(dataset, args.batch_size), optimizer)
        return time.perf_counter() - start

    def minimal() -> float:
        model.load_state_dict(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        start = time.perf_counter()
        minimal_epoch(model, premade, optimizer, epsilon=epsilon, steps=args.steps,
                      step_size=step_size, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - start

    ours(), minimal()  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"ours": [], "minimal": []}
    for round_index in range(args.rounds):
        order = [("ours", ours), ("minimal", minimal)]
        for name, run in order if round_index % 2 == 0 else order[::-1]:
            times[name].append(run())
    ours_s, minimal_s = statistics.median(times["ours"]), statistics.median(times["minimal"])
    print(f"{args.model}, {args.examples} real MNIST images, batch {args.batch_size}, PGD-"
          f"{args.steps}, {args.threads} threads, median of {args.rounds} interleaved rounds: "
          f"ours {ours_s:.2f} s, minimal loop {minimal_s:.2f} s per epoch")
    print(f"engine overhead, ours / minimal PyTorch loop: {ours_s / minimal_s:.3f} "
          "(target ≤ 1.00)")


if __name__ == "__main__":
    main()
