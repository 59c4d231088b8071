"""The Ray Tune function trainable: a config dict in, per-epoch metrics and checkpoints out.

The config dict Tune passes holds ``base`` (a TrialConfig dict), ``overrides`` (what the search
space chose for this trial), ``sweep`` (tracking settings) and optionally ``tags`` (more MLflow
tags for the trial's run, such as a seed rerun's). Every trial's run is tagged with its
``config_group`` (``dashboards.groups``: its config without the seed), so the runs of one
configuration under different seeds group together. Every epoch the trial reports
training and validation metrics and a checkpoint directory holding the latest state (to resume
exactly), the best state by validation robust accuracy, and the metric history. Every epoch's
metrics also carry what the trial has held so far, over all its attempts: ``held_seconds`` of
wall time from each attempt's start and the device-hours they cost at the trial's reserved
resources (``device_hours``, ``gpu_hours``, ``cpu_hours``: :mod:`dashboards.cost`); its run is
tagged with its ``device_kind``. A restarted trial resumes from ``tune.get_checkpoint()``; on
completion it publishes its best checkpoint to its MLflow run, tagged as awaiting evaluation
(with the per-example margins of a defense that keeps them as state, SMD's, beside it:
``trainables.engine.write_state_margins``). This is the only module of ``trainables`` that
imports Ray.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from dashboards.cost import device_kind, trial_cost
from dashboards.groups import GROUP, config_group
from dashboards.queue import submission_tags
from dashboards.runs import DEVICE_KIND, HELD_SECONDS, TrialTracker, now_ms
from sweeps.retry import patiently
from trainables.checkpoints import resume, save_checkpoint
from trainables.config import TrialConfig, merge
from trainables.engine import TrainingRun, write_state_margins

OBJECTIVE = "val_robust_accuracy"
TRIAL_NUMBER = "trial_number"  # set by the searcher: the trial's number in the Optuna study
LATEST, BEST, RECORD = "latest", "best", "trial.json"


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trial fails with this reason."""


def trial_config(config: dict[str, Any]) -> TrialConfig:
    return TrialConfig.from_dict(merge(config["base"], config.get("overrides") or {}))


def _restore(run: TrainingRun, workdir: Path) -> dict[str, Any]:
    record = json.loads((workdir / RECORD).read_text())
    if record.get("diverged"):
        raise TrialDiverged(record["diverged"])
    resume(run, workdir / LATEST)
    return record


def trial_tracker(sweep: dict[str, Any], trial_id: str, record: dict[str, Any],
                  trial_number: int | None = None) -> TrialTracker | None:
    """The MLflow face of a trial, rebuilt alike in the trial and, afterwards, in the driver;
    ``trial_number`` (the search's own number for the trial) is its identity when given."""
    if not sweep.get("tracking_uri"):
        return None
    return TrialTracker(
        tracking_uri=sweep["tracking_uri"], experiment=sweep["experiment"], sweep=sweep["name"],
        trial_id=trial_id, parent_run_id=sweep.get("parent_run_id"),
        artifact_location=sweep.get("artifact_location"), params=record["params"],
        tags=record["tags"], trial_number=trial_number)


def report_of(record: dict[str, Any]) -> dict[str, Any]:
    """What the trial reports to Tune for the last epoch of its record."""
    return {**record["history"][-1], f"best_{OBJECTIVE}": record["best"][OBJECTIVE],
            "restarts": record["restarts"]}


def write_record(workdir: Path, record: dict[str, Any]) -> None:
    """The record goes last and lists every other file with its size, so that a copy of the
    folder can be checked for completeness (a checkpoint cut short by a crash is not)."""
    record["files"] = {str(path.relative_to(workdir)): path.stat().st_size
                       for path in sorted(workdir.rglob("*"))
                       if path.is_file() and path.name != RECORD}
    (workdir / RECORD).write_text(json.dumps(record))


def read_record(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    """A trial's record (history, best, params, tags) from one of its checkpoints."""
    with checkpoint.as_directory() as saved:
        return json.loads((Path(saved) / RECORD).read_text())


def trial_resources(context) -> tuple[float, float]:
    """The ``(cpus, gpus)`` Ray reserved for the trial (one CPU core outside Tune)."""
    try:
        resources = context.get_trial_resources().required_resources
    except Exception:  # not inside a Tune trial
        return 1.0, 0.0
    return float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))


def charge(record: dict[str, Any], metrics: dict[str, Any], started: float, *, cpus: float,
           gpus: float) -> None:
    """Bring the attempt's wall seconds up to now and put the trial's cost so far (every
    attempt, :func:`dashboards.cost.trial_cost`) in the epoch's ``metrics``."""
    record["attempt_seconds"][-1] = time.monotonic() - started
    metrics[HELD_SECONDS] = sum(record["attempt_seconds"])
    metrics.update(trial_cost(record["attempt_seconds"], cpus=cpus, gpus=gpus).metrics())


def train_trial(config: dict[str, Any]) -> None:
    started = time.monotonic()  # the attempt holds its devices from here
    cfg = trial_config(config)
    sweep = config.get("sweep") or {}
    context = tune.get_context()
    cpus, gpus = trial_resources(context)
    trial_id = context.get_trial_id() or "local"
    run = TrainingRun(cfg)
    workdir = Path(tempfile.mkdtemp(prefix=f"trial-{trial_id}-"))
    record: dict[str, Any] = {"history": [], "best": None, "diverged": None, "restarts": 0}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            shutil.copytree(saved, workdir, dirs_exist_ok=True)
        record = _restore(run, workdir)
        record["restarts"] = record.get("restarts", 0) + 1
    record.setdefault("attempt_seconds", []).append(0.0)
    record.setdefault("params", run.config.to_dict())
    record.setdefault("tags", {"sweep": sweep.get("name", ""), "defense": cfg.defense,
                               "dataset": cfg.dataset, "model": cfg.model,
                               "code_version": sweep.get("code_version", "unknown"),
                               "data_checksum": run.train_set.checksum,
                               GROUP: config_group(record["params"]),
                               DEVICE_KIND: device_kind(cpus=cpus, gpus=gpus),
                               **(config.get("tags") or {})})
    tracker = trial_tracker(sweep, trial_id, record, config.get(TRIAL_NUMBER))
    if tracker is not None:
        tracker.sync(record["history"])  # the run exists from the start, failures included
    while not run.finished:
        try:
            metrics = run.run_epoch()
        except FloatingPointError as error:
            record["diverged"] = f"trial {trial_id} diverged at epoch {run.epoch + 1}: {error}"
            write_record(workdir, record)
            # NaN objectives: schedulers (nanpercentile) and searchers see no usable value
            tune.report({"diverged": 1, "epoch": run.epoch + 1, OBJECTIVE: math.nan,
                         "val_clean_accuracy": math.nan},
                        checkpoint=tune.Checkpoint.from_directory(str(workdir)))
            raise TrialDiverged(record["diverged"]) from error
        metrics["timestamp"] = now_ms()
        record["history"].append(metrics)
        save_checkpoint(workdir / LATEST, model=run.published_model, config=run.config,
                        metrics=metrics, training_state=run.state_dict())
        best = record["best"]
        if best is None or metrics[OBJECTIVE] > best[OBJECTIVE]:
            record["best"] = metrics
            save_checkpoint(workdir / BEST, model=run.published_model, config=run.config,
                            metrics=metrics)
            write_state_margins(run.defense_state, workdir / BEST)  # SMD's, published with it
        charge(record, metrics, started, cpus=cpus, gpus=gpus)
        write_record(workdir, record)
        if tracker is not None and run.finished:
            # before the last report: a scheduler may end the trial as soon as it has it
            tracker.publish(record["history"], workdir / BEST,
                            tags=submission_tags(record["best"], OBJECTIVE))
        elif tracker is not None:
            tracker.sync(record["history"])
        # the checkpoint upload fails while the storage (an S3 endpoint) does not answer
        patiently(tune.report, report_of(record),
                  checkpoint=tune.Checkpoint.from_directory(str(workdir)),
                  what="Ray Tune's storage")
    shutil.rmtree(workdir, ignore_errors=True)
