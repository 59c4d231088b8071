"""Runs grouped by configuration: the same settings trained (or evaluated) with other seeds.

A configuration is named by :func:`config_group`, a short hash of its flattened params with the
seeds left out. Every trial run carries it as the ``config_group`` tag (and the leaderboard
rows evaluated from it carry it on), so runs of one configuration with different seeds — the
sweep's own trial and its seed reruns — form one group; a run without the tag is named from its
params alike. :func:`seed_groups` turns rows (one per run) into one row per configuration with
the mean and sample standard deviation of each number over its runs, next to which the per-run
95 % intervals of the leaderboard say how much a single run's evaluation varies.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from dashboards.runs import flatten

GROUP = "config_group"  # the MLflow tag, and the rows' column
SEED_FIELDS = ("seed", "train_seed", "eval_seed")  # what differs between runs of one group
SEED_COLUMNS = ("train_seed", "seed")  # where a row says its training seed, first found wins
UNKNOWN_SEEDS = ("", "None", "nan", "unknown")  # a seed param's text when none was recorded


def config_group(params: Mapping[str, Any]) -> str:
    """The configuration's name: the first 12 hex digits of the SHA-256 of its params
    flattened as runs log them (dotted keys, values as text: ``dashboards.runs.flatten``),
    :data:`SEED_FIELDS` left out. A trial config and the params of its MLflow run give the
    same name."""
    flat = {key: value for key, value in flatten(dict(params)).items()
            if key not in SEED_FIELDS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def run_group(tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """A run's configuration: its ``config_group`` tag, else :func:`config_group` of its
    params."""
    return tags.get(GROUP) or config_group(params)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _seeds(values: Sequence[Any]) -> tuple[Any, ...]:
    """The distinct seeds, as integers where they are, in increasing order."""
    def number(value: Any) -> Any:
        try:
            return int(value)
        except (TypeError, ValueError):
            return str(value)

    distinct = {number(v) for v in values if not _missing(v) and str(v) not in UNKNOWN_SEEDS}
    return tuple(sorted(distinct, key=lambda v: (isinstance(v, str), v)))


def seed_groups(rows: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per configuration, in the order of each one's first row: ``config_group``
    (missing for a row without one, which is a group of its own), ``n`` (its runs), ``seeds``
    (the distinct training seeds, from ``train_seed`` or else ``seed``), ``run_ids`` (in the
    rows' order),
    ``flagged`` (how many of them carry integrity flags) and, for each of ``columns``, the mean
    (``<column>_mean``) and sample standard deviation (``<column>_std``, ddof 1; NaN for a
    single run) over the runs where it was measured."""
    columns = list(columns)
    out = [GROUP, "n", "seeds", "run_ids", "flagged",
           *(f"{c}{suffix}" for c in columns for suffix in ("_mean", "_std"))]
    if rows.empty:
        return pd.DataFrame(columns=out)
    named = rows[GROUP] if GROUP in rows.columns else pd.Series(None, index=rows.index)
    keys = [f"run:{run_id}" if _missing(group) else group
            for group, run_id in zip(named, rows["run_id"], strict=True)]
    seed_column = next((c for c in SEED_COLUMNS if c in rows.columns), None)
    groups = []
    for key, members in rows.groupby(pd.Series(keys, index=rows.index), sort=False):
        group: dict[str, Any] = {
            GROUP: None if key.startswith("run:") else key, "n": len(members),
            "seeds": _seeds(list(members[seed_column])) if seed_column else (),
            "run_ids": tuple(members["run_id"].astype(str)),
            "flagged": int(members["flagged"].astype(bool).sum())
            if "flagged" in members.columns else 0}
        for column in columns:
            values = pd.to_numeric(members[column], errors="coerce") \
                if column in members.columns else pd.Series(dtype=float)
            group[f"{column}_mean"] = float(values.mean()) if values.notna().any() else math.nan
            group[f"{column}_std"] = float(values.std(ddof=1)) if values.notna().sum() > 1 \
                else math.nan
        groups.append(group)
    return pd.DataFrame(groups, columns=out)


def repeated(groups: pd.DataFrame) -> bool:
    """Whether some configuration ran more than once."""
    return bool(len(groups)) and bool((groups["n"] >= 2).any())


def spread_text(mean: Any, std: Any) -> str:
    """A mean and its standard deviation over seeds in %: ``51.30 ± 1.20``; the mean alone for
    one run, ``—`` when not measured."""
    if _missing(mean):
        return "—"
    return f"{100 * mean:.2f}" if _missing(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _seeds_text(seeds: Sequence[Any]) -> str:
    return ", ".join(map(str, seeds)) or "—"


def _group_text(value: Any) -> str:
    return "—" if _missing(value) else str(value)


def _shown(groups: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if groups[f"{c}_mean"].notna().any()]


def to_markdown(groups: pd.DataFrame, columns: Sequence[str]) -> str:
    """The groups as a Markdown table: name (where the groups have one), config group, runs,
    seeds, each column's mean ± std in %, and the runs' ids (8 characters each)."""
    shown = _shown(groups, columns)
    named = "name" in groups.columns
    head = [*(["name"] if named else []), GROUP, "n", "seeds", *shown, "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for _, group in groups.iterrows():
        cells = [*([str(group["name"])] if named else []), _group_text(group[GROUP]),
                 str(group["n"]), _seeds_text(group["seeds"]),
                 *(spread_text(group[f"{c}_mean"], group[f"{c}_std"]) for c in shown),
                 ", ".join(r[:8] for r in group["run_ids"])]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(groups: pd.DataFrame, columns: Sequence[str]) -> str:
    """The groups as an HTML table (class ``over-seeds``), one row per configuration
    (``data-config-group``), each column's cell ``mean ± std`` in %."""
    shown = _shown(groups, columns)
    named = "name" in groups.columns
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>"
                   for c in [*(["configuration"] if named else []), GROUP, "runs", "seeds",
                             *shown, "run ids"])
    body = []
    for _, group in groups.iterrows():
        cells = [*([f"<td class='name'>{html.escape(str(group['name']))}</td>"] if named
                   else []),
                 f"<td><code>{html.escape(_group_text(group[GROUP]))}</code></td>",
                 f"<td class='n'>{group['n']}</td>",
                 f"<td class='seeds'>{html.escape(_seeds_text(group['seeds']))}</td>",
                 *(f"<td class='acc' data-column='{html.escape(c)}'>"
                   f"{html.escape(spread_text(group[f'{c}_mean'], group[f'{c}_std']))}</td>"
                   for c in shown),
                 f"<td class='runs'>{html.escape(', '.join(r[:8] for r in group['run_ids']))}"
                 f"</td>"]
        key = "" if _missing(group[GROUP]) else str(group[GROUP])
        body.append(f"<tr data-config-group='{html.escape(key)}'>"
                    f"{''.join(cells)}</tr>")
    return (f"<table class='over-seeds'><caption>Mean ± sample standard deviation over the runs "
            f"of each configuration (accuracy in %); one run gives its value alone.</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
