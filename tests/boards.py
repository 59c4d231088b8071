"""Leaderboard stores for tests: rows written exactly as the evaluation pool writes them."""

import torch

from attacks.evaluate import AttackResult, build_report
from attacks.pool import record_row
from attacks.shards import Plan
from dashboards.queue import Candidate

N = 50


def flags(count: int, n: int = N) -> torch.Tensor:
    return torch.arange(n) < count


def synthetic_report(clean: int, aa: int, pgd: int, flag: str | None = None):
    results = [AttackResult("aa-standard", "autoattack", True, {"epsilon": 0.1}, flags(aa), 2.0),
               AttackResult("pgd-100-ce", "pgd", True, {"steps": 100}, flags(pgd), 1.0)]
    curve = [{"epsilon": e, "accuracy": a, "ci_low": 0, "ci_high": 1, "n": N}
             for e, a in ((0.05, (aa + 5) / N), (0.15, (aa - 10) / N))]
    margins = {"effective_margin": [0.01 * i for i in range(N)],
               "average_margin": [0.02 * i for i in range(N)]}
    return build_report(flags(clean), results, epsilon=0.1, norm="linf", seed=0,
                        model_checks=[flag] if flag else [], epsilon_curve=curve,
                        margins=margins)


ROWS = [  # defense, clean, AutoAttack, PGD-100, flag
    ("pgd_at", 46, 30, 32, None),
    ("emr", 45, 34, 35, None),
    ("trades", 44, 28, 29, None),
    ("broken", 49, 45, 48, "zero input gradient on 80% of points (gradient masking)"),
]


def write_board(root) -> str:
    """A sqlite MLflow store under ``root`` with one leaderboard row per entry of ROWS."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    plan = Plan(attacks=("aa-standard", "pgd-100-ce"), epsilon=0.1, norm="linf", seed=0,
                n_examples=N, shard_size=N)
    for i, (defense, clean, aa, pgd, flag) in enumerate(ROWS):
        candidate = Candidate(f"source{i}", "1", f"trial{i}", {
            "defense": defense, "sweep": "s1" if i < 2 else "s2", "dataset": "mnist",
            "model": "mlp"}, {}, 0.5)
        config = {"dataset": "mnist", "model": "mlp", "defense": defense, "epsilon": 0.1,
                  "defense_params": {"lambda_emr": 0.5} if defense == "emr" else {}}
        record_row(uri, "leaderboard", report=synthetic_report(clean, aa, pgd, flag),
                   plan=plan, config=config, candidate=candidate, checkpoint=f"/ck/{i}",
                   data_checksum="abc", seconds=30.0 + i, train_seconds=3600.0,
                   artifact_location=(root / "art").as_uri())
    return uri
