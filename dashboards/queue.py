"""The evaluation queue: trial runs that published a checkpoint, claimed by evaluation pools.

A published trial run carries ``evaluation_status`` = pending → claimed → done / failed. The
evaluation pool finds published checkpoints with :func:`find_candidates`, takes a lease with
:func:`claim` (tags on the trial run; MLflow has no compare-and-swap, so the last writer wins
and the others back off after a settle delay), renews it while it works, and writes one
leaderboard run per checkpoint with :func:`record_evaluation`, which is a no-op once that run
is marked complete.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking import MlflowClient

from dashboards.runs import Tracking, search_all, tag_filter

STATUS_TAG = "evaluation_status"  # pending → claimed → done / failed
EVAL_LEASE_OWNER = "evaluation_lease_owner"
EVAL_LEASE_EXPIRES = "evaluation_lease_expires"  # unix seconds, as a string
EVAL_FAILURE = "evaluation_failure"
EVAL_RESULT = "evaluation_result_run"  # the leaderboard run written for this checkpoint
EVAL_COMPLETE = "evaluation_complete"  # set last on a leaderboard run: "true" once all is written
PENDING, CLAIMED, DONE, FAILED = "pending", "claimed", "done", "failed"
PUBLISHED = (PENDING, CLAIMED, DONE, FAILED)
BEST_METRIC_TAG = "best_val_robust_accuracy"
MAX_FAILURE_LENGTH = 2000


def submission_tags(best: dict[str, Any], objective: str) -> dict[str, str]:
    """The tags that put a trial's published best checkpoint (``best``: the metrics of its best
    epoch, ranked by ``objective``) in the queue."""
    return {STATUS_TAG: PENDING, "best_epoch": str(best["epoch"]),
            f"best_{objective}": str(best[objective])}


@dataclass
class Candidate:
    """A published trial checkpoint awaiting evaluation."""

    run_id: str
    experiment_id: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    best_metric: float | None


def _best_metric(tags: dict[str, str]) -> float | None:
    try:
        value = float(tags[BEST_METRIC_TAG])
    except (KeyError, ValueError):
        return None
    return None if math.isnan(value) else value


def _lease_expired(tags: dict[str, str], now: float) -> bool:
    try:
        return float(tags[EVAL_LEASE_EXPIRES]) <= now
    except (KeyError, ValueError):  # a claim cut short before its expiry was written
        return True


def awaiting_evaluation(tags: dict[str, str], owner: str | None, now: float) -> bool:
    """Pending; or claimed with an expired lease; or claimed by ``owner`` itself."""
    status = tags.get(STATUS_TAG)
    if status == PENDING:
        return True
    return status == CLAIMED and (_lease_expired(tags, now) or (
        owner is not None and tags.get(EVAL_LEASE_OWNER) == owner))


def _rank(run: Run) -> tuple:
    best = _best_metric(run.data.tags)
    return (best is None, -(best or 0.0), run.info.start_time, run.info.run_id)


def find_candidates(tracking_uri: str, *, experiments: list[str] | None = None,
                    sweep: str | None = None, top_k: int | None = None,
                    owner: str | None = None, now: float | None = None) -> list[Candidate]:
    """Checkpoints awaiting evaluation, best validation robust accuracy first.

    ``experiments`` are names (None: all; missing ones hold nothing). With ``top_k`` the
    published trials (of ``sweep``, if given) are ranked first and only the best ``top_k`` are
    considered, so finished or claimed finalists are not replaced by weaker runs.
    """
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    client = MlflowClient(tracking_uri)
    now = time.time() if now is None else now
    if experiments is None:
        ids = [e.experiment_id for e in client.search_experiments(max_results=50000)]
    else:
        found = [client.get_experiment_by_name(name) for name in experiments]
        ids = [e.experiment_id for e in found if e is not None]
    scope = {"sweep": sweep, "kind": "trial"} if sweep is not None else {}
    statuses = PUBLISHED if top_k is not None else (PENDING, CLAIMED)
    runs = sorted((run for status in statuses
                   for run in search_all(client, ids, tag_filter({**scope, STATUS_TAG: status}))),
                  key=_rank)
    if top_k is not None:
        runs = runs[:top_k]
    return [Candidate(run.info.run_id, run.info.experiment_id, run.info.run_name or "",
                      dict(run.data.tags), dict(run.data.params), _best_metric(run.data.tags))
            for run in runs if awaiting_evaluation(run.data.tags, owner, now)]


def claim(tracking_uri: str, run_id: str, *, owner: str, lease_seconds: float,
          settle_seconds: float = 0.5, now: float | None = None) -> bool:
    """Take the evaluation lease of ``run_id``; True only if it is still ours after settling."""
    client = MlflowClient(tracking_uri)
    now = time.time() if now is None else now
    if not awaiting_evaluation(client.get_run(run_id).data.tags, owner, now):
        return False
    client.log_batch(run_id, tags=[RunTag(STATUS_TAG, CLAIMED), RunTag(EVAL_LEASE_OWNER, owner),
                                   RunTag(EVAL_LEASE_EXPIRES, f"{now + lease_seconds:.3f}")])
    time.sleep(settle_seconds)  # a rival that read "pending" just before us writes in this window
    tags = client.get_run(run_id).data.tags
    return tags.get(STATUS_TAG) == CLAIMED and tags.get(EVAL_LEASE_OWNER) == owner


def renew(tracking_uri: str, run_id: str, *, owner: str, lease_seconds: float,
          now: float | None = None) -> bool:
    """Extend our lease; False if another owner took the run (stop evaluating it then)."""
    client = MlflowClient(tracking_uri)
    tags = client.get_run(run_id).data.tags
    if tags.get(STATUS_TAG) != CLAIMED or tags.get(EVAL_LEASE_OWNER) != owner:
        return False
    now = time.time() if now is None else now
    client.set_tag(run_id, EVAL_LEASE_EXPIRES, f"{now + lease_seconds:.3f}")
    return True


def finish(tracking_uri: str, run_id: str, *, owner: str, status: str, reason: str | None = None,
           result_run: str | None = None, now: float | None = None) -> bool:
    """Mark the run ``done`` or ``failed`` and drop the lease expiry.

    Refused (False) while another owner holds a valid lease, and a ``done`` run is never
    turned into ``failed``. Failed runs stay failed until someone sets them back to pending.
    """
    if status not in (DONE, FAILED):
        raise ValueError(f"status must be {DONE!r} or {FAILED!r}, got {status!r}")
    client = MlflowClient(tracking_uri)
    tags = client.get_run(run_id).data.tags
    now = time.time() if now is None else now
    held_by_other = (tags.get(STATUS_TAG) == CLAIMED and not _lease_expired(tags, now)
                     and tags.get(EVAL_LEASE_OWNER) not in (None, owner))
    if held_by_other or (tags.get(STATUS_TAG) == DONE and status == FAILED):
        return False
    updates = {STATUS_TAG: status, EVAL_LEASE_OWNER: owner}
    if reason is not None:
        updates[EVAL_FAILURE] = reason[:MAX_FAILURE_LENGTH]
    if result_run is not None:
        updates[EVAL_RESULT] = result_run
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in updates.items()])
    if EVAL_LEASE_EXPIRES in tags:
        client.delete_tag(run_id, EVAL_LEASE_EXPIRES)
    return True


def completed_evaluation(tracking_uri: str, experiment: str,
                         identity: dict[str, str]) -> str | None:
    """The complete leaderboard run for ``identity`` in ``experiment``, if there is one."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = tag_filter({**identity, "kind": "evaluation", EVAL_COMPLETE: "true"})
    runs = sorted(search_all(client, [found.experiment_id], query),
                  key=lambda run: (run.info.start_time, run.info.run_id))
    return runs[0].info.run_id if runs else None


def record_evaluation(tracking_uri: str, experiment: str, *, identity: dict[str, str],
                      run_name: str, params: dict[str, str], metrics: dict[str, float],
                      tags: dict[str, str], artifacts_dir: str | os.PathLike | None,
                      artifact_location: str | None = None) -> tuple[str, bool]:
    """Write the leaderboard run for ``identity`` once; ``(run_id, written)``.

    An interrupted write resumes in the same run (found by its identity tags); a run already
    marked complete is left untouched. Metrics sit at step 0 with the run's start time, so a
    resumed write stores nothing twice.
    """
    tracking = Tracking(tracking_uri, experiment, artifact_location)
    identity = {**identity, "kind": "evaluation"}
    run_id = tracking.get_or_create_run(identity, run_name=run_name, tags=tags)
    run = tracking.client.get_run(run_id)
    if run.data.tags.get(EVAL_COMPLETE) == "true":
        return run_id, False
    timestamp = run.info.start_time
    tracking.log(run_id, params=params, tags={**tags, **identity},
                 metrics=[Metric(k, float(v), timestamp, 0) for k, v in metrics.items()])
    if artifacts_dir is not None:
        tracking.log_artifacts(run_id, artifacts_dir, "evaluation")
    tracking.client.set_tag(run_id, EVAL_COMPLETE, "true")
    tracking.set_terminated(run_id)
    return run_id, True
