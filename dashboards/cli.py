"""Command lines that read results: ``report``, ``leaderboard`` and ``compare``.

Each parses its flags before importing pandas, MLflow or the renderers, so ``--help`` answers
at once, and none of them loads Ray: results are read from the MLflow store alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

LEADERBOARD = "leaderboard"  # the experiment the evaluation pool writes rows to
FORMATS = ("markdown", "csv", "json", "robustbench")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, "
                                               "else sqlite under $ROBUST_SWEEPS_HOME)")
    parser.add_argument("--experiment", default=LEADERBOARD, help="leaderboard experiment")
    return parser


def _filters(parser: argparse.ArgumentParser) -> None:
    for name in ("dataset", "threat-model", "sweep", "defense"):
        parser.add_argument(f"--{name}", help=f"only rows of this {name.replace('-', ' ')}")


def _store(args: argparse.Namespace) -> tuple[str, Path]:
    """The MLflow store (``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the home's)
    and the home."""
    from dashboards.runs import resolve_tracking_uri
    from sweeps.environment import home

    root = home()
    return resolve_tracking_uri(args.tracking_uri, root), root


def report(argv: list[str] | None = None) -> Path:
    """``robust-sweeps report``: the static HTML report (``index.html`` and its figures)."""
    parser = _parser("robust-sweeps report", "Render the leaderboard (intervals, rows linked to "
                     "the MLflow UI), the McNemar matrix of the best rows, Pareto front, ε "
                     "curves, sweep histories and margins as a static HTML report.")
    parser.add_argument("--optuna-storage", help="study storage for the sweep plots "
                        "(default: $OPTUNA_STORAGE, else $ROBUST_SWEEPS_HOME/optuna.db)")
    parser.add_argument("--out", type=Path, help="output folder (default: "
                                                 "$ROBUST_SWEEPS_HOME/report)")
    parser.add_argument("--mlflow-ui", default="http://127.0.0.1:5000",
                        help="the MLflow UI each row links to, "
                             "{ui}/#/experiments/{id}/runs/{run} (default: %(default)s, where "
                             "`mlflow ui` serves; '' for no links)")
    _filters(parser)
    args = parser.parse_args(argv)
    from dashboards.report import render
    from sweeps.environment import OPTUNA_STORAGE_ENV

    uri, root = _store(args)
    storage = args.optuna_storage or os.environ.get(OPTUNA_STORAGE_ENV)
    if storage is None and (root / "optuna.db").exists():
        storage = f"sqlite:///{root / 'optuna.db'}"
    index = render(uri, args.out or root / "report", experiment=args.experiment,
                   optuna_storage=storage, mlflow_ui=args.mlflow_ui or None,
                   dataset=args.dataset, threat_model=args.threat_model, sweep=args.sweep,
                   defense=args.defense)
    print(index)
    return index


def leaderboard(argv: list[str] | None = None) -> str:
    """``robust-sweeps leaderboard``: the ranked rows, as Markdown, CSV or JSON."""
    parser = _parser("robust-sweeps leaderboard", "Print the leaderboard ranked by AutoAttack "
                     "accuracy (the rand version for EOT rows; flagged rows last, unranked), "
                     "one column per attack, with 95% intervals.")
    _filters(parser)
    parser.add_argument("--format", choices=FORMATS, default="markdown",
                        help="robustbench: the first row in RobustBench's model-info format "
                             "(ε as the paper writes it, forward passes from EOT)")
    parser.add_argument("--group-seeds", action="store_true",
                        help="also one row per configuration (its config_group) with the "
                             "mean ± std of each accuracy over its seeds: a second Markdown "
                             "table, or these rows alone as CSV or JSON")
    args = parser.parse_args(argv)
    if args.group_seeds and args.format == "robustbench":
        parser.error("--group-seeds has no RobustBench format")
    from dashboards import leaderboard as board

    uri, _ = _store(args)
    rows = board.load(uri, args.experiment, dataset=args.dataset,
                      threat_model=args.threat_model, sweep=args.sweep, defense=args.defense)
    if rows.empty and args.format == "robustbench":
        raise SystemExit("error: no leaderboard row matches")
    if args.group_seeds:
        return _print(_over_seeds(rows, args.format))
    text = {"markdown": lambda: board.to_markdown(rows),
            "csv": lambda: rows.to_csv(index=False),
            "json": lambda: rows.to_json(orient="records"),
            "robustbench": lambda: board.robustbench_json(rows.iloc[0])}[args.format]()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return text


def _over_seeds(rows, form: str) -> str:
    """The leaderboard and its configurations over seeds (Markdown), or the latter alone."""
    from dashboards import groups
    from dashboards import leaderboard as board

    grouped = board.over_seeds(rows)
    return {"markdown": lambda: f"{board.to_markdown(rows)}\nOver seeds (mean ± std, %):\n\n"
                                f"{groups.to_markdown(grouped, board.accuracy_columns(rows))}",
            "csv": lambda: grouped.to_csv(index=False),
            "json": lambda: grouped.to_json(orient="records")}[form]()


def _print(text: str) -> str:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return text


def compare(argv: list[str] | None = None) -> dict[str, Any]:
    """``robust-sweeps compare``: the exact McNemar test between two rows or two sweeps."""
    parser = _parser("robust-sweeps compare", "Whether two leaderboard rows (run ids), or the "
                     "best trusted rows of two sweeps (--sweeps), differ significantly on the "
                     "same test points (exact McNemar test on per-example flags).")
    parser.add_argument("a", help="a leaderboard run id (a sweep name with --sweeps)")
    parser.add_argument("b", help="the other one")
    parser.add_argument("--sweeps", action="store_true", help="a and b are sweep names")
    parser.add_argument("--attack", default="worst_case",
                        help="whose per-example flags to compare: an attack's leaderboard "
                             "column (pgd100_ce, autoattack) or label, clean, or the worst case "
                             "(default)")
    args = parser.parse_args(argv)
    from dashboards import leaderboard as board

    uri, _ = _store(args)
    try:
        if args.sweeps:
            run_a, run_b, result = board.compare_sweeps(uri, args.a, args.b, args.experiment,
                                                        args.attack)
        else:
            run_a, run_b = args.a, args.b
            result = board.compare_rows(uri, run_a, run_b, args.attack)
    except (ValueError, KeyError) as error:
        raise SystemExit(f"error: {error}") from None
    print(result.sentence(args.a, args.b), file=sys.stderr)
    summary = {"a": run_a, "b": run_b, **result.to_dict()}
    print(json.dumps(summary))
    return summary
