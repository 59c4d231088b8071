"""``python -m attacks.evaluate CHECKPOINT``: evaluate a saved checkpoint on its test set.

The first ``--n-examples`` test points of the checkpoint's dataset are attacked at the
checkpoint's training radius (or ``--epsilon``); progress goes to stderr, a one-line summary
(the report without per-example flags) is the last line on stdout, and ``--json`` writes the
whole report, per-example flags included.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from trainables.flags import parse

DEFAULT_ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw")


@dataclass(frozen=True)
class EvaluationFlags:
    """Evaluate one saved checkpoint on the first n points of its test set."""

    checkpoint: Annotated[Path, tyro.conf.Positional]  # a checkpoint directory
    attacks: tuple[str, ...] = DEFAULT_ATTACKS  # attack specs, name[:key=value,...]
    n_examples: int = 1000  # first n test points
    epsilon: float | None = None  # radius (default: the checkpoint's training epsilon)
    seed: int = 0
    batch_size: int = 256
    epsilon_curve: tuple[float, ...] = ()  # also AutoAttack accuracy at these radii
    checks: bool = True  # the model probes (gradient masking, randomness, ...)
    device: str | None = None  # default: cuda when there is one, else cpu
    threads: int | None = None  # torch CPU threads
    json: Path | None = None  # write the full report, per-example flags included, here

    def __post_init__(self) -> None:
        if self.n_examples <= 0:
            raise ValueError(f"--n-examples must be positive, got {self.n_examples}")


def parse_args(argv: list[str] | None = None) -> EvaluationFlags:
    return parse(EvaluationFlags, sys.argv[1:] if argv is None else argv)


def compact(report: dict[str, Any]) -> dict[str, Any]:
    attacks = {label: {k: v for k, v in r.items() if k != "robust"}
               for label, r in report["attacks"].items()}
    return {k: v for k, v in report.items() if k != "clean_correct"} | {"attacks": attacks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import dataclasses

    import torch

    from attacks.evaluate import evaluate_model
    from attacks.targets import checkpoint_context, load_points
    from trainables.checkpoints import CheckpointError, load_checkpoint

    args = dataclasses.replace(
        args, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.checkpoint, device=args.device)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    config = checkpoint.config
    epsilon = args.epsilon if args.epsilon is not None else config.resolved_epsilon
    x, y = load_points(config.dataset, args.n_examples, args.device)
    report = evaluate_model(
        checkpoint.model, x, y, attacks=args.attacks, epsilon=epsilon, norm=config.norm,
        seed=args.seed, batch_size=args.batch_size, checks=args.checks,
        epsilon_curve=args.epsilon_curve,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
        **checkpoint_context(config)).to_dict()
    report["checkpoint"] = str(args.checkpoint)
    report["dataset"] = config.dataset
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(compact(report)))
    return report
