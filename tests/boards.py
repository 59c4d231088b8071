"""Leaderboard stores for tests: rows written exactly as the evaluation pool writes them, the SMD
and AMR rows from training runs published as a sweep's trials publish them."""

import torch
from mlflow.tracking import MlflowClient

from attacks.evaluate import AttackResult, build_report
from attacks.pool import record_row
from attacks.shards import Plan
from dashboards.queue import Candidate, submission_tags
from dashboards.runs import TrialTracker, now_ms
from trainables.defenses.smd import SMDState
from trainables.engine import write_state_margins

N = 50
MASKING = "zero input gradient on 80% of points (gradient masking)"
ROWS = [  # defense, knobs, clean, AutoAttack, PGD-100, flag, sweep
    ("pgd_at", {}, 46, 30, 32, None, "s1"),
    ("emr", {"lambda_emr": 0.5, "temperature": 2.0}, 45, 34, 35, None, "s1"),
    ("trades", {"beta": 6.0}, 44, 28, 29, None, "s2"),
    ("broken", {}, 49, 45, 48, MASKING, "s2"),
    ("emr", {"lambda_emr": 0.3, "temperature": 2.0}, 44, 27, 28, None, "s3"),
    ("smd", {}, 40, 25, 26, None, "s3"),
    ("pgd_at", {}, 45, 22, 24, None, "s3"),
    ("amr", {"lambda_margin": 0.1, "tau": 5.0, "beta_orth": 0.001}, 47, 20, 22, None, "s3"),
]
# the names the report gives them (tests.boards' knobs; the two PGD-AT rows read alike)
NAMES = ["PGD-AT", "EMR λ=0.5", "TRADES", "broken", "EMR λ=0.3", "SMD", "PGD-AT", "AMR"]
SMD_TRAINING = 200  # training examples of the SMD run, each with its margin
AMR_VALIDATION = {"val_average_margin": 0.8, "val_minimum_margin": -0.25}


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


def smd_state() -> SMDState:
    """An SMD state after training on ``SMD_TRAINING`` examples: example i's margin is
    (i mod 20) + 1 grey levels."""
    levels = (torch.arange(SMD_TRAINING) % 20 + 1).float()
    return SMDState(levels, torch.ones(SMD_TRAINING, dtype=torch.bool), epochs=10,
                    unit=1 / 255)


def training_run(uri: str, root, i: int, defense: str, knobs: dict, sweep: str) -> Candidate:
    """A trial's run as ``train_trial`` publishes it: its history (with AMR's validation margins
    for AMR) and its best checkpoint folder (with SMD's margin histogram beside it for SMD)."""
    checkpoint = root / f"checkpoint{i}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "config.json").write_text("{}")
    if defense == "smd":
        write_state_margins(smd_state(), checkpoint)
    history = [{"epoch": 1, "timestamp": now_ms(), "val_robust_accuracy": 0.5,
                **(AMR_VALIDATION if defense == "amr" else {})}]
    tags = {"sweep": sweep, "defense": defense, "dataset": "mnist", "model": "mlp"}
    tracker = TrialTracker(tracking_uri=uri, experiment="sweeps", sweep=sweep,
                           trial_id=f"trial{i}", parent_run_id=None,
                           artifact_location=(root / "art").as_uri(),
                           params={"defense": defense, "defense_params": knobs}, tags=tags,
                           trial_number=i)
    tracker.publish(history, checkpoint, tags=submission_tags(history[0], "val_robust_accuracy"),
                    timeout_s=0)
    experiment = MlflowClient(uri).get_run(tracker.run_id).info.experiment_id
    return Candidate(tracker.run_id, experiment, f"trial{i}", tags, {}, 0.5)


def write_board(root) -> str:
    """A sqlite MLflow store under ``root`` with one leaderboard row per entry of ROWS."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    plan = Plan(attacks=("aa-standard", "pgd-100-ce"), epsilon=0.1, norm="linf", seed=0,
                n_examples=N, shard_size=N)
    for i, (defense, knobs, clean, aa, pgd, flag, sweep) in enumerate(ROWS):
        if defense in ("smd", "amr"):
            candidate = training_run(uri, root, i, defense, knobs, sweep)
        else:
            candidate = Candidate(f"source{i}", "1", f"trial{i}", {
                "defense": defense, "sweep": sweep, "dataset": "mnist", "model": "mlp"}, {},
                0.5)
        config = {"dataset": "mnist", "model": "mlp", "defense": defense, "epsilon": 0.1,
                  "defense_params": knobs}
        record_row(uri, "leaderboard", report=synthetic_report(clean, aa, pgd, flag),
                   plan=plan, config=config, candidate=candidate, checkpoint=f"/ck/{i}",
                   data_checksum="abc", seconds=30.0 + i, train_seconds=3600.0,
                   artifact_location=(root / "art").as_uri())
    return uri
