"""The evaluation pool's typed configuration and its command line (``python -m attacks.pool``)."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from attacks.suite import ALIASES, ATTACKS, list_attacks, parse_spec

# AutoAttack, PGD-100 with both losses, Square and a light SPSA: the leaderboard's columns.
DEFAULT_ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw", "square:queries=5000",
                   "spsa-light")


@dataclass(frozen=True)
class PoolConfig:
    tracking_uri: str
    state_dir: Path
    pool_id: str
    experiments: list[str] | None = None
    sweep: str | None = None
    top_k: int | None = None
    leaderboard: str = "leaderboard"
    artifact_location: str | None = None
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    n_examples: int = 1000
    shard_size: int = 250
    epsilon: float | None = None
    seed: int = 0
    batch_size: int = 256
    epsilon_curve: tuple[float, ...] = ()
    curve_attack: str = "aa-standard"
    margins: bool = False
    evaluators: int = 1
    cpus_per_evaluator: float = 1.0
    gpus_per_evaluator: float = 0.0
    lease_seconds: float = 600.0
    settle_seconds: float = 1.0
    watch: bool = False
    poll_seconds: float = 30.0
    max_checkpoints: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        positive = {"n_examples": self.n_examples, "shard_size": self.shard_size,
                    "evaluators": self.evaluators, "lease_seconds": self.lease_seconds,
                    "batch_size": self.batch_size}
        bad = [f"{k}={v}" for k, v in positive.items() if v <= 0]
        if bad or self.cpus_per_evaluator < 0 or self.gpus_per_evaluator < 0:
            raise ValueError(f"pool settings must be positive: {', '.join(bad) or 'resources'}")
        if self.top_k is not None and self.sweep is None:
            raise ValueError("--top-k needs --sweep")
        for spec in self.attacks:  # unknown names fail now, not on the first evaluator
            base = parse_spec(spec)[0]
            if base not in ALIASES and base not in ATTACKS:
                raise ValueError(f"unknown attack {base!r}; known: {', '.join(list_attacks())}")


def default_pool_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_config(argv: list[str] | None = None) -> PoolConfig:
    from dashboards.tracking import default_artifact_location, default_tracking_uri
    from sweeps.runner import home

    parser = argparse.ArgumentParser(prog="python -m attacks.pool", description=(
        "Evaluate every checkpoint awaiting evaluation and write one leaderboard run each."))
    add = parser.add_argument
    add("--tracking-uri", help="MLflow tracking URI (default: sqlite under $ROBUST_SWEEPS_HOME)")
    add("--experiments", nargs="+", help="source experiments (default: all)")
    add("--sweep", help="only this sweep's trials")
    add("--top-k", type=int, help="only the sweep's k best trials by validation robust accuracy")
    add("--leaderboard", default="leaderboard", help="leaderboard experiment")
    add("--attacks", nargs="+", default=list(DEFAULT_ATTACKS),
        help=f"attack specs; known: {', '.join(list_attacks())}")
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
