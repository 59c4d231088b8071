"""What the host tests ask the shared services, run on a host as ``python -m`` one-liners
(``Cluster.ask``): each function takes JSON-able arguments and returns JSON-able data."""

from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient

from dashboards.queue import EVAL_RESULT, STATUS_TAG


def _runs(client: MlflowClient, experiment: str, filter_string: str = "") -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], filter_string, max_results=5000)


def published(uri: str) -> dict[str, dict[str, str]]:
    """Every published trial run: its evaluation status and result run."""
    client = MlflowClient(uri)
    return {r.info.run_id: {"status": r.data.tags.get(STATUS_TAG),
                            "result": r.data.tags.get(EVAL_RESULT)}
            for r in _runs(client, "sweeps", "tags.kind = 'trial'")
            if STATUS_TAG in r.data.tags}


def leaderboard(uri: str, name: str) -> list[dict[str, Any]]:
    """The leaderboard's rows: run id, source run and metrics (timings left out)."""
    client = MlflowClient(uri)
    return [{"run_id": r.info.run_id, "source": r.data.tags.get("source_run"),
             "metrics": {k: v for k, v in r.data.metrics.items() if not k.endswith("seconds")}}
            for r in _runs(client, name)]


def set_pending(uri: str, run_ids: list[str]) -> int:
    """Queue the runs for evaluation again (what a user does to re-evaluate them)."""
    client = MlflowClient(uri)
    for run_id in run_ids:
        client.set_tag(run_id, STATUS_TAG, "pending")
    return len(run_ids)
