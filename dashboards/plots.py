"""The report's figures, each a pure function of leaderboard data that writes one PNG.

matplotlib runs headless (Agg); every function returns the path it wrote, or None when there is
nothing to draw (the report then says so instead of showing an empty frame).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from dashboards.leaderboard import rank_key  # noqa: E402

COLOURS = plt.get_cmap("tab10")


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _colour_of(names: Sequence[str]) -> dict[str, Any]:
    return {name: COLOURS(i % 10) for i, name in enumerate(sorted(set(names)))}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (clean, robust), sorted by clean accuracy."""
    front = [p for p in points
             if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def pareto(frame: pd.DataFrame, path: Path) -> Path | None:
    """Clean vs AutoAttack (else worst-case) accuracy, coloured by defense; flagged hollow."""
    if frame.empty:
        return None
    robust = rank_key(frame)
    colours = _colour_of(frame["defense"].astype(str))
    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    for defense, colour in colours.items():
        mine = frame["defense"].astype(str) == defense
        for flagged, marker in ((False, "o"), (True, "o")):
            chosen = mine & (frame["flagged"] == flagged)
            if chosen.any():
                axes.scatter(100 * frame.loc[chosen, "clean"], 100 * robust[chosen], s=46,
                             facecolors="none" if flagged else colour, edgecolors=colour,
                             marker=marker, label=defense + (" (flagged)" if flagged else ""))
    trusted = [(c, r) for c, r, f in zip(frame["clean"], robust, frame["flagged"], strict=True)
               if not f and not math.isnan(r)]
    front = pareto_front(trusted)
    if len(front) > 1:
        axes.plot([100 * c for c, _ in front], [100 * r for _, r in front], "k--", lw=1,
                  label="Pareto front")
    axes.set_xlabel("clean accuracy (%)")
    axes.set_ylabel("AutoAttack accuracy (%)")
    axes.set_title("Clean vs robust accuracy")
    axes.legend(fontsize=8)
    return _save(figure, path)


def epsilon_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: Path
                   ) -> Path | None:
    """Robust accuracy against ε, one line per leaderboard row."""
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, points in curves.items():
        ordered = sorted(points, key=lambda p: p["epsilon"])
        axes.plot([p["epsilon"] for p in ordered], [100 * p["accuracy"] for p in ordered],
                  marker="o", label=name)
    axes.set_xlabel("ε")
    axes.set_ylabel("AutoAttack accuracy (%)")
    axes.set_title("Robust accuracy against the radius")
    axes.legend(fontsize=8)
    return _save(figure, path)


def margin_histograms(margins: Mapping[str, Mapping[str, Sequence[float]]], kind: str,
                      path: Path, bins: int = 30) -> Path | None:
    """Histogram of one margin kind (``effective_margin`` / ``average_margin``) per row."""
    series = {name: [v for v in values.get(kind, []) if math.isfinite(v)]
              for name, values in margins.items()}
    series = {name: values for name, values in series.items() if values}
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, values in series.items():
        axes.hist(values, bins=bins, histtype="step", lw=1.5, label=name)
    axes.set_xlabel(kind.replace("_", " "))
    axes.set_ylabel("test points")
    axes.set_title(f"{kind.replace('_', ' ').capitalize()} distribution")
    axes.legend(fontsize=8)
    return _save(figure, path)


def binned_histograms(histograms: Mapping[str, Mapping[str, Sequence[float]]], path: Path, *,
                      xlabel: str, ylabel: str, title: str) -> Path | None:
    """Histograms already binned (``counts`` and ``edges``, one more edge than counts), one
    outline per name: SMD's per-example margins, as its training run publishes them."""
    drawn = {name: h for name, h in histograms.items()
             if h.get("counts") and len(h.get("edges", ())) == len(h["counts"]) + 1}
    if not drawn:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, histogram in drawn.items():
        axes.stairs(histogram["counts"], histogram["edges"], lw=1.5, label=name)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    return _save(figure, path)


def cost(frame: pd.DataFrame, path: Path, names: Mapping[str, str] | None = None
         ) -> Path | None:
    """Device-hours per row (training + evaluation, ``dashboards.leaderboard.row_cost``), rows
    labelled by ``names`` (by run id); the axis names the unit when all rows share one."""
    if frame.empty:
        return None
    names = names or {}
    figure, axes = plt.subplots(figsize=(6.4, 1.4 + 0.35 * len(frame)))
    labels = [names.get(str(r), f"{d} {str(r)[:8]}")
              for d, r in zip(frame["defense"], frame["run_id"], strict=True)]
    train = frame["train_device_hours"].astype(float).fillna(0.0)
    evaluation = frame["evaluation_device_hours"].astype(float).fillna(0.0)
    axes.barh(labels, train, label="training")
    axes.barh(labels, evaluation, left=train, label="evaluation")
    units = set(frame["train_device_unit"]) | set(frame["evaluation_device_unit"])
    units.discard("")
    axes.set_xlabel(f"device-hours ({units.pop()})" if len(units) == 1
                    else "device-hours (units differ by row: see the table)")
    axes.set_title("Cost per row")
    axes.legend(fontsize=8)
    return _save(figure, path)


def optuna_figures(study, path_prefix: Path) -> list[Path]:
    """Optimisation history and parameter importances of one Optuna study."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return []
    target = {}
    if len(study.directions) > 1:  # multi-objective: show the robust objective
        target = {"target": lambda t: t.values[-1], "target_name": "val robust accuracy"}
    written = []
    axes = optuna_plots.plot_optimization_history(study, **target)
    written.append(_save(axes.figure, path_prefix.with_name(path_prefix.name + "_history.png")))
    varied = {k for t in complete for k in t.params}
    if len(complete) >= 2 and varied:
        try:
            axes = optuna_plots.plot_param_importances(study, **target)
            written.append(_save(axes.figure,
                                 path_prefix.with_name(path_prefix.name + "_importance.png")))
        except (RuntimeError, ValueError, ZeroDivisionError):
            pass  # too few distinct trials for an importance estimate
    return written
