"""The evaluation pool's typed configuration: its fields are ``robust-sweeps pool``'s flags.

No heavy imports: command lines read it. The stores left empty (``tracking_uri``,
``state_dir``, ``pool_id``) are filled by the command line from ``$ROBUST_SWEEPS_HOME`` and the
host before the pool runs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

# AutoAttack, PGD-100 with both losses, Square and a light SPSA: the leaderboard's columns.
DEFAULT_ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw", "square:queries=5000",
                   "spsa-light")


@dataclass(frozen=True)
class PoolConfig:
    """Evaluate every checkpoint awaiting evaluation and write one leaderboard run each."""

    tracking_uri: str | None = None  # MLflow tracking URI (default: sqlite under the home)
    state_dir: Path | None = None  # progress and checkpoint cache (default: HOME/pool)
    pool_id: str | None = None  # lease owner name; reuse it to resume a killed pool
    experiments: list[str] | None = None  # source experiments (default: all)
    sweep: str | None = None  # only this sweep's trials
    top_k: int | None = None  # only the sweep's k best trials by validation robust accuracy
    leaderboard: str = "leaderboard"  # leaderboard experiment
    artifact_location: str | None = None  # leaderboard artifacts (default: the server's)
    attacks: tuple[str, ...] = DEFAULT_ATTACKS  # attack specs, name[:key=value,...]
    n_examples: int = 1000  # first n test points
    shard_size: int = 250  # points per unit of work
    epsilon: float | None = None  # radius (default: each checkpoint's training epsilon)
    seed: int = 0
    batch_size: int = 256
    epsilon_curve: tuple[float, ...] = ()  # also the curve attack's accuracy at these radii
    curve_attack: str = "aa-standard"
    margins: bool = False  # also per-example effective margins and AMR margin bounds
    eot: str = "auto"  # EOT attacks: auto (when the forward pass is random), always, never
    eot_samples: int = 20  # forward passes per EOT gradient
    indicators: bool = True  # the indicators of attack failure, on the first shard's points
    surrogate: str = "train"  # transfer indicator's surrogate: train, none, or an MLflow run id
    evaluators: int = 1  # evaluator actors
    cpus_per_evaluator: float = 1.0
    gpus_per_evaluator: float = 0.0  # fractions share a GPU
    lease_seconds: float = 600.0  # a claim not renewed for this long may be taken over
    settle_seconds: float = 1.0  # wait before confirming a claim
    watch: bool = False  # keep polling for new checkpoints
    poll_seconds: float = 30.0
    max_checkpoints: int | None = None  # stop after this many (per round)
    address: str | None = None  # Ray cluster (default: RAY_ADDRESS or a local cluster)

    def __post_init__(self) -> None:
        positive = {"n_examples": self.n_examples, "shard_size": self.shard_size,
                    "evaluators": self.evaluators, "lease_seconds": self.lease_seconds,
                    "batch_size": self.batch_size, "eot_samples": self.eot_samples}
        bad = [f"{k}={v}" for k, v in positive.items() if v <= 0]
        if bad or self.cpus_per_evaluator < 0 or self.gpus_per_evaluator < 0:
            raise ValueError(f"pool settings must be positive: {', '.join(bad) or 'resources'}")
        if self.eot not in ("auto", "always", "never"):
            raise ValueError(f"--eot must be auto, always or never, got {self.eot!r}")
        if self.top_k is not None and self.sweep is None:
            raise ValueError("--top-k needs --sweep")
        from attacks.suite import ALIASES, ATTACKS, list_attacks, parse_spec

        for spec in self.attacks:  # unknown names fail now, not on the first evaluator
            base = parse_spec(spec)[0]
            if base not in ALIASES and base not in ATTACKS:
                raise ValueError(f"unknown attack {base!r}; known: {', '.join(list_attacks())}")
        from attacks.shards import refuse_repeats

        refuse_repeats(self.attacks)


def default_pool_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
