"""The one MLflow module: sweep and trial runs, metrics, published checkpoints.

Everything the service writes to MLflow goes through here, with three guarantees:

* **Idempotent runs.** A run is found by its identity tags (sweep + Optuna trial number, or
  sweep alone for the parent) before one is created, so a resumed, retried or adopted trial
  continues its own run.
* **Idempotent metrics.** Every metric carries the timestamp it was first recorded with; MLflow
  stores an identical (key, step, timestamp, value) once, so re-sending history is harmless, and
  a trial tracker never sends an epoch its run already holds (a replayed epoch is not doubled).
* **Outages are survivable.** Nothing raises into training when the tracking server is down:
  :class:`TrialTracker` keeps what it could not send and sends it on the next ``sync``; the
  history itself lives in the trial's checkpoint, so even a lost node loses nothing.
* **Each checkpoint is evaluated once.** The evaluation pool finds published checkpoints with
  :func:`find_candidates`, takes a lease with :func:`claim` (tags on the trial run; MLflow has
  no compare-and-swap, so the last writer wins and the others back off after a settle delay),
  and writes one leaderboard run per checkpoint with :func:`record_evaluation`, which is a
  no-op once that run is marked complete.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Our own retry loop replaces MLflow's long HTTP backoff (minutes per call when a server is down).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

from mlflow.entities import Metric, Param, Run, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND = "mlflow.experimentKind"
STATUS_TAG = "evaluation_status"  # pending → claimed → done / failed (the evaluation pool)
MAX_PARAM_LENGTH = 6000
EVAL_LEASE_OWNER = "evaluation_lease_owner"
EVAL_LEASE_EXPIRES = "evaluation_lease_expires"  # unix seconds, as a string
EVAL_FAILURE = "evaluation_failure"
EVAL_RESULT = "evaluation_result_run"  # the leaderboard run written for this checkpoint
EVAL_COMPLETE = "evaluation_complete"  # set last on a leaderboard run: "true" once all is written
PENDING, CLAIMED, DONE, FAILED = "pending", "claimed", "done", "failed"
PUBLISHED = (PENDING, CLAIMED, DONE, FAILED)
BEST_METRIC_TAG = "best_val_robust_accuracy"
CHECKPOINT_ARTIFACT = "best_checkpoint"
DOWNLOAD_MARKER = ".download_complete"
MAX_FAILURE_LENGTH = 2000


def default_tracking_uri(root: str | os.PathLike = ".") -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def default_artifact_location(root: str | os.PathLike = ".") -> str:
    return (Path(root).resolve() / "mlartifacts").as_uri()


def now_ms() -> int:
    return int(time.time() * 1000)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → dotted string params (``defense_params.beta`` = ``6.0``)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


class Tracking:
    """A thin, typed face over ``MlflowClient`` for one experiment."""

    def __init__(self, tracking_uri: str, experiment: str,
                 artifact_location: str | None = None) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.experiment_name = experiment
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                # the kind tag makes the MLflow UI open on the runs table, not a GenAI overview
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifact_location,
                    tags={EXPERIMENT_KIND: "custom_model_development"})
            except Exception:  # another process created it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = found.experiment_id

    def find_run(self, identity: dict[str, str]) -> str | None:
        clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(identity.items()))
        runs = self.client.search_runs([self.experiment_id], filter_string=clauses,
                                       max_results=2, order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def get_or_create_run(self, identity: dict[str, str], *, run_name: str,
                          parent_run_id: str | None = None,
                          tags: dict[str, str] | None = None) -> str:
        """The run carrying ``identity`` tags; created (as a child of the parent) if missing."""
        run_id = self.find_run(identity)
        if run_id is None:
            all_tags = {**(tags or {}), **identity}
            if parent_run_id:
                all_tags[PARENT_TAG] = parent_run_id
            run_id = self.client.create_run(self.experiment_id, tags=all_tags,
                                            run_name=run_name).info.run_id
        return run_id

    def log(self, run_id: str, *, metrics: list[Metric] = (), params: dict[str, str] | None = None,
            tags: dict[str, str] | None = None) -> None:
        params = [Param(k, v) for k, v in (params or {}).items()]
        tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        metrics = list(metrics)
        for start in range(0, max(len(metrics), 1), 900):  # MLflow caps a batch at 1000
            self.client.log_batch(run_id, metrics=metrics[start:start + 900],
                                  params=params if start == 0 else [],
                                  tags=tags if start == 0 else [])

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike, path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path=path)

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


NOT_METRICS = {"epoch", "timestamp"}  # carried as each metric's step and timestamp


def metrics_of(record: dict[str, Any], step: int, timestamp: int) -> list[Metric]:
    return [Metric(key, float(value), timestamp, step) for key, value in record.items()
            if key not in NOT_METRICS and isinstance(value, int | float)
            and not isinstance(value, bool)]


@dataclass
class TrialTracker:
    """A trial's run in a sweep: created on first contact, fed from the trial's own history.

    ``history`` entries are per-epoch metric dicts with ``epoch`` and ``timestamp`` (ms) keys;
    ``sync`` sends whatever has not been confirmed yet and returns whether all of it went.
    The run is the sweep's trial ``trial_number`` (Optuna's number) where there is one, else
    Tune's ``trial_id``. An epoch the run already holds is never sent again: a trial replayed
    from an older checkpoint, or a lost trial taken over by a new one, keeps the values first
    recorded, one per step.
    """

    tracking_uri: str
    experiment: str
    sweep: str
    trial_id: str
    parent_run_id: str | None
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    artifact_location: str | None = None
    trial_number: int | None = None
    run_id: str | None = None
    _sent: int = 0
    _logged_epochs: set[int] | None = None
    _tracking: Tracking | None = None

    @property
    def identity(self) -> dict[str, str]:
        if self.trial_number is None:
            return {"sweep": self.sweep, "trial_id": self.trial_id}
        return {"sweep": self.sweep, "trial_number": str(self.trial_number)}

    def _connect(self) -> Tracking:
        if self._tracking is None:
            self._tracking = Tracking(self.tracking_uri, self.experiment, self.artifact_location)
        if self.run_id is None:
            name = self.trial_id if self.trial_number is None else f"trial-{self.trial_number}"
            self.run_id = self._tracking.get_or_create_run(
                self.identity, run_name=name, parent_run_id=self.parent_run_id,
                tags={**self.tags, "kind": "trial"})
            self._tracking.log(self.run_id, params=flatten(self.params),
                               tags={"trial_id": self.trial_id})
        return self._tracking

    def _epochs_in_run(self, tracking: Tracking, record: dict[str, Any]) -> set[int]:
        if self._logged_epochs is None:
            keys = [m.key for m in metrics_of(record, 0, 0)]
            self._logged_epochs = {m.step for m in tracking.client.get_metric_history(
                self.run_id, keys[0])} if keys else set()
        return self._logged_epochs

    def sync(self, history: list[dict[str, Any]], *, tags: dict[str, str] | None = None) -> bool:
        try:
            tracking = self._connect()
            pending = history[self._sent:]
            logged = self._epochs_in_run(tracking, pending[0]) if pending else set()
            new = [record for record in pending if int(record["epoch"]) not in logged]
            metrics = [m for record in new
                       for m in metrics_of(record, int(record["epoch"]), int(record["timestamp"]))]
            tracking.log(self.run_id, metrics=metrics, tags=tags)
            logged.update(int(record["epoch"]) for record in new)
            self._sent = len(history)
            return True
        except Exception as error:  # the server may be down: keep training, retry next time
            log.warning("tracking unavailable (%s); %d records kept for later",
                        error.__class__.__name__, len(history) - self._sent)
            return False

    def publish(self, history: list[dict[str, Any]], checkpoint_dir: str | os.PathLike, *,
                tags: dict[str, str], timeout_s: float = 600.0, poll_s: float = 5.0) -> None:
        """Send all history, the best checkpoint and ``tags``, retrying up to ``timeout_s``.

        A run published before (a finished trial replayed after a resume) is left as it is: its
        checkpoint may already be under evaluation."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if not self.sync(history):
                    raise ConnectionError("tracking server unavailable")
                tracking = self._connect()
                run = tracking.client.get_run(self.run_id)
                if run.info.status == "FINISHED" and STATUS_TAG in run.data.tags:
                    return
                tracking.log_artifacts(self.run_id, checkpoint_dir, "best_checkpoint")
                tracking.log(self.run_id, tags=tags)
                tracking.set_terminated(self.run_id)
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not publish to {self.tracking_uri}: {error}"
                                       ) from error
                time.sleep(poll_s)


# ----------------------------------------------------------------------------- evaluation pool


@dataclass
class Candidate:
    """A published trial checkpoint awaiting evaluation."""

    run_id: str
    experiment_id: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    best_metric: float | None


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow filter string matching every ``tags`` entry exactly."""
    for value in tags.values():
        if "'" in value:
            raise ValueError(f"tag value {value!r} contains a single quote")
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items()))


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    """Every run matching ``filter_string``, all pages."""
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000,
                                  page_token=token)
        runs, token = runs + list(page), page.token
        if not token:
            return runs
    return []


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


def download_checkpoint(tracking_uri: str, run_id: str, dest_dir: str | os.PathLike) -> Path:
    """The run's published checkpoint as ``dest_dir/<run_id>``, downloaded once.

    The copy goes to a temporary sibling, is marked complete, then renamed into place, so the
    final directory is either absent or whole.
    """
    target = Path(dest_dir) / run_id
    if (target / DOWNLOAD_MARKER).is_file():
        return target
    client = MlflowClient(tracking_uri)
    if not client.list_artifacts(run_id, CHECKPOINT_ARTIFACT):
        raise FileNotFoundError(f"run {run_id} has no {CHECKPOINT_ARTIFACT!r} artifact: "
                                "its trial never published a checkpoint")
    staging = target.with_name(f".{run_id}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)
    try:
        local = Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(staging)))
        (local / DOWNLOAD_MARKER).touch()
        if target.exists() and not (target / DOWNLOAD_MARKER).is_file():
            shutil.rmtree(target)  # a partial copy left by something other than this function
        try:
            os.replace(local, target)
        except OSError:
            if not (target / DOWNLOAD_MARKER).is_file():  # not a concurrent complete copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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


def training_seconds(tracking_uri: str, run_id: str,
                     metrics: tuple[str, ...] = ("train_seconds", "eval_seconds")) -> float:
    """Seconds a trial spent training and validating: the sum of its per-epoch timings."""
    client = MlflowClient(tracking_uri)
    return sum(m.value for key in metrics for m in client.get_metric_history(run_id, key))
