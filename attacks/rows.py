"""One evaluation record as one leaderboard row: MLflow params, metrics and tags (plain data).

Metric names: ``clean_accuracy``, ``worst_case_accuracy`` and, per attack, its column
(:mod:`attacks.identity`: ``pgd100_ce_accuracy``, ``autoattack_accuracy``,
``square_queries1000_accuracy``), each with ``_ci_low``, ``_ci_high`` and ``_n``, plus
``<column>_seconds``. One attack, however its spec was spelled, writes one column, so rows
compare like with like. A row evaluated in the ``cascade`` mode (param and tag ``eval_mode``,
:mod:`attacks.cascade`) writes accuracy columns only for the attacks that ran on every
clean-correct point; every attack of it writes ``<column>_attacked`` and ``<column>_broken``
(points it ran on, and broke), so no column shows an accuracy the attack did not measure. A
record with labels of at most :data:`CLASS_METRICS_UP_TO` classes also writes, per class c,
``class{c}_clean_accuracy`` and ``class{c}_worst_case_accuracy`` (no interval beside them, so
they sort in the MLflow UI but are no leaderboard column; every class's counts and intervals
are in the row's record). Params hold what the row's numbers
depend on: the evaluation's settings (``eval_seed`` among them) and the training run's (its
seed, optimiser schedule, batch size, epochs and training data checksum). The tag
``report_schema`` names the schema version of the row's ``evaluation/report.json``; ``eot``
says whether its numbers came from EOT attacks.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from attacks.schema import SCHEMA_VERSION, Accuracy, EvaluationRecord, TrainingRecord

if TYPE_CHECKING:
    from attacks.shards import Plan

# the training run's tags a row keeps: config_group and seed_rerun group it with the runs of its
# configuration under other seeds (dashboards.groups)
CARRIED_TAGS = ("sweep", "trial_id", "defense", "dataset", "model", "code_version",
                "config_group", "seed_rerun")
MAX_TAG = 5000
CLASS_METRICS_UP_TO = 10  # per-class metrics for datasets of this many classes or fewer
UNKNOWN = "unknown"


def _with_interval(prefix: str, stats: Accuracy) -> dict[str, float]:
    return {f"{prefix}_accuracy": stats.accuracy, f"{prefix}_ci_low": stats.ci_low,
            f"{prefix}_ci_high": stats.ci_high, f"{prefix}_n": stats.n}


def row_metrics(record: EvaluationRecord) -> dict[str, float]:
    metrics = {**_with_interval("clean", record.clean),
               **_with_interval("worst_case", record.worst_case_accuracy),
               "flag_count": len(record.flags)}
    for attack in record.attacks:
        if record.complete(attack):
            metrics.update(_with_interval(attack.column, attack.accuracy))
        if attack.attacked is not None:
            metrics[f"{attack.column}_attacked"] = attack.attacked
            metrics[f"{attack.column}_broken"] = attack.broken
        metrics[f"{attack.column}_seconds"] = attack.seconds
    for point in record.epsilon_curve:
        metrics[f"curve_{point.epsilon:g}_accuracy"] = point.accuracy.accuracy
    for kind, values in record.margins.items():
        kept = [v for v, ok in zip(values, record.clean_correct, strict=True) if ok]
        if kept:  # over correctly classified points, as EMR and AMR report them
            metrics[f"{kind}_mean"] = sum(kept) / len(kept)
    return {**metrics, **class_metrics(record)}


def class_metrics(record: EvaluationRecord) -> dict[str, float]:
    """Per class c, ``class{c}_clean_accuracy`` and ``class{c}_worst_case_accuracy``; none
    without labels or with more than :data:`CLASS_METRICS_UP_TO` classes."""
    classes = record.per_class
    if len(classes) > CLASS_METRICS_UP_TO:
        return {}
    metrics = {}
    for found in classes:
        metrics[f"class{found.label}_clean_accuracy"] = found.clean_accuracy.accuracy
        metrics[f"class{found.label}_worst_case_accuracy"] = found.worst_case_accuracy.accuracy
    return metrics


def row_params(config: dict[str, Any], plan: Plan,
               training: TrainingRecord | None = None) -> dict[str, str]:
    """Dataset, model, defense and its knobs, the evaluation's own settings, and how the model
    was trained (``training``: from ``config`` when not given)."""
    training = training or TrainingRecord.from_config(config)
    params = {"dataset": config.get("dataset"), "model": config.get("model"),
              "defense": config.get("defense"), "weight_decay": config.get("weight_decay"),
              "train_epsilon": config.get("epsilon"), "epochs": config.get("epochs"),
              "epsilon": plan.epsilon, "norm": plan.norm, "eval_seed": plan.seed,
              "n_examples": plan.n_examples, "attacks": ",".join(plan.attacks),
              "eval_mode": plan.mode,
              "train_seed": training.seed, "lr": training.lr, "lr_schedule": training.schedule,
              "lr_milestones": json.dumps(list(training.lr_milestones or ())),
              "lr_gamma": training.lr_gamma, "momentum": training.momentum,
              "batch_size": training.batch_size, "extra_data": training.extra_data,
              "train_data_checksum": training.data_checksum or UNKNOWN}
    for knob, value in (config.get("defense_params") or {}).items():
        params[f"defense_params.{knob}"] = value
    return {key: str(value) for key, value in params.items()}


def row_tags(record: EvaluationRecord, *, source_experiment: str, source_tags: dict[str, str],
             seconds: float, plan: Plan) -> dict[str, str]:
    tags = {key: source_tags[key] for key in CARRIED_TAGS if key in source_tags}
    source = record.source
    tags.update({
        "source_run": source.source_run or UNKNOWN, "source_experiment": source_experiment,
        "checkpoint": source.checkpoint or UNKNOWN,
        "flagged": str(bool(record.flags)).lower(),
        "flags": "; ".join(record.flags)[:MAX_TAG] or "none",
        "data_checksum": source.data_checksum or UNKNOWN,
        "evaluation_seconds": f"{seconds:.1f}", "evaluation_plan": plan.key,
        "check_settings": json.dumps(plan.checks.to_dict()),
        "report_schema": str(SCHEMA_VERSION), "eot": str(record.eot).lower(),
        "eot_samples": str(record.eot_samples), "evaluation_mode": record.mode,
        "eval_mode": record.mode,
    })
    for attack in record.attacks:
        tags[f"attack.{attack.column}"] = json.dumps(
            {"label": attack.label, "name": attack.name, "settings": attack.settings},
            default=str)[:MAX_TAG]
    return tags
