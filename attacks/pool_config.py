"""The evaluation pool's typed configuration (no heavy imports: command lines read it)."""

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
        from attacks.suite import ALIASES, ATTACKS, list_attacks, parse_spec

        for spec in self.attacks:  # unknown names fail now, not on the first evaluator
            base = parse_spec(spec)[0]
            if base not in ALIASES and base not in ATTACKS:
                raise ValueError(f"unknown attack {base!r}; known: {', '.join(list_attacks())}")


def default_pool_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
