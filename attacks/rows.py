"""One evaluation as one leaderboard row: MLflow params, metrics and tags (plain data).

Metric names: ``clean_accuracy``, ``worst_case_accuracy`` and, per attack, the slug of its label
(``pgd-100-ce_accuracy``, ``square_queries_1000_accuracy``), each with ``_ci_low``, ``_ci_high``
and ``_n``, plus ``<slug>_seconds``. The first attack of each well-known kind is also written
under its kind's name (``autoattack_accuracy``, ``square_accuracy``, ``spsa_accuracy``), so
leaderboards compare like with like whatever the labels were.
"""

from __future__ import annotations

import json
from typing import Any

from attacks.evaluate import Report, summary
from attacks.shards import Plan, slug

CANONICAL = ("autoattack", "square", "spsa", "apgd-ce", "apgd-t", "fab-t", "fgsm", "adaptive")
CARRIED_TAGS = ("sweep", "trial_id", "defense", "dataset", "model", "code_version")
MAX_TAG = 5000


def _with_interval(prefix: str, stats: dict[str, float | int]) -> dict[str, float]:
    return {f"{prefix}_accuracy": stats["accuracy"], f"{prefix}_ci_low": stats["ci_low"],
            f"{prefix}_ci_high": stats["ci_high"], f"{prefix}_n": stats["n"]}


def row_metrics(report: Report) -> dict[str, float]:
    metrics = {**_with_interval("clean", summary(report.clean)),
               **_with_interval("worst_case", summary(report.worst_case)),
               "flag_count": len(report.flags)}
    named: set[str] = set()
    for label, result in report.attacks.items():
        stats = summary(result.robust & report.clean)
        metrics.update(_with_interval(slug(label), stats))
        metrics[f"{slug(label)}_seconds"] = result.seconds
        if result.name in CANONICAL and result.name not in named and result.name != label:
            named.add(result.name)
            metrics.update(_with_interval(slug(result.name), stats))
    for point in report.epsilon_curve:
        metrics[f"curve_{point['epsilon']:g}_accuracy"] = point["accuracy"]
    for kind, values in report.margins.items():
        kept = [v for v, ok in zip(values, report.clean.tolist(), strict=True) if ok]
        if kept:  # over correctly classified points, as EMR and AMR report them
            metrics[f"{kind}_mean"] = sum(kept) / len(kept)
    return metrics


def row_params(config: dict[str, Any], plan: Plan) -> dict[str, str]:
    """Dataset, model, defense and its knobs, and the evaluation's own settings."""
    params = {"dataset": config.get("dataset"), "model": config.get("model"),
              "defense": config.get("defense"), "weight_decay": config.get("weight_decay"),
              "train_epsilon": config.get("epsilon"), "epochs": config.get("epochs"),
              "epsilon": plan.epsilon, "norm": plan.norm, "seed": plan.seed,
              "n_examples": plan.n_examples, "attacks": ",".join(plan.attacks)}
    for knob, value in (config.get("defense_params") or {}).items():
        params[f"defense_params.{knob}"] = value
    return {key: str(value) for key, value in params.items()}


def row_tags(report: Report, *, source_run: str, source_experiment: str, checkpoint: str,
             source_tags: dict[str, str], data_checksum: str, seconds: float,
             plan: Plan) -> dict[str, str]:
    tags = {key: source_tags[key] for key in CARRIED_TAGS if key in source_tags}
    tags.update({
        "source_run": source_run, "source_experiment": source_experiment,
        "checkpoint": checkpoint, "flagged": str(bool(report.flags)).lower(),
        "flags": "; ".join(report.flags)[:MAX_TAG] or "none",
        "data_checksum": data_checksum, "evaluation_seconds": f"{seconds:.1f}",
        "evaluation_plan": plan.key,
        "check_settings": json.dumps(plan.checks.to_dict()),
    })
    for label, result in report.attacks.items():
        tags[f"attack.{slug(label)}"] = json.dumps(result.settings, default=str)[:MAX_TAG]
    return tags
