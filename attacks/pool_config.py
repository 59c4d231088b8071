"""The evaluation pool's typed configuration: its fields are ``robust-sweeps pool``'s flags.

No heavy imports: command lines read it. The stores left empty (``tracking_uri``,
``state_dir``, ``pool_id``) are filled by the command line from ``$MLFLOW_TRACKING_URI``,
``$ROBUST_SWEEPS_HOME`` and the host before the pool runs.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# AutoAttack, PGD-100 with both losses, Square and a light SPSA: the leaderboard's columns.
DEFAULT_ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw", "square:queries=5000",
                   "spsa-light")


@dataclass(frozen=True)
class PoolConfig:
    """Evaluate every checkpoint awaiting evaluation and write one leaderboard run each."""

    # MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under $ROBUST_SWEEPS_HOME)
    tracking_uri: str | None = None
    state_dir: Path | None = None  # progress and checkpoint cache (default: HOME/pool)
    pool_id: str | None = None  # lease owner name; reuse it to resume a killed pool
    experiments: list[str] | None = None  # source experiments (default: all)
    sweep: str | None = None  # only this sweep's trials
    top_k: int | None = None  # only the sweep's k best trials by validation robust accuracy
    leaderboard: str = "leaderboard"  # leaderboard experiment
    artifact_location: str | None = None  # leaderboard artifacts (default: a server's, or home)
    attacks: tuple[str, ...] = DEFAULT_ATTACKS  # attack specs, name[:key=value,...]
    # cascade: attacks cheapest first, the full worst case and flags, per-attack columns only
    # for attacks that ran on every point (attacks.cascade); full: every per-attack column
    mode: str = "cascade"
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
    address: str | None = None  # Ray cluster (default: $RAY_ADDRESS, else a new local one)

    def __post_init__(self) -> None:
        positive = {"n_examples": self.n_examples, "shard_size": self.shard_size,
                    "evaluators": self.evaluators, "lease_seconds": self.lease_seconds,
                    "batch_size": self.batch_size, "eot_samples": self.eot_samples}
        bad = [f"{k}={v}" for k, v in positive.items() if v <= 0]
        if bad or self.cpus_per_evaluator < 0 or self.gpus_per_evaluator < 0:
            raise ValueError(f"pool settings must be positive: {', '.join(bad) or 'resources'}")
        if self.eot not in ("auto", "always", "never"):
            raise ValueError(f"--eot must be auto, always or never, got {self.eot!r}")
        if self.mode not in ("cascade", "full"):
            raise ValueError(f"--mode must be cascade or full, got {self.mode!r}")
        if self.top_k is not None and self.sweep is None:
            raise ValueError("--top-k needs --sweep")
        radii = {"epsilon": [] if self.epsilon is None else [self.epsilon],
                 "epsilon_curve": list(self.epsilon_curve)}
        for name, values in radii.items():
            if any(not (math.isfinite(value) and value > 0) for value in values):
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {values}")
        for spec in (*self.attacks, self.curve_attack):  # now, not on the first evaluator
            check_attack(spec, self.epsilon or 0.1)
        from attacks.shards import refuse_repeats

        refuse_repeats(self.attacks)


def _whole(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
            f"an integer >= {low}")


def _positive() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0, "a number > 0")


# What an attack's recorded settings may hold, by setting (any attack that records it).
SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": _whole(1), "restarts": _whole(1), "samples": _whole(1),
    "square_queries": _whole(1), "eot_samples": _whole(1), "seed": _whole(0),
    "epsilon": _positive(), "step_size": _positive(), "delta": _positive(), "lr": _positive(),
    "norm": (lambda v: v in ("linf", "l2"), "linf or l2"),
}


def _setting_rules() -> dict[str, tuple[Callable[[Any], bool], str]]:
    from attacks.pgd import LOSSES, RANDOM_STARTS

    return {**SETTING_RULES,
            "loss": (lambda v: v in LOSSES, f"one of {', '.join(LOSSES)}"),
            "random_start": (lambda v: v in RANDOM_STARTS or v is None or isinstance(v, bool),
                             f"one of {', '.join(RANDOM_STARTS)}")}


def check_attack(spec: str, epsilon: float = 0.1) -> None:
    """Fail (``ValueError`` naming the spec) unless ``spec`` builds an attack whose settings
    are in range: a known name, settings it takes (``pgd:steps``, ``pgd:foo=1`` fail) and
    values each setting allows (``pgd:steps=-1``, ``pgd:loss=xx`` fail). Nothing runs."""
    from attacks.suite import ALIASES, ATTACKS, create_attack, list_attacks, parse_spec

    try:
        base = parse_spec(spec)[0]
        if base not in ALIASES and base not in ATTACKS:
            raise ValueError(f"unknown attack {base!r}; known: {', '.join(list_attacks())}")
        # the checkpoint fills the norm and the defense; stand-ins build the attack here
        attack = create_attack(spec, defaults={"epsilon": epsilon, "seed": 0,
                                               "defense": "pgd_at"})
    except (ValueError, TypeError) as error:
        raise ValueError(f"attack {spec!r}: {error}") from None
    for name, (allowed, what) in _setting_rules().items():
        if name in attack.settings and not allowed(attack.settings[name]):
            raise ValueError(f"attack {spec!r}: {name} must be {what}, "
                             f"got {attack.settings[name]!r}")


def default_pool_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
