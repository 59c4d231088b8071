"""``python -m attacks.evaluate CHECKPOINT``: evaluate a saved checkpoint on its test set.

The first ``--n-examples`` test points of the checkpoint's dataset are attacked at the
checkpoint's training radius (or ``--epsilon``); progress goes to stderr, a one-line summary
(the report without per-example flags) is the last line on stdout, and ``--json`` writes the
whole report, per-example flags included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ATTACK_HELP = ("attack specs, name[:key=value,...] (pgd:steps=100,loss=cw, aa-standard, "
               "square:queries=5000, spsa-light, ...); an unknown name fails with the list")

DEFAULT_ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint directory")
    parser.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS),
                        help=ATTACK_HELP)
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--epsilon", type=float, default=None,
                        help="radius (default: the checkpoint's training epsilon)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epsilon-curve", type=float, nargs="*", default=[],
                        help="also AutoAttack accuracy at these radii")
    parser.add_argument("--no-checks", action="store_true", help="skip the model probes")
    parser.add_argument("--device", help="default: cuda when there is one, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    return parser.parse_args(argv)


def compact(report: dict[str, Any]) -> dict[str, Any]:
    attacks = {label: {k: v for k, v in r.items() if k != "robust"}
               for label, r in report["attacks"].items()}
    return {k: v for k, v in report.items() if k != "clean_correct"} | {"attacks": attacks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from attacks.evaluate import evaluate_model
    from attacks.targets import checkpoint_context, load_points
    from trainables.checkpoints import CheckpointError, load_checkpoint

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.n_examples <= 0:
        raise SystemExit(f"error: --n-examples must be positive, got {args.n_examples}")
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
        seed=args.seed, batch_size=args.batch_size, checks=not args.no_checks,
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
