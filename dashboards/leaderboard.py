"""The leaderboard as data: MLflow evaluation runs → a ranked pandas DataFrame, and exports.

One row per evaluated checkpoint (written by the evaluation pool). Accuracy columns come from
the metric names a row holds (``<column>_accuracy`` with its ``_ci_low`` / ``_ci_high``, one
column per canonical attack identity, :mod:`attacks.identity`): the well-known ones first in a
fixed order (:data:`WELL_KNOWN`), then any others by name. Rows are ranked by AutoAttack
accuracy (standard version; for a row whose numbers come from EOT attacks, the ``rand``
version's, and its ``eot`` column says so), the worst case where no AutoAttack ran; rows with
integrity flags are set apart after the trusted ones and get no rank, whatever their numbers.
Rows written before report schema 2 are read through the columns the leaderboard then showed.
Every row carries its device cost (:func:`row_cost`, :mod:`dashboards.cost`): the training
device-hours of the trial that made its checkpoint plus its evaluation's, in GPU-hours or
CPU-core-hours (``device_unit``), and its worst-case accuracy per device-hour beside them
(``robust_per_device_hour``); :func:`defense_costs` sums them per defense.
Exports: CSV, Markdown, HTML (each accuracy with its interval, rows named by
:func:`row_names`), and a row in RobustBench's model-info JSON format.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from attacks.schema import EvaluationRecord
from dashboards.compare import McNemarResult, compare_reports
from dashboards.cost import Cost, held, per_device_hour, total
from dashboards.groups import GROUP, run_group, seed_groups
from dashboards.queue import EVAL_COMPLETE
from dashboards.runs import search_all

LEADERBOARD = "leaderboard"
AUTOATTACK, AUTOATTACK_RAND, WORST_CASE = "autoattack", "autoattack_rand", "worst_case"
WELL_KNOWN = ("clean", AUTOATTACK, AUTOATTACK_RAND, "pgd100_ce", "pgd100_cw", "square", "spsa",
              "spsa_lma_at", WORST_CASE)
# the columns every row has (NaN where not measured), and for rows before report schema 2 the
# metric prefix such a row wrote each of them under
LEGACY = {"clean": "clean", AUTOATTACK: "autoattack", "pgd100_ce": "pgd-100-ce",
          "pgd100_cw": "pgd-100-cw", "square": "square", "spsa": "spsa", WORST_CASE: "worst_case"}
LEADING = ["rank", "defense", "model", "dataset", "threat_model"]
TRAILING = ["eot", "n", "device_hours", "device_unit", "robust_per_device_hour", "flags",
            "sweep", "run_id"]
SHOWN = [*LEADING, *WELL_KNOWN, *TRAILING]
INTERVAL = (("", "accuracy"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"))


def metric_columns(metrics: Iterable[str]) -> list[str]:
    """Accuracy columns named by metrics: ``X`` for each ``X_accuracy`` with its interval."""
    names = set(metrics)
    return [name[:-len("_accuracy")] for name in sorted(names) if name.endswith("_accuracy")
            and f"{name[:-len('_accuracy')]}_ci_low" in names]


def ordered(columns: Iterable[str]) -> list[str]:
    """The well-known columns in their fixed order, the others by name, the worst case last."""
    present = set(columns)
    known = [c for c in WELL_KNOWN if c in present and c != WORST_CASE]
    return known + sorted(present - set(WELL_KNOWN)) + ([WORST_CASE] if WORST_CASE in present
                                                        else [])


def accuracy_columns(frame: pd.DataFrame) -> list[str]:
    """The frame's accuracy columns (those with an interval beside them), in order."""
    return ordered(c for c in frame.columns if f"{c}_ci_low" in frame.columns)


def _accuracies(metrics: dict[str, float], schema: int) -> dict[str, float]:
    if schema >= 2:
        prefixes = {column: column for column in metric_columns(metrics)}
    else:
        prefixes = LEGACY
    row = {f"{column}{suffix}": math.nan for column in LEGACY for suffix, _ in INTERVAL}
    for column, prefix in prefixes.items():
        for suffix, key in INTERVAL:
            row[f"{column}{suffix}"] = metrics.get(f"{prefix}_{key}", math.nan)
    return row


def _row(run) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    eot = tags.get("eot") == "true"
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
        "eot": eot, "eot_samples": int(tags.get("eot_samples", "1")) if eot else 1,
        "eval_mode": tags.get("eval_mode", "full"),  # a cascade has fewer attack columns
        "eval_seed": params.get("eval_seed", params.get("seed")),
        "train_seed": params.get("train_seed"),
        "extra_data": params.get("extra_data", "False") == "True",
        GROUP: run_group(tags, params),
    }
    row["threat_model"] = f"{row['norm']} ε={row['epsilon']:g}"
    row.update(_accuracies(metrics, int(tags.get("report_schema", "1"))))
    for key, value in params.items():
        if key.startswith("defense_params."):
            row[f"knob.{key.split('.', 1)[1]}"] = value
    row.update(row_cost(metrics, row["train_seconds"], row["evaluation_seconds"]))
    row["robust_per_device_hour"] = per_device_hour(
        row[WORST_CASE], Cost(row["gpu_hours"], row["cpu_hours"]))
    return row


def row_cost(metrics: dict[str, float], train_seconds: float,
             evaluation_seconds: float) -> dict[str, Any]:
    """A row's device cost (:mod:`dashboards.cost`): its training (the source trial's, every
    attempt) and its evaluation, each in its own unit, and their sum — ``device_hours`` in
    ``device_unit`` (NaN where GPU-hours and CPU-core-hours meet; ``device_unit`` then says
    both) and ``gpu_hours`` / ``cpu_hours`` apart. A row written without them counts its
    training and evaluation seconds on one CPU core."""
    train = Cost.from_metrics(metrics, "train_") or held(
        0.0 if math.isnan(train_seconds) else train_seconds, cpus=1.0, gpus=0.0)
    evaluation = Cost.from_metrics(metrics, "evaluation_") or held(
        evaluation_seconds, cpus=1.0, gpus=0.0)
    cost = total([train, evaluation])
    found: dict[str, Any] = {}
    for prefix, part in (("train_", train), ("evaluation_", evaluation)):
        found.update({f"{prefix}device_hours": part.device_hours, f"{prefix}device_unit":
                      part.unit, f"{prefix}gpu_hours": part.gpu_hours,
                      f"{prefix}cpu_hours": part.cpu_hours})
    return {**found, "device_hours": cost.device_hours,
            "device_unit": cost.unit if cost.kind != "mixed" else cost.text(),
            "gpu_hours": cost.gpu_hours, "cpu_hours": cost.cpu_hours}


def defense_costs(frame: pd.DataFrame, sweeps: Sequence[dict[str, Any]] = ()) -> pd.DataFrame:
    """Device cost per defense: its leaderboard rows' training and evaluation and, where
    ``sweeps`` (``dashboards.runs.sweep_costs``) has them, every trial of its sweeps (early
    stopped and failed ones too); each sum in its own unit (``*_cost`` as text), ``total`` =
    sweeps + evaluation where sweeps are known, else rows' training + evaluation, and the best
    trusted row's worst-case accuracy per device-hour of that total."""
    rows = []
    for defense, group in (frame.groupby("defense", sort=True) if not frame.empty else []):
        train = total(_cost(r, "train_") for _, r in group.iterrows())
        evaluation = total(_cost(r, "evaluation_") for _, r in group.iterrows())
        tuning = [s["cost"] for s in sweeps if s.get("defense") == defense]
        whole = (total(tuning) if tuning else train) + evaluation
        trusted = group[~group["flagged"].astype(bool)]
        best = trusted[WORST_CASE].max() if not trusted.empty else math.nan
        rows.append({"defense": defense, "rows": len(group), "train_cost": train.text(),
                     "evaluation_cost": evaluation.text(),
                     "sweeps_cost": total(tuning).text() if tuning else "—",
                     "total_cost": whole.text(), "device_hours": whole.device_hours,
                     "device_unit": whole.unit, "best_worst_case": best,
                     "robust_per_device_hour": per_device_hour(best, whole)})
    return pd.DataFrame(rows, columns=["defense", "rows", "train_cost", "evaluation_cost",
                                       "sweeps_cost", "total_cost", "device_hours",
                                       "device_unit", "best_worst_case",
                                       "robust_per_device_hour"])


def _cost(row: pd.Series, prefix: str) -> Cost:
    return Cost(float(row[f"{prefix}gpu_hours"]), float(row[f"{prefix}cpu_hours"]))


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
    accuracies = [f"{c}{suffix}" for c in accuracy_columns(frame) for suffix, _ in INTERVAL]
    return rank(frame[[c for c in frame.columns if c not in accuracies] + accuracies])


def eot_autoattack(frame: pd.DataFrame) -> pd.Series:
    """AutoAttack's ``rand`` version (EOT) per row: ``autoattack_rand``, else a column of it with
    more settings (``autoattack_rand_eot20``), NaN where none ran."""
    columns = [c for c in accuracy_columns(frame)
               if c == AUTOATTACK_RAND or c.startswith(f"{AUTOATTACK_RAND}_")]
    found = pd.Series(math.nan, index=frame.index, dtype=float)
    for column in columns:
        found = found.where(found.notna(), frame[column])
    return found


def rank_key(frame: pd.DataFrame) -> pd.Series:
    """AutoAttack accuracy (the ``rand`` version for EOT rows), else the worst case."""
    key = frame[AUTOATTACK].astype(float)
    if "eot" in frame.columns:
        rand = eot_autoattack(frame)
        key = rand.where(frame["eot"].astype(bool) & rand.notna(), key)
    return key.where(key.notna(), frame[WORST_CASE])


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Trusted rows by AutoAttack (else worst-case) accuracy, best first; flagged rows after."""
    frame = frame.copy()
    frame["_key"] = rank_key(frame)
    trusted = frame[~frame["flagged"]].sort_values(["_key", "clean"], ascending=False)
    flagged = frame[frame["flagged"]].sort_values(["_key", "clean"], ascending=False)
    trusted["rank"] = range(1, len(trusted) + 1)
    flagged["rank"] = pd.NA
    ranked = pd.concat([trusted, flagged]).drop(columns="_key").reset_index(drop=True)
    ranked["rank"] = ranked["rank"].astype("Int64")
    return ranked


def shown_columns(frame: pd.DataFrame) -> list[str]:
    """The identifying columns, every accuracy column some row has (in order), then the row's
    bookkeeping."""
    filled = [c for c in accuracy_columns(frame) if frame[c].notna().any()]
    return [c for c in [*LEADING, *filled, *TRAILING] if c in frame.columns]


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[shown_columns(frame)]


def _cell(value: Any, column: str, accuracy: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if accuracy and isinstance(value, float):
        return f"{100 * value:.2f}"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if column == "device_hours":
        return f"{value:.3f}"
    if column == "robust_per_device_hour":  # accuracy points (%) per device-hour
        return f"{100 * value:.1f}"
    if column == "run_id":
        return str(value)[:8]
    return str(value).replace("|", "\\|")


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of the shown columns (accuracies in %)."""
    table, accuracies = shown(frame), set(accuracy_columns(frame))
    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(row[c], c, c in accuracies)
                                       for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(frame: pd.DataFrame, path) -> None:
    frame.to_csv(path, index=False)


# -- names: a defense and the knobs that tell its rows apart ----------------------------------
KNOB = "knob."
DEFENSE_NAMES = {"standard": "Standard", "pgd_at": "PGD-AT", "trades": "TRADES", "mart": "MART",
                 "alp": "ALP", "igr": "IGR", "mail_at": "MAIL-AT", "mail_trades": "MAIL-TRADES",
                 "fast_at": "Fast-AT", "free_at": "Free-AT", "emr": "EMR", "at_lma": "AT-LMA",
                 "trades_lma": "TRADES-LMA", "mart_lma": "MART-LMA", "lma_at": "LMA-AT",
                 "he": "HE", "m_he": "m-HE", "smd": "SMD", "amr": "AMR"}
# how a name writes each knob (the papers' symbols), in the order names list them; a knob not
# here is written by its name, after these
KNOB_SYMBOLS = {"lambda_emr": "λ", "lambda_alp": "λ", "lambda_igr": "λ", "lambda_margin": "λ",
                "lambda_kl": "λ_KL", "temperature": "t", "beta": "β", "beta_orth": "β_orth",
                "tau": "τ", "delta": "δ", "alpha": "α", "scale": "s", "margin": "m",
                "alpha_ratio": "α/ε", "replays": "replays", "step_ratio": "step",
                "slope": "slope", "bias": "bias", "plan_epochs": "N", "emr_exact": "exact",
                "emr_on": "on", "emr_base": "base", "he_base": "base", "igr_base": "base"}


def defense_name(defense: Any) -> str:
    """A defense as papers write it (``pgd_at`` → ``PGD-AT``); an unknown one as it is."""
    return DEFENSE_NAMES.get(str(defense), str(defense))


def _knob_value(value: Any) -> float | str:
    """A knob's value (params are text) as a number where it is one, else as text."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else str(value)


def knob_texts(values: Sequence[Any]) -> list[str]:
    """Knob values as names write them: numbers with two significant digits (``0.866`` →
    ``0.87``, ``6.0`` → ``6``), more where two different values would otherwise read alike."""
    parsed = [_knob_value(v) for v in values]
    distinct = len(set(parsed))
    for digits in range(2, 18):
        texts = [f"{v:.{digits}g}" if isinstance(v, float) else v for v in parsed]
        if len(set(texts)) == distinct:
            return texts
    return [str(v) for v in parsed]


def _knob_order(column: str) -> tuple[int, str]:
    knob = column[len(KNOB):]
    order = list(KNOB_SYMBOLS)
    return (order.index(knob) if knob in KNOB_SYMBOLS else len(order), knob)


def distinguishing_knobs(rows: pd.DataFrame) -> list[str]:
    """The ``knob.*`` columns whose values differ between ``rows`` (in :data:`KNOB_SYMBOLS`
    order, then by name)."""
    columns = sorted((c for c in rows.columns if c.startswith(KNOB)), key=_knob_order)
    return [c for c in columns if len({_knob_value(v) for v in rows[c]}) > 1]


def row_names(frame: pd.DataFrame) -> dict[str, str]:
    """Each row's name, by run id: its defense as papers write it and the knobs that differ
    between the rows of that defense (``TRADES β=6``, ``EMR λ=0.3, t=2``); rows whose names
    still read alike get the start of their run id, 8 characters or as many as tell them apart
    (``PGD-AT (2b93873f)``)."""
    names: dict[str, str] = {}
    if frame.empty:
        return names
    defenses = frame["defense"].astype(str)
    for defense in dict.fromkeys(defenses):
        rows = frame[defenses == defense]
        parts: list[list[str]] = [[] for _ in range(len(rows))]
        for column in distinguishing_knobs(rows):
            knob = column[len(KNOB):]
            for part, text in zip(parts, knob_texts(list(rows[column])), strict=True):
                part.append(f"{KNOB_SYMBOLS.get(knob, knob)}={text}")
        for run_id, part in zip(rows["run_id"].astype(str), parts, strict=True):
            names[run_id] = f"{defense_name(defense)} {', '.join(part)}".strip()
    tied: dict[str, list[str]] = {}
    for run_id, name in names.items():
        tied.setdefault(name, []).append(run_id)
    for name, run_ids in tied.items():
        if len(run_ids) > 1:
            length = next(k for k in range(8, 1 + max(map(len, run_ids)))
                          if len({r[:k] for r in run_ids}) == len(run_ids))
            names.update({r: f"{name} ({r[:length]})" for r in run_ids})
    return names


# -- over seeds ----------------------------------------------------------------------------------
def over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows grouped by configuration (:func:`dashboards.groups.seed_groups` over every
    accuracy column), each group named (``name``) as :func:`row_names` names its first row among
    one row per group, the best mean AutoAttack (else worst-case) accuracy first; groups with
    a flagged run after the others, as the leaderboard sets flagged rows apart."""
    columns = accuracy_columns(frame)
    groups = seed_groups(frame, columns)
    if groups.empty:
        return groups.assign(name=pd.Series(dtype=str))
    first = frame.set_index(frame["run_id"].astype(str)).loc[
        [run_ids[0] for run_ids in groups["run_ids"]]].reset_index(drop=True)
    names = row_names(first)
    groups.insert(0, "name", [names[run_ids[0]] for run_ids in groups["run_ids"]])
    means = {c: groups[f"{c}_mean"] for c in columns}
    key = means.get(AUTOATTACK, pd.Series(math.nan, index=groups.index))
    if WORST_CASE in means:
        key = key.where(key.notna(), means[WORST_CASE])
    order = pd.DataFrame({"flagged": groups["flagged"] > 0, "key": key.fillna(-math.inf)})
    order = order.sort_values(["flagged", "key"], ascending=[True, False], kind="stable").index
    return groups.loc[order].reset_index(drop=True)


# -- HTML ----------------------------------------------------------------------------------------
# said once, in the caption, when every row has the same value
SHARED: dict[str, Callable[[Any], str]] = {
    "model": lambda v: f"model {v}", "dataset": lambda v: f"dataset {v}",
    "threat_model": lambda v: f"threat model {v}",
    "eot": lambda v: "EOT attacks" if bool(v) else "no EOT", "n": lambda v: f"n = {v} points",
    "device_unit": lambda v: f"device-hours in {v}"}
HEADERS = {"rank": "#", "defense": "row", "device_hours": "device-hours",
           "device_unit": "unit", "robust_per_device_hour": "worst case %/device-hour",
           "run_id": "MLflow run"}


def interval_text(value: Any, low: Any, high: Any) -> str:
    """An accuracy and its 95 % interval in %, compactly: ``51.3 [45.7, 56.9]``; ``—`` when
    not measured."""
    if _missing(value):
        return "—"
    if _missing(low) or _missing(high):
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _short(text: str, length: int = 80) -> str:
    """``text`` cut at a word to at most ``length`` characters (an ellipsis where cut)."""
    return text if len(text) <= length else text[:length - 1].rsplit(" ", 1)[0] + "…"


def _accuracy_html(row: pd.Series, column: str) -> str:
    text = interval_text(row[column], row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high"))
    value, _, interval = text.partition(" ")
    return html.escape(value) + (f" <span class='ci'>{html.escape(interval)}</span>"
                                 if interval else "")


def to_html(frame: pd.DataFrame, *, names: dict[str, str] | None = None,
            links: dict[str, str] | None = None) -> str:
    """The shown columns as an HTML table (class ``leaderboard``): each row named
    (:func:`row_names`, or ``names`` by run id) in place of its bare defense, every accuracy in
    % with its 95 % interval (``51.3 [45.7, 56.9]``, the interval in a ``span.ci``), the
    identifying columns all rows share said once in the caption, the flags column only when
    some row is flagged (the first 80 characters; all of them in the cell's title), and each
    run id, beside the name, a link to ``links[run_id]`` where one is given."""
    names = row_names(frame) if names is None else names
    links = links or {}
    accuracies = set(accuracy_columns(frame))
    columns = [c for c in shown_columns(frame)
               if not (c in SHARED and frame[c].nunique(dropna=False) == 1)
               and not (c == "flags" and not frame[c].astype(bool).any())]
    if "run_id" in columns and "defense" in columns:  # the link beside the name
        columns.remove("run_id")
        columns.insert(columns.index("defense") + 1, "run_id")
    shared = [write(frame[c].iloc[0]) for c, write in SHARED.items()
              if c in frame.columns and c not in columns and len(frame)]
    head = "".join(f"<th>{html.escape(HEADERS.get(c, c)).replace('_', '_<wbr>')}</th>"
                   for c in columns)
    body = []
    for _, row in frame.iterrows():
        run_id = str(row["run_id"])
        cells = []
        for column in columns:
            if column in accuracies:
                cells.append(f"<td class='acc' data-column='{html.escape(column)}'>"
                             f"{_accuracy_html(row, column)}</td>")
            elif column == "defense":
                cells.append(f"<td class='name'>{html.escape(names.get(run_id, run_id))}</td>")
            elif column == "flags":
                cells.append(f"<td class='flags' title='{html.escape(str(row[column]))}'>"
                             f"{html.escape(_short(str(row[column])))}</td>")
            elif column == "run_id" and run_id in links:
                cells.append(f"<td><a class='mlflow-run' href='{html.escape(links[run_id])}'>"
                             f"{html.escape(run_id[:8])}</a></td>")
            else:
                cells.append(f"<td class='{html.escape(column)}'>"
                             f"{html.escape(_cell(row[column], column))}</td>")
        flagged = " class='flagged'" if bool(row.get("flagged", False)) else ""
        body.append(f"<tr data-run-id='{html.escape(run_id)}'{flagged}>{''.join(cells)}</tr>")
    caption = (f"<caption>Accuracy in % with its 95 % interval. All rows: "
               f"{html.escape(', '.join(shared))}.</caption>" if shared else
               "<caption>Accuracy in % with its 95 % interval.</caption>")
    return (f"<table class='leaderboard'>{caption}<thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def paper_epsilon(epsilon: float) -> str:
    """ε as papers and RobustBench write it: ``k/255`` when ε·255 is an integer k ≥ 1 (within
    1e-6) and ε is not a decimal of at most two places (0.1, 0.3, 0.5, 1 stay decimals, as
    MNIST's and L2 radii are written); otherwise ``{ε:g}``. 8/255 → ``"8/255"``."""
    k = round(epsilon * 255)
    if k >= 1 and abs(epsilon * 255 - k) < 1e-6 and abs(epsilon - round(epsilon, 2)) > 1e-12:
        return f"{k}/255"
    return f"{epsilon:g}"


def robustbench_entry(row: pd.Series | dict[str, Any], *, name: str | None = None,
                      link: str = "", authors: str = "", venue: str = "",
                      reported: float | None = None) -> dict[str, Any]:
    """A row as RobustBench's ``model_info/<dataset>/<threat>/<name>.json`` content: ε as the
    paper writes it (:func:`paper_epsilon`), extra training data from the training config,
    forward passes per prediction from EOT (``eot_samples`` for an EOT row, else 1), AutoAttack
    accuracy of the version the row was ranked by (``rand`` for an EOT row), unreliable when
    flagged."""
    row = dict(row)
    flags = row.get("flags") or ""
    eot = bool(row.get("eot", False))
    autoattack = row.get(AUTOATTACK, math.nan)
    if eot:
        autoattack = eot_autoattack(pd.DataFrame([row])).iloc[0]
    return {
        "link": link, "name": name or f"{row['defense']} ({row['model']})",
        "authors": authors, "additional_data": bool(row.get("extra_data", False)),
        "number_forward_passes": int(row.get("eot_samples", 1)) if eot else 1,
        "dataset": row["dataset"], "venue": venue, "architecture": row["model"],
        "eps": paper_epsilon(row["epsilon"]), "clean_acc": f"{100 * row['clean']:.2f}",
        "reported": "" if reported is None else f"{100 * reported:.2f}",
        "autoattack_acc": "" if math.isnan(autoattack) else f"{100 * autoattack:.2f}",
        "unreliable": bool(row.get("flagged")),
        "footnote": f"Evaluated on {row['n']} test points; flags: {flags}" if flags
        else f"Evaluated on {row['n']} test points.",
    }


def robustbench_json(row: pd.Series | dict[str, Any], **fields: Any) -> str:
    return json.dumps(robustbench_entry(row, **fields))


def row_report(tracking_uri: str, run_id: str) -> EvaluationRecord:
    """A leaderboard row's evaluation record (its ``evaluation/report.json``, older schema
    versions upgraded)."""
    with tempfile.TemporaryDirectory() as folder:
        path = MlflowClient(tracking_uri).download_artifacts(run_id, "evaluation/report.json",
                                                             folder)
        return EvaluationRecord.from_dict(json.loads(Path(path).read_text()))


def compare_rows(tracking_uri: str, run_a: str, run_b: str,
                 attack: str = WORST_CASE) -> McNemarResult:
    """Exact McNemar test between two rows on their paired per-example flags (``attack``: a
    column such as ``pgd100_ce``, a label, ``worst_case`` or ``clean``)."""
    return compare_reports(row_report(tracking_uri, run_a), row_report(tracking_uri, run_b),
                           attack)


def compare_sweeps(tracking_uri: str, sweep_a: str, sweep_b: str,
                   experiment: str = LEADERBOARD, attack: str = WORST_CASE
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
