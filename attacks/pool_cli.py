"""The evaluation pool's command line (``python -m attacks.pool``, ``robust-sweeps pool``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attacks.evaluate_cli import ATTACK_HELP
from attacks.pool_config import DEFAULT_ATTACKS, PoolConfig, default_pool_id


def parse_config(argv: list[str] | None = None) -> PoolConfig:
    parser = argparse.ArgumentParser(description=(
        "Evaluate every checkpoint awaiting evaluation and write one leaderboard run each."))
    add = parser.add_argument
    add("--tracking-uri", help="MLflow tracking URI (default: sqlite under $ROBUST_SWEEPS_HOME)")
    add("--experiments", nargs="+", help="source experiments (default: all)")
    add("--sweep", help="only this sweep's trials")
    add("--top-k", type=int, help="only the sweep's k best trials by validation robust accuracy")
    add("--leaderboard", default="leaderboard", help="leaderboard experiment")
    add("--attacks", nargs="+", default=list(DEFAULT_ATTACKS),
        help=ATTACK_HELP)
    add("--n-examples", type=int, default=1000, help="first n test points")
    add("--shard-size", type=int, default=250, help="points per unit of work")
    add("--epsilon", type=float, help="radius (default: each checkpoint's training epsilon)")
    add("--seed", type=int, default=0)
    add("--batch-size", type=int, default=256)
    add("--epsilon-curve", type=float, nargs="*", default=[],
        help="also the curve attack's accuracy at these radii")
    add("--curve-attack", default="aa-standard")
    add("--margins", action="store_true",
        help="also per-example effective margins and AMR margin bounds")
    add("--evaluators", type=int, default=1, help="evaluator actors")
    add("--cpus-per-evaluator", type=float, default=1.0)
    add("--gpus-per-evaluator", type=float, default=0.0, help="fractions share a GPU")
    add("--state-dir", type=Path, help="progress and checkpoint cache (default: "
                                       "$ROBUST_SWEEPS_HOME/pool)")
    add("--pool-id", default=None, help="lease owner name; reuse it to resume a killed pool")
    add("--lease-seconds", type=float, default=600.0)
    add("--settle-seconds", type=float, default=1.0, help="wait before confirming a claim")
    add("--watch", action="store_true", help="keep polling for new checkpoints")
    add("--poll-seconds", type=float, default=30.0)
    add("--max-checkpoints", type=int, help="stop after this many (per round)")
    add("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    args = parser.parse_args(argv)
    from dashboards.runs import default_artifact_location, default_tracking_uri
    from sweeps.environment import home

    root = home()
    try:
        return PoolConfig(
            tracking_uri=args.tracking_uri or default_tracking_uri(root),
            artifact_location=None if args.tracking_uri else default_artifact_location(root),
            state_dir=(args.state_dir or root / "pool").resolve(),
            pool_id=args.pool_id or default_pool_id(), experiments=args.experiments,
            sweep=args.sweep, top_k=args.top_k, leaderboard=args.leaderboard,
            attacks=tuple(args.attacks), n_examples=args.n_examples,
            shard_size=args.shard_size, epsilon=args.epsilon, seed=args.seed,
            batch_size=args.batch_size, epsilon_curve=tuple(args.epsilon_curve),
            curve_attack=args.curve_attack, margins=args.margins, evaluators=args.evaluators,
            cpus_per_evaluator=args.cpus_per_evaluator,
            gpus_per_evaluator=args.gpus_per_evaluator, lease_seconds=args.lease_seconds,
            settle_seconds=args.settle_seconds, watch=args.watch,
            poll_seconds=args.poll_seconds, max_checkpoints=args.max_checkpoints,
            address=args.address)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m attacks.pool``: parse the flags, run the pool, print its summary."""
    config = parse_config(argv)
    from attacks.pool import run

    return run(config)
