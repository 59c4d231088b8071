"""``python -m dashboards.report``: the leaderboard as one static HTML page with PNG plots.

The page opens from disk with no server. It shows:

* the ranked leaderboard (flagged rows set apart), each row named by its defense and the knobs
  that set it apart from the other rows of that defense
  (:func:`dashboards.leaderboard.row_names`), every accuracy with its 95 % interval, each row
  linked to its run in the MLflow UI (``mlflow_ui``); the table scrolls sideways on its own;
* over seeds, when some configuration ran more than once: its runs grouped (their
  ``config_group``, :mod:`dashboards.groups`) with each accuracy's mean ± std over them;
* which differences between the best trusted rows (up to :data:`TOP`, by the rank key) are
  real: the exact McNemar test of every pair on their paired per-example flags, and a sentence
  on the best row against the runner-up;
* per class: the clean and worst-case accuracy of each true class, with its 95 % interval, for
  the first :data:`TOP` rows whose records hold their points' labels (:func:`class_html`);
* margins: histograms of the effective margin (EMR Eq. 3) and of AMR's L2 margin bound on the
  test points; SMD's per-example margins, from the histogram its training run publishes beside
  the evaluated checkpoint (:data:`STATE_MARGINS`, ``trainables.engine.write_state_margins``);
  AMR's average and minimum margin on the test points and as its training run last measured
  them on validation images (:data:`AMR_TRAINING`); "no data" where no row has them;
* the Pareto front of clean vs AutoAttack accuracy by defense, AutoAttack accuracy against ε,
  each sweep's Optuna optimisation history and parameter importances, and the cost of every row
  in device-hours;
* cost per defense (:func:`cost_section`): device-hours of its rows' training and evaluation
  and of its sweeps' trials, and the best worst-case accuracy per device-hour; each leaderboard
  row shows its own device-hours, unit and worst-case accuracy per device-hour.

Per-example data comes from each row's evaluation record (``evaluation/report.json``,
:mod:`attacks.schema`); the row names label the table, the ε curves, the margin figures and the
comparisons alike.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from attacks.schema import Accuracy, EvaluationRecord
from dashboards import plots
from dashboards.artifacts import CHECKPOINT_ARTIFACT
from dashboards.compare import McNemarResult, compare_reports
from dashboards.groups import repeated
from dashboards.groups import to_html as groups_html
from dashboards.leaderboard import (
    AUTOATTACK,
    AUTOATTACK_RAND,
    LEADERBOARD,
    WORST_CASE,
    accuracy_columns,
    defense_costs,
    interval_text,
    load,
    over_seeds,
    row_names,
    row_report,
    to_html,
    to_markdown,
)
from dashboards.runs import sweep_costs

MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
TOP = 5  # trusted rows compared pairwise
ALPHA = 0.05  # significance level of the comparisons
SMD, AMR = "smd", "amr"
# SMD's per-example margins as its training run publishes them beside the best checkpoint
# (trainables.engine.MARGIN_HISTOGRAM)
STATE_MARGINS = "margin_histogram.json"
# AMR's average and minimum margin on validation images, as its training run logs them
AMR_TRAINING = ("val_average_margin", "val_minimum_margin")

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}
code{overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%;margin:0.5em 0}
table{border-collapse:collapse;font-size:13px}
table td,table th{padding:3px 7px;border-bottom:1px solid #ddd;white-space:nowrap;
text-align:left;vertical-align:top}
table.leaderboard th{white-space:normal;vertical-align:bottom}
table caption{caption-side:bottom;text-align:left;font-size:12px;color:#555;padding-top:4px}
td.acc{text-align:right;font-variant-numeric:tabular-nums}
td.name{white-space:normal;min-width:9em;max-width:20em}
td.flags{white-space:normal;min-width:12em;max-width:22em;font-size:12px;color:#a33}
.ci{color:#777;font-size:11px}
tr.flagged td{color:#a33}
table.mcnemar td{text-align:right;font-variant-numeric:tabular-nums}
table.mcnemar td.significant{background:#e3f1e3;font-weight:600}
table.mcnemar td.diagonal{color:#bbb;text-align:center}
table.mcnemar th.name{white-space:normal;max-width:14em}
.p{color:#666;font-size:11px;font-weight:400}
figure{display:inline-block;margin:1em;max-width:100%}figure img{max-width:100%}
figcaption{font-size:13px;color:#555;max-width:640px}
.flagged{color:#a33}
table.per-class td{text-align:right;font-variant-numeric:tabular-nums}
table.per-class th.name{white-space:normal;max-width:14em;text-align:center}
table.per-class td.lowest{font-weight:600}"""


# -- rows: records, links, what ranks them ------------------------------------------------------
def row_reports(tracking_uri: str, frame: pd.DataFrame) -> dict[str, EvaluationRecord]:
    """Each row's evaluation record (per-example flags, curve, margins)."""
    reports = {}
    for run_id in frame["run_id"]:
        try:
            reports[run_id] = row_report(tracking_uri, run_id)
        except Exception:  # a row without the artifact simply has no curves
            continue
    return reports


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI served at ``ui``."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def run_links(tracking_uri: str, experiment: str, frame: pd.DataFrame, ui: str | None
              ) -> dict[str, str]:
    """Each row's MLflow UI page, by run id (none without ``ui`` or rows)."""
    if not ui or frame.empty:
        return {}
    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return {}
    return {str(r): run_url(ui, found.experiment_id, str(r)) for r in frame["run_id"]}


def rank_columns(frame: pd.DataFrame) -> dict[str, str]:
    """The column whose per-example flags rank each row, by run id (as
    :func:`dashboards.leaderboard.rank_key` ranks it): AutoAttack's ``rand`` version for an EOT
    row, else AutoAttack, else the worst case."""
    columns = accuracy_columns(frame)
    rand = [c for c in columns if c == AUTOATTACK_RAND or c.startswith(f"{AUTOATTACK_RAND}_")]
    found = {}
    for _, row in frame.iterrows():
        measured = [c for c in rand if pd.notna(row[c])] if bool(row.get("eot")) else []
        if not measured and AUTOATTACK in row.index and pd.notna(row[AUTOATTACK]):
            measured = [AUTOATTACK]
        found[str(row["run_id"])] = measured[0] if measured else WORST_CASE
    return found


def curve_points(record: EvaluationRecord) -> list[dict[str, float]]:
    """The ε curve of a record, with the AutoAttack accuracy at the evaluation's own ε."""
    points = [point.to_dict() for point in record.epsilon_curve]
    main = [a for a in record.attacks if a.name == "autoattack"]
    if points and main and all(p["epsilon"] != record.epsilon for p in points):
        points.append({"epsilon": record.epsilon, **main[0].accuracy.to_dict()})
    return points


def sweep_figures(optuna_storage: str | None, out: Path) -> list[tuple[Path, str]]:
    if not optuna_storage:
        return []
    import optuna

    figures = []
    for summary in optuna.get_all_study_summaries(optuna_storage):
        study = optuna.load_study(study_name=summary.study_name, storage=optuna_storage)
        for path in plots.optuna_figures(study, out / f"sweep_{summary.study_name}"):
            kind = "parameter importances" if "importance" in path.name else \
                "optimisation history"
            figures.append((path, f"Sweep {summary.study_name}: {kind}"))
    return figures


# -- which differences are real ---------------------------------------------------------------
Cell = McNemarResult | str | None


def mcnemar_matrix(entries: Sequence[tuple[EvaluationRecord | None, str]]
                   ) -> list[list[Cell]]:
    """The exact McNemar test of every ordered pair of ``entries`` (a row's record and the
    column whose flags rank it): cell ``[i][j]`` tests row i against row j (its difference is
    i − j) on the column both are ranked by, on the worst case where they differ; the reason
    where the two cannot be paired; None on the diagonal."""
    cells: list[list[Cell]] = []
    for i, (a, column_a) in enumerate(entries):
        row: list[Cell] = []
        for j, (b, column_b) in enumerate(entries):
            if i == j:
                row.append(None)
            elif a is None or b is None:
                row.append("no per-example data")
            else:
                try:
                    row.append(compare_reports(a, b, column_a if column_a == column_b
                                               else WORST_CASE))
                except (ValueError, KeyError) as error:
                    row.append(str(error))
        cells.append(row)
    return cells


def _matrix_cell(cell: Cell, alpha: float) -> str:
    if cell is None:
        return "<td class='diagonal'>·</td>"
    if isinstance(cell, str):
        return f"<td class='unpaired' title='{html.escape(cell)}'>n/a</td>"
    significant = cell.significant(alpha)
    title = (f"{cell.only_a} robust only under the row, {cell.only_b} only under the column, "
             f"of {cell.n} points")
    return (f"<td class='{'significant' if significant else 'not-significant'}' "
            f"data-p='{cell.p_value:.6g}' data-difference='{cell.difference:.6g}' "
            f"title='{html.escape(title)}'>{100 * cell.difference:+.1f}"
            f"{' ★' if significant else ''}<br><span class='p'>p = {cell.p_value:.2g}</span>"
            f"</td>")


def matrix_html(names: Sequence[str], cells: Sequence[Sequence[Cell]], column: str,
                alpha: float = ALPHA) -> str:
    """The McNemar matrix as an HTML table (class ``mcnemar``): row minus column in
    percentage points with the p-value, significant cells marked ★ (class ``significant``)."""
    head = "".join(f"<th class='name'>{html.escape(name)}</th>" for name in names)
    body = "".join(
        f"<tr><th class='name'>{html.escape(name)}</th>"
        + "".join(_matrix_cell(cell, alpha) for cell in row) + "</tr>"
        for name, row in zip(names, cells, strict=True))
    caption = (f"Row minus column: difference of {html.escape(column)} accuracy in percentage "
               f"points on the same test points, and the exact McNemar p-value on their paired "
               f"per-example flags; ★ significant at {alpha:g}.")
    return (f"<table class='mcnemar'><caption>{caption}</caption><thead><tr><th></th>{head}"
            f"</tr></thead><tbody>{body}</tbody></table>")


def comparisons(frame: pd.DataFrame, reports: Mapping[str, EvaluationRecord],
                names: Mapping[str, str], top: int = TOP) -> str:
    """The McNemar matrix of the best ``top`` trusted rows and the best-vs-runner-up sentence."""
    trusted = frame[~frame["flagged"]].head(top) if not frame.empty else frame
    if len(trusted) < 2:
        return "<p>Fewer than two trusted rows: nothing to compare.</p>"
    ranked_by = rank_columns(trusted)
    run_ids = [str(r) for r in trusted["run_id"]]
    cells = mcnemar_matrix([(reports.get(r), ranked_by[r]) for r in run_ids])
    used = {ranked_by[r] for r in run_ids}
    column = used.pop() if len(used) == 1 else "the rank key's (worst case where two differ)"
    parts = [f"<p>The {len(run_ids)} best trusted rows, each pair tested on the same points.</p>",
             f"<div class='scroll'>{matrix_html([names[r] for r in run_ids], cells, column)}"
             "</div>"]
    first = cells[0][1]
    if isinstance(first, McNemarResult):
        sentence = first.sentence(names[run_ids[0]], names[run_ids[1]], ALPHA)
        parts.append(f"<p class='verdict'>Best vs runner-up: {html.escape(sentence)}</p>")
    else:
        parts.append(f"<p class='verdict'>The two best rows cannot be compared: "
                     f"{html.escape(str(first))}</p>")
    return "".join(parts)


# -- per class ----------------------------------------------------------------------------------
def _interval_cell(stats: Accuracy, lowest: bool = False) -> str:
    text = interval_text(stats.accuracy, stats.ci_low, stats.ci_high)
    value, _, interval = text.partition(" ")
    span = f" <span class='ci'>{html.escape(interval)}</span>" if interval else ""
    return (f"<td class='acc{' lowest' if lowest else ''}' data-n='{stats.n}'>"
            f"{html.escape(value)}{span}</td>")


def class_html(frame: pd.DataFrame, reports: Mapping[str, EvaluationRecord],
               names: Mapping[str, str], top: int = TOP) -> str:
    """Clean and worst-case accuracy (%, with 95 % intervals) per true class for the first
    ``top`` rows of the leaderboard whose records hold their points' labels: one line per
    class, two columns per row, each row's lowest worst-case class in bold (class
    ``lowest``); one ``n`` column when the rows share their classes' sizes, else one per row.
    A "no data" line when no row has labels."""
    found = ((str(r), reports[str(r)].per_class) for r in frame["run_id"] if str(r) in reports)
    chosen = [(run_id, classes) for run_id, classes in found if classes][:top]
    if not chosen:
        return ("<p><em>Per-class accuracy: no data in this leaderboard (no row's record holds "
                "its points' labels).</em></p>")
    sizes = [{c.label: c.n for c in classes} for _, classes in chosen]
    shared = all(size == sizes[0] for size in sizes)
    labels = sorted({label for size in sizes for label in size})
    width = 2 if shared else 3
    head = ("<tr><th rowspan='2'>class</th>" + ("<th rowspan='2'>n</th>" if shared else "")
            + "".join(f"<th class='name' colspan='{width}'>{html.escape(names[r])}</th>"
                      for r, _ in chosen) + "</tr><tr>"
            + ("<th>clean</th><th>worst case</th>" if shared
               else "<th>n</th><th>clean</th><th>worst case</th>") * len(chosen) + "</tr>")
    lowest = {r: min(classes, key=lambda c: (c.worst_case_accuracy.accuracy, c.label)).label
              for r, classes in chosen}
    body = []
    for label in labels:
        cells = [f"<th>{label}</th>"] + ([f"<td class='acc'>{sizes[0][label]}</td>"]
                                         if shared else [])
        for run_id, classes in chosen:
            found = [c for c in classes if c.label == label]
            if not found:
                cells.append("<td>—</td>" * width)
                continue
            entry = found[0]
            if not shared:
                cells.append(f"<td class='acc'>{entry.n}</td>")
            cells.append(_interval_cell(entry.clean_accuracy))
            cells.append(_interval_cell(entry.worst_case_accuracy, lowest[run_id] == label))
        body.append(f"<tr data-class='{label}'>{''.join(cells)}</tr>")
    caption = (f"Accuracy in % with its 95 % interval on the test points of each true class, "
               f"for the first {len(chosen)} rows of the leaderboard with per-class data; "
               f"worst case: correct under every attack. Each row's weakest class under attack "
               f"in bold.")
    return (f"<div class='scroll'><table class='per-class'><caption>{caption}</caption>"
            f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")


# -- margins ------------------------------------------------------------------------------------
def amr_statistics(distances: Sequence[float], correct: Sequence[bool]) -> dict[str, float]:
    """AMR's average margin (the mean L2 distance bound) and minimum margin (the least signed
    margin: the bound, negated where the point is misclassified; AMR Eq. 6) of per-example
    bounds; NaN for no points."""
    if not distances:
        return {"average_margin": math.nan, "minimum_margin": math.nan}
    signed = [d if ok else -d for d, ok in zip(distances, correct, strict=True)]
    return {"average_margin": sum(distances) / len(distances), "minimum_margin": min(signed)}


def source_metrics(tracking_uri: str, source_runs: Sequence[str]) -> dict[str, dict[str, float]]:
    """The latest metrics of each training run that exists in the store, by run id."""
    client, found = MlflowClient(tracking_uri), {}
    for run_id in dict.fromkeys(source_runs):
        try:
            found[run_id] = dict(client.get_run(run_id).data.metrics)
        except Exception:  # a row whose training run is not in this store
            continue
    return found


def state_margins(tracking_uri: str, frame: pd.DataFrame, names: Mapping[str, str]
                  ) -> dict[str, dict[str, Any]]:
    """SMD rows' per-example margin histograms (:data:`STATE_MARGINS` beside the checkpoint
    their training run published), by row name; rows without one are left out."""
    client, found = MlflowClient(tracking_uri), {}
    rows = frame[frame["defense"].astype(str) == SMD] if not frame.empty else frame
    for _, row in rows.iterrows():
        source = row.get("source_run")
        if not isinstance(source, str):
            continue
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = client.download_artifacts(
                    source, f"{CHECKPOINT_ARTIFACT}/{STATE_MARGINS}", folder)
                found[names[str(row["run_id"])]] = json.loads(Path(path).read_text())
        except Exception:  # not published by this training run
            continue
    return found


def _number(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3g}"


def amr_table(tracking_uri: str, frame: pd.DataFrame, reports: Mapping[str, EvaluationRecord],
              names: Mapping[str, str]) -> str:
    """AMR rows' average and minimum margin: on the test points (from the evaluation record's
    per-example L2 bounds) and on validation images as the training run last logged them;
    a "no data" line when no AMR row has either."""
    rows = frame[frame["defense"].astype(str) == AMR] if not frame.empty else frame
    training = source_metrics(tracking_uri, [s for s in rows.get("source_run", [])
                                             if isinstance(s, str)])
    lines = []
    for _, row in rows.iterrows():
        record = reports.get(str(row["run_id"]))
        distances = list(record.margins.get("average_margin", ())) if record else []
        test = amr_statistics(distances, record.clean_correct) if distances else {}
        logged = training.get(row.get("source_run"), {})
        values = [test.get("average_margin"), test.get("minimum_margin"),
                  *(logged.get(key) for key in AMR_TRAINING)]
        if all(v is None for v in values):
            continue
        lines.append(f"<tr><td class='name'>{html.escape(names[str(row['run_id'])])}</td>"
                     + "".join(f"<td class='acc'>{_number(v)}</td>" for v in values)
                     + f"<td class='acc'>{len(distances) or '—'}</td></tr>")
    if not lines:
        return ("<p><em>AMR's average and minimum margin: no data in this leaderboard (no AMR "
                "row with margins on its test points or from training).</em></p>")
    return ("<div class='scroll'><table class='amr'><caption>AMR's margins (L2 distance "
            "bounds, AMR Theorem 3): the average over the points and the minimum signed margin "
            "(negative: a misclassified point). Test points: the evaluation's; validation: as "
            "the training run last measured them.</caption><thead><tr><th>row</th>"
            "<th>test average</th><th>test minimum</th><th>validation average</th>"
            "<th>validation minimum</th><th>test points</th></tr></thead><tbody>"
            + "".join(lines) + "</tbody></table></div>")


# -- the page -------------------------------------------------------------------------------------
def over_seeds_section(frame: pd.DataFrame) -> str:
    """The rows grouped by configuration, each accuracy's mean ± std over its seeds; empty
    unless some configuration has two runs or more."""
    groups = over_seeds(frame)
    if not repeated(groups):
        return ""
    return (f"<h2>Over seeds</h2><p>Runs of one configuration (its <code>config_group</code>: "
            f"the training config without its seed) grouped, with the mean and sample standard "
            f"deviation of each accuracy over them, beside the per-run 95 % intervals above."
            f"</p><div class='scroll'>{groups_html(groups, accuracy_columns(frame))}</div>")


def cost_section(frame: pd.DataFrame, sweeps: Sequence[dict[str, Any]]) -> str:
    """Device cost per defense (:func:`dashboards.leaderboard.defense_costs`): its rows'
    training and evaluation, its sweeps' trials where their parent runs hold them, the total
    and the best trusted worst-case accuracy per device-hour of it."""
    costs = defense_costs(frame, sweeps)
    if costs.empty:
        return ""
    head = ("<tr><th>defense</th><th>rows</th><th>rows' training</th><th>evaluation</th>"
            "<th>sweeps (all trials)</th><th>total</th><th>best worst case %/device-hour"
            "</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(str(r['defense']))}</td><td>{r['rows']}</td>"
        f"<td>{html.escape(r['train_cost'])}</td><td>{html.escape(r['evaluation_cost'])}</td>"
        f"<td>{html.escape(r['sweeps_cost'])}</td><td>{html.escape(r['total_cost'])}</td>"
        f"<td>{_number(100 * r['robust_per_device_hour'])}</td></tr>"
        for _, r in costs.iterrows())
    return ("<h2>Cost per defense</h2><p>Device-hours: GPU-hours for work that held GPUs "
            "(fractions counted as fractions), else CPU-core-hours, over every second a trial "
            "or an evaluation unit held them; the two units are never added.</p>"
            f"<div class='scroll'><table class='costs'><thead>{head}</thead><tbody>{body}"
            "</tbody></table></div>")


def _figure(path: Path | None, caption: str) -> str:
    if path is None:
        return f"<p><em>{html.escape(caption)}: no data in this leaderboard.</em></p>"
    return (f"<figure><img src='{path.name}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(tracking_uri: str, out: Path, *, experiment: str = LEADERBOARD,
           optuna_storage: str | None = None, title: str = "Robustness leaderboard",
           mlflow_ui: str | None = MLFLOW_UI, **filters: str | None) -> Path:
    """Write ``out/index.html`` (and its PNGs, ``leaderboard.md`` and ``.csv``); rows link to
    their runs in the MLflow UI served at ``mlflow_ui`` (None: no links)."""
    out.mkdir(parents=True, exist_ok=True)
    frame = load(tracking_uri, experiment, **filters)
    reports = row_reports(tracking_uri, frame) if not frame.empty else {}
    names = row_names(frame)
    links = run_links(tracking_uri, experiment, frame, mlflow_ui)
    curves = {names[r]: curve_points(rep) for r, rep in reports.items()}
    margins = {names[r]: {kind: list(values) for kind, values in rep.margins.items()}
               for r, rep in reports.items()}
    smd = plots.binned_histograms(
        state_margins(tracking_uri, frame, names), out / "smd_margins.png",
        xlabel="margin ℰ(i) (input-space distance)", ylabel="training examples",
        title="SMD per-example margins")
    (out / "leaderboard.md").write_text(to_markdown(frame))
    frame.to_csv(out / "leaderboard.csv", index=False)
    flagged = frame[frame["flagged"]] if not frame.empty else frame
    ui = (f" Each run id opens the row's run in the MLflow UI at "
          f"<code>{html.escape(mlflow_ui)}</code>." if links and mlflow_ui else "")
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(frame)} evaluated checkpoints from <code>{html.escape(tracking_uri)}"
            f"</code>, ranked by AutoAttack accuracy (%); flagged rows are listed after the "
            f"trusted ones, unranked. Rows are named by their defense and the knobs that set "
            f"them apart.{ui} Also as <a href='leaderboard.csv'>CSV</a> and "
            f"<a href='leaderboard.md'>Markdown</a>.</p>",
            f"<div class='scroll'>{to_html(frame, names=names, links=links)}</div>"
            if not frame.empty else "<p>No evaluated checkpoints yet.</p>"]
    body.append(over_seeds_section(frame))
    body.append(cost_section(frame, [s for s in sweep_costs(tracking_uri)
                                     if filters.get("sweep") in (None, s["sweep"])]))
    if not flagged.empty:
        body.append("<h2>Integrity flags</h2><ul class='flagged'>" + "".join(
            f"<li>{html.escape(names[str(row['run_id'])])}: {html.escape(row['flags'])}</li>"
            for _, row in flagged.iterrows()) + "</ul>")
    body.append("<h2>Which differences are real? (exact McNemar)</h2>")
    body.append(comparisons(frame, reports, names) if not frame.empty else "<p>No rows.</p>")
    body.append("<h2>Per class</h2>")
    body.append(class_html(frame, reports, names) if not frame.empty else "<p>No rows.</p>")
    body.append("<h2>Margins</h2>")
    body += [
        _figure(plots.margin_histograms(margins, "effective_margin",
                                        out / "effective_margin.png"),
                "Effective margin (EMR Eq. 3) of the test points"),
        _figure(plots.margin_histograms(margins, "average_margin", out / "average_margin.png"),
                "Average margin: AMR's L2 distance bound of the test points"),
        _figure(smd, "SMD's per-example margins 𝓔(i) of its training examples, its defense "
                     "state at the evaluated checkpoint's epoch"),
        amr_table(tracking_uri, frame, reports, names),
    ]
    body.append("<h2>Figures</h2>")
    body += [
        _figure(plots.pareto(frame, out / "pareto.png"), "Clean vs AutoAttack accuracy by "
                "defense; hollow markers are flagged rows, the dashed line the trusted Pareto "
                "front"),
        _figure(plots.epsilon_curves(curves, out / "epsilon_curve.png"),
                "AutoAttack accuracy vs ε"),
        *(_figure(path, caption) for path, caption in sweep_figures(optuna_storage, out)),
        _figure(plots.cost(frame, out / "cost.png", names), "Device-hours per row"),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


if __name__ == "__main__":  # `python -m dashboards.report`: the command line, this module once
    import importlib
    import sys

    sys.modules["dashboards.report"] = sys.modules[__name__]
    importlib.import_module("dashboards.cli").report()
