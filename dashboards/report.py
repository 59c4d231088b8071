"""``python -m dashboards.report``: the leaderboard as one static HTML page with PNG plots.

The page opens from disk with no server: the ranked leaderboard (flagged rows set apart), the
Pareto front of clean vs AutoAttack accuracy by defense, AutoAttack accuracy against ε, each
sweep's Optuna optimisation history and parameter importances, effective- and average-margin
histograms, the cost of every row in device-hours, and an exact McNemar test between the two
best trusted rows. Per-example data comes from each row's evaluation record
(``evaluation/report.json``, :mod:`attacks.schema`).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from attacks.schema import EvaluationRecord
from dashboards import plots
from dashboards.compare import compare_reports
from dashboards.leaderboard import LEADERBOARD, load, row_report, to_html, to_markdown

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table.leaderboard{border-collapse:collapse;font-size:13px}
table.leaderboard td,table.leaderboard th{padding:3px 8px;border-bottom:1px solid #ddd}
figure{display:inline-block;margin:1em}figcaption{font-size:13px;color:#555}
.flagged{color:#a33}"""


def row_reports(tracking_uri: str, frame: pd.DataFrame) -> dict[str, EvaluationRecord]:
    """Each row's evaluation record (per-example flags, curve, margins)."""
    reports = {}
    for run_id in frame["run_id"]:
        try:
            reports[run_id] = row_report(tracking_uri, run_id)
        except Exception:  # a row without the artifact simply has no curves
            continue
    return reports


def curve_points(record: EvaluationRecord) -> list[dict[str, float]]:
    """The ε curve of a record, with the AutoAttack accuracy at the evaluation's own ε."""
    points = [point.to_dict() for point in record.epsilon_curve]
    main = [a for a in record.attacks if a.name == "autoattack"]
    if points and main and all(p["epsilon"] != record.epsilon for p in points):
        points.append({"epsilon": record.epsilon, **main[0].accuracy.to_dict()})
    return points


def label(row: pd.Series) -> str:
    return f"{row['defense']} {str(row['run_id'])[:6]}"


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


def comparison(frame: pd.DataFrame, reports: dict[str, EvaluationRecord]) -> str:
    trusted = frame[~frame["flagged"]]
    if len(trusted) < 2:
        return "<p>Fewer than two trusted rows: nothing to compare.</p>"
    first, second = trusted.iloc[0], trusted.iloc[1]
    a, b = reports.get(first["run_id"]), reports.get(second["run_id"])
    if a is None or b is None:
        return "<p>The two best rows have no per-example data to compare.</p>"
    try:
        result = compare_reports(a, b)
    except ValueError as error:
        return f"<p>The two best rows are not paired: {html.escape(str(error))}</p>"
    return f"<p>{html.escape(result.sentence(label(first), label(second)))}</p>"


def render(tracking_uri: str, out: Path, *, experiment: str = LEADERBOARD,
           optuna_storage: str | None = None, title: str = "Robustness leaderboard",
           **filters: str | None) -> Path:
    """Write ``out/index.html`` (and its PNGs, ``leaderboard.md`` and ``.csv``)."""
    out.mkdir(parents=True, exist_ok=True)
    frame = load(tracking_uri, experiment, **filters)
    reports = row_reports(tracking_uri, frame) if not frame.empty else {}
    names = {run_id: label(row) for run_id, row in frame.set_index("run_id", drop=False)
             .iterrows()} if not frame.empty else {}
    curves = {names[r]: curve_points(rep) for r, rep in reports.items()}
    margins = {names[r]: {kind: list(values) for kind, values in rep.margins.items()}
               for r, rep in reports.items()}
    figures = [
        (plots.pareto(frame, out / "pareto.png"), "Clean vs AutoAttack accuracy by defense; "
         "hollow markers are flagged rows, the dashed line the trusted Pareto front"),
        (plots.epsilon_curves(curves, out / "epsilon_curve.png"), "AutoAttack accuracy vs ε"),
        *sweep_figures(optuna_storage, out),
        (plots.margin_histograms(margins, "effective_margin", out / "effective_margin.png"),
         "Effective margin (EMR Eq. 3) of the test points"),
        (plots.margin_histograms(margins, "average_margin", out / "average_margin.png"),
         "Average margin: AMR's L2 distance bound of the test points"),
        (plots.cost(frame, out / "cost.png"), "Device-hours per row"),
    ]
    (out / "leaderboard.md").write_text(to_markdown(frame))
    frame.to_csv(out / "leaderboard.csv", index=False)
    flagged = frame[frame["flagged"]] if not frame.empty else frame
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(frame)} evaluated checkpoints from <code>{html.escape(tracking_uri)}"
            f"</code>, ranked by AutoAttack accuracy (%); flagged rows are listed after the "
            f"trusted ones, unranked. Also as <a href='leaderboard.csv'>CSV</a> and "
            f"<a href='leaderboard.md'>Markdown</a>.</p>",
            to_html(frame) if not frame.empty else "<p>No evaluated checkpoints yet.</p>"]
    if not flagged.empty:
        body.append("<h2>Integrity flags</h2><ul class='flagged'>" + "".join(
            f"<li>{html.escape(label(row))}: {html.escape(row['flags'])}</li>"
            for _, row in flagged.iterrows()) + "</ul>")
    body.append("<h2>Is the best row really better than the runner-up?</h2>")
    body.append(comparison(frame, reports) if not frame.empty else "<p>No rows.</p>")
    body.append("<h2>Figures</h2>")
    for path, caption in figures:
        if path is None:
            body.append(f"<p><em>{html.escape(caption)}: no data in this leaderboard.</em></p>")
        else:
            body.append(f"<figure><img src='{path.name}' alt='{html.escape(caption)}'>"
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


if __name__ == "__main__":  # `python -m dashboards.report`: the command line, this module once
    import importlib
    import sys

    sys.modules["dashboards.report"] = sys.modules[__name__]
    importlib.import_module("dashboards.cli").report()
