"""The leaderboard as data: MLflow evaluation runs → a ranked pandas DataFrame, and exports.

One row per evaluated checkpoint (written by the evaluation pool). Rows are ranked by AutoAttack
accuracy (the worst case where no AutoAttack ran); rows with integrity flags are set apart after
the trusted ones and get no rank, whatever their numbers. Exports: CSV, Markdown, HTML, and a
row in RobustBench's model-info JSON format.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from dashboards.compare import McNemarResult, compare_reports
from dashboards.queue import EVAL_COMPLETE
from dashboards.runs import search_all

LEADERBOARD = "leaderboard"
# leaderboard column → metric prefix written by attacks.rows
ACCURACIES = {"clean": "clean", "autoattack": "autoattack", "pgd100_ce": "pgd-100-ce",
              "pgd100_cw": "pgd-100-cw", "square": "square", "spsa": "spsa",
              "worst_case": "worst_case"}
SHOWN = ["rank", "defense", "model", "dataset", "threat_model", "clean", "autoattack",
         "pgd100_ce", "pgd100_cw", "square", "spsa", "worst_case", "n", "device_hours",
         "flags", "sweep", "run_id"]


def _row(run) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row: dict[str, Any] = {
        "run_id": run.info.run_id, "name": run.info.run_name,
        "dataset": params.get("dataset"), "model": params.get("model"),
        "defense": params.get("defense"), "sweep": tags.get("sweep"),
        "epsilon": float(params.get("epsilon", "nan")), "norm": params.get("norm"),
        "n": int(metrics.get("clean_n", 0)), "flagged": tags.get("flagged") == "true",
        "flags": "" if tags.get("flags") in (None, "none") else tags["flags"],
        "source_run": tags.get("source_run"), "checkpoint": tags.get("checkpoint"),
        "evaluation_seconds": float(tags.get("evaluation_seconds", 0.0)),
        "train_seconds": metrics.get("train_seconds", math.nan),
    }
    row["threat_model"] = f"{row['norm']} ε={row['epsilon']:g}"
    for column, prefix in ACCURACIES.items():
        for suffix, key in (("", "accuracy"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            row[f"{column}{suffix}"] = metrics.get(f"{prefix}_{key}", math.nan)
    for key, value in params.items():
        if key.startswith("defense_params."):
            row[f"knob.{key.split('.', 1)[1]}"] = value
    seconds = row["evaluation_seconds"] + (0.0 if math.isnan(row["train_seconds"])
                                           else row["train_seconds"])
    row["device_hours"] = seconds / 3600
    return row


def load(tracking_uri: str, experiment: str = LEADERBOARD, *, dataset: str | None = None,
         threat_model: str | None = None, sweep: str | None = None,
         defense: str | None = None) -> pd.DataFrame:
    """The ranked leaderboard, filtered (``threat_model`` as shown, e.g. ``"linf ε=0.1"``)."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else search_all(client, [found.experiment_id],
                                               f"tags.{EVAL_COMPLETE} = 'true'")
    frame = pd.DataFrame([_row(run) for run in runs])
    if frame.empty:
        return pd.DataFrame(columns=SHOWN)
    for column, wanted in (("dataset", dataset), ("threat_model", threat_model),
                           ("sweep", sweep), ("defense", defense)):
        if wanted is not None:
            frame = frame[frame[column] == wanted]
    return rank(frame)


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Trusted rows by AutoAttack (else worst-case) accuracy, best first; flagged rows after."""
    frame = frame.copy()
    key = frame["autoattack"].where(frame["autoattack"].notna(), frame["worst_case"])
    frame["_key"] = key
    trusted = frame[~frame["flagged"]].sort_values(["_key", "clean"], ascending=False)
    flagged = frame[frame["flagged"]].sort_values(["_key", "clean"], ascending=False)
    trusted["rank"] = range(1, len(trusted) + 1)
    flagged["rank"] = pd.NA
    ranked = pd.concat([trusted, flagged]).drop(columns="_key").reset_index(drop=True)
    ranked["rank"] = ranked["rank"].astype("Int64")
    return ranked


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in SHOWN if c in frame.columns]]


def _cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if column in ACCURACIES and isinstance(value, float):
        return f"{100 * value:.2f}"
    if column == "device_hours":
        return f"{value:.3f}"
    if column == "run_id":
        return str(value)[:8]
    return str(value).replace("|", "\\|")


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of the shown columns (accuracies in %)."""
    table = shown(frame)
    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(row[c], c) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(frame: pd.DataFrame, path) -> None:
    frame.to_csv(path, index=False)


def to_html(frame: pd.DataFrame) -> str:
    table = shown(frame).copy()
    for column in table.columns:
        table[column] = [_cell(v, column) for v in table[column]]
    return table.to_html(index=False, classes="leaderboard", border=0, escape=True)


def robustbench_entry(row: pd.Series | dict[str, Any], *, name: str | None = None,
                      link: str = "", authors: str = "", venue: str = "",
                      reported: float | None = None) -> dict[str, Any]:
    """A row as RobustBench's ``model_info/<dataset>/<threat>/<name>.json`` content."""
    row = dict(row)
    flags = row.get("flags") or ""
    return {
        "link": link, "name": name or f"{row['defense']} ({row['model']})",
        "authors": authors, "additional_data": False, "number_forward_passes": 1,
        "dataset": row["dataset"], "venue": venue, "architecture": row["model"],
        "eps": f"{row['epsilon']:g}", "clean_acc": f"{100 * row['clean']:.2f}",
        "reported": "" if reported is None else f"{100 * reported:.2f}",
        "autoattack_acc": "" if math.isnan(row.get("autoattack", math.nan))
        else f"{100 * row['autoattack']:.2f}",
        "unreliable": bool(row.get("flagged")),
        "footnote": f"Evaluated on {row['n']} test points; flags: {flags}" if flags
        else f"Evaluated on {row['n']} test points.",
    }


def robustbench_json(row: pd.Series | dict[str, Any], **fields: Any) -> str:
    return json.dumps(robustbench_entry(row, **fields))


def row_report(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """A leaderboard row's full evaluation report (its ``evaluation/report.json``)."""
    with tempfile.TemporaryDirectory() as folder:
        path = MlflowClient(tracking_uri).download_artifacts(run_id, "evaluation/report.json",
                                                             folder)
        return json.loads(Path(path).read_text())


def compare_rows(tracking_uri: str, run_a: str, run_b: str,
                 attack: str = "worst_case") -> McNemarResult:
    """Exact McNemar test between two rows on their paired per-example flags."""
    return compare_reports(row_report(tracking_uri, run_a), row_report(tracking_uri, run_b),
                           attack)


def compare_sweeps(tracking_uri: str, sweep_a: str, sweep_b: str,
                   experiment: str = LEADERBOARD, attack: str = "worst_case"
                   ) -> tuple[str, str, McNemarResult]:
    """The best trusted row of each sweep, and whether their difference is significant."""
    best = []
    for sweep in (sweep_a, sweep_b):
        rows = load(tracking_uri, experiment, sweep=sweep)
        trusted = rows[~rows["flagged"]] if not rows.empty else rows
        if trusted.empty:
            raise ValueError(f"sweep {sweep!r} has no trusted leaderboard row")
        best.append(trusted.iloc[0]["run_id"])
    return best[0], best[1], compare_rows(tracking_uri, best[0], best[1], attack)
