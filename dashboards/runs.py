"""MLflow runs: the one place the service writes runs, metrics and params.

* **Idempotent runs.** A run is found by its identity tags (sweep + Optuna trial number, or
  sweep alone for the parent) before one is created, so a resumed, retried or adopted trial
  continues its own run.
* **Idempotent metrics.** Every metric carries the timestamp it was first recorded with; MLflow
  stores an identical (key, step, timestamp, value) once, so re-sending history is harmless, and
  a trial tracker never sends an epoch its run already holds (a replayed epoch is not doubled).
* **Outages are survivable.** Nothing raises into training when the tracking server is down:
  :class:`TrialTracker` keeps what it could not send and sends it on the next ``sync``; the
  history itself lives in the trial's checkpoint, so even a lost node loses nothing.

Published checkpoints are ``dashboards.artifacts``; the evaluation queue is ``dashboards.queue``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Our own retry loop replaces MLflow's long HTTP backoff (minutes per call when a server is down).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

from mlflow.entities import Metric, Param, Run, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from dashboards.artifacts import CHECKPOINT_ARTIFACT  # noqa: E402
from dashboards.cost import Cost, held, total  # noqa: E402

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
HELD_SECONDS = "held_seconds"  # a trial's wall seconds over all its attempts
DEVICE_KIND = "device_kind"  # gpu, cpu (or mixed, for a sum): what a run's device-hours count
EXPERIMENT_KIND = "mlflow.experimentKind"
MAX_PARAM_LENGTH = 6000


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable
TRACKING_SERVERS = ("http://", "https://", "databricks")  # URIs of a server with its own store


def embedded_tracking_uri(root: str | os.PathLike = ".") -> str:
    """The embedded store: ``mlflow.db`` (sqlite) under ``root``."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def default_tracking_uri(root: str | os.PathLike = ".") -> str:
    """The tracking URI when no flag names one: ``$MLFLOW_TRACKING_URI``, as MLflow documents
    it, else the embedded store under ``root``. (``$MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``
    and MLflow's other variables are read by MLflow itself, in every process.)"""
    return os.environ.get(TRACKING_URI_ENV) or embedded_tracking_uri(root)


def resolve_tracking_uri(flag: str | None, root: str | os.PathLike = ".") -> str:
    """``--tracking-uri`` when given, else :func:`default_tracking_uri`."""
    return flag or default_tracking_uri(root)


def default_artifact_location(root: str | os.PathLike = ".") -> str:
    return (Path(root).resolve() / "mlartifacts").as_uri()


def artifact_location_for(tracking_uri: str, root: str | os.PathLike = ".") -> str | None:
    """Where new experiments keep artifacts: a tracking server's own store (None), else
    ``mlartifacts`` under ``root`` (a file store would otherwise use ``./mlruns``)."""
    return None if tracking_uri.startswith(TRACKING_SERVERS) else default_artifact_location(root)


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

        A run published before (FINISHED: only publishing finishes a trial run; a finished trial
        replayed after a resume) is left as it is: its checkpoint may be under evaluation."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if not self.sync(history):
                    raise ConnectionError("tracking server unavailable")
                tracking = self._connect()
                run = tracking.client.get_run(self.run_id)
                if run.info.status == "FINISHED":
                    return
                tracking.log_artifacts(self.run_id, checkpoint_dir, CHECKPOINT_ARTIFACT)
                tracking.log(self.run_id, tags=tags)
                tracking.set_terminated(self.run_id)
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not publish to {self.tracking_uri}: {error}"
                                       ) from error
                time.sleep(poll_s)


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


def training_seconds(tracking_uri: str, run_id: str,
                     metrics: tuple[str, ...] = ("train_seconds", "val_eval_seconds")) -> float:
    """Seconds a trial spent training and validating: the sum of its per-epoch timings."""
    client = MlflowClient(tracking_uri)
    return sum(m.value for key in metrics for m in client.get_metric_history(run_id, key))


def training_cost(tracking_uri: str, run_id: str) -> tuple[float, Cost]:
    """A trial's wall seconds and device cost as its run last logged them (``held_seconds``
    and the :mod:`dashboards.cost` metrics the trainable logs every epoch). A run logged
    without them counts its per-epoch training and validation seconds on one CPU core."""
    metrics = MlflowClient(tracking_uri).get_run(run_id).data.metrics
    cost = Cost.from_metrics(metrics)
    if cost is not None:
        return float(metrics.get(HELD_SECONDS, math.nan)), cost
    seconds = training_seconds(tracking_uri, run_id)
    return seconds, held(seconds, cpus=1.0, gpus=0.0)


def log_sweep_cost(tracking: Tracking, parent_run_id: str, sweep: str) -> Cost:
    """Sum the device cost of every trial run of ``sweep`` (seed reruns included) onto its
    parent run: the :meth:`Cost.metrics` and a ``device_kind`` tag; the sum."""
    runs = search_all(tracking.client, [tracking.experiment_id],
                      tag_filter({"sweep": sweep, "kind": "trial"}))
    cost = total(Cost.from_metrics(run.data.metrics) or Cost() for run in runs)
    stamp = now_ms()
    tracking.log(parent_run_id, metrics=[Metric(k, v, stamp, 0) for k, v in
                                         cost.metrics().items()],
                 tags={DEVICE_KIND: cost.kind, "device_cost": cost.text()})
    return cost


def sweep_costs(tracking_uri: str) -> list[dict[str, Any]]:
    """Every sweep's parent run that holds a device cost (:func:`log_sweep_cost`), in every
    experiment: ``sweep``, ``defense``, ``cost`` (a :class:`Cost`) and ``run_id``."""
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = []
    for run in search_all(client, experiments, "tags.kind = 'sweep'"):
        cost = Cost.from_metrics(run.data.metrics)
        if cost is not None:
            found.append({"sweep": run.data.tags.get("sweep"), "run_id": run.info.run_id,
                          "defense": run.data.tags.get("defense"), "cost": cost})
    return found
