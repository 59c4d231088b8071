"""The shared sweep runner: a :class:`SweepSpec` becomes a Ray Tune ``Tuner``.

Optuna proposes each trial's knobs through the defense's define-by-run ``search_space``
(TPE by default, NSGA-II for a clean-vs-robust Pareto sweep, CMA-ES or random on request),
with the study in an RDB store that optuna-dashboard can read. ASHA stops hopeless trials on
validation robust accuracy. One MLflow parent run stands for the sweep; each trial logs a child
run (``trainables.trainable``). ``resume=True`` continues an interrupted sweep in place.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from dashboards.runs import (
    Tracking,
    flatten,
    search_all,
)
from sweeps.environment import code_version, create_sqlite_store, home
from sweeps.progress import TrialEvents, tune_output_to
from sweeps.resume import ResumableASHA, ResumableFIFO, ResumableOptunaSearch, has_snapshot
from sweeps.samplers import create_sampler
from sweeps.spec import SweepSpec
from sweeps.storage import optuna_storage
from trainables.config import merge
from trainables.defenses import defense_class
from trainables.trainable import (
    OBJECTIVE,
    TRIAL_NUMBER,
    read_record,
    train_trial,
    trial_tracker,
)

log = logging.getLogger(__name__)

PARETO = ("val_clean_accuracy", "val_robust_accuracy")


# -------------------------------------------------------------------- search spaces
def defense_space(defense: str, trial) -> dict[str, Any]:
    """The defense's own define-by-run space, returned as TrialConfig overrides."""
    return {"overrides": defense_class(defense).search_space(trial)}


def seeds_only_space(trial) -> dict[str, Any]:
    """For parameter-free controls (SMD): only the seed varies."""
    return {"overrides": {"seed": trial.suggest_int("seed", 0, 2**31 - 1)}}


def build_searcher(spec: SweepSpec, *, adopt_running: bool = False):
    space = (seeds_only_space if spec.seeds_only
             else functools.partial(defense_space, spec.config.defense))
    pareto = spec.sampler == "nsga2"
    searcher = ResumableOptunaSearch(
        space=space,
        metric=list(PARETO) if pareto else OBJECTIVE,
        mode=["max", "max"] if pareto else "max",
        sampler=create_sampler(spec.sampler, seed=spec.seed,
                               num_samples=spec.num_samples),
        study_name=spec.name,
        storage=optuna_storage(spec.optuna_storage),
        adopt_running=adopt_running,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)


def study_exists(spec: SweepSpec) -> bool:
    try:
        optuna.load_study(study_name=spec.name, storage=optuna_storage(spec.optuna_storage))
        return True
    except KeyError:
        return False


def parent_run(spec: SweepSpec) -> str:
    tracking = Tracking(spec.tracking_uri, spec.experiment, spec.artifact_location)
    run_id = tracking.get_or_create_run({"sweep": spec.name, "kind": "sweep"}, run_name=spec.name,
                                        tags={"defense": spec.config.defense, **spec.extra_tags})
    tracking.log(run_id, params=flatten({"base": spec.base, "num_samples": spec.num_samples,
                                         "sampler": spec.sampler}))
    return run_id


def create_stores(spec: SweepSpec) -> None:
    """The sweep's sqlite stores (MLflow, Optuna), each created whole or not at all."""
    create_sqlite_store(spec.tracking_uri, lambda uri: Tracking(uri, spec.experiment,
                                                                spec.artifact_location))
    create_sqlite_store(spec.optuna_storage, optuna.storages.RDBStorage)


def build_tuner(spec: SweepSpec, *, resume: bool = False) -> tune.Tuner:
    spec = spec.resolved()
    create_stores(spec)
    trainable = tune.with_resources(train_trial, {"cpu": spec.cpus_per_trial,
                                                  "gpu": spec.gpus_per_trial})
    experiment_dir = f"{spec.storage_path.rstrip('/')}/{spec.name}"  # a path or a URI
    param_space = {
        "base": merge({"margin_every": max(1, spec.config.epochs // 10)},
                      merge(spec.base, {"eval_every": 1})),
        "sweep": {"name": spec.name, "tracking_uri": spec.tracking_uri,
                  "experiment": spec.experiment, "artifact_location": spec.artifact_location,
                  "parent_run_id": parent_run(spec), "code_version": code_version()},
    }
    if resume and has_snapshot(experiment_dir):
        return tune.Tuner.restore(experiment_dir, trainable, resume_unfinished=True,
                                  resume_errored=True, param_space=param_space)
    if resume:  # the driver died before Tune's first snapshot: start again, adopting its trials
        print(f"sweep {spec.name}: no snapshot in {experiment_dir} yet; starting it "
              f"{'again' if study_exists(spec) else 'from the beginning'}", file=sys.stderr)
    scheduler = ResumableFIFO()
    if spec.early_stopping:
        scheduler = ResumableASHA(metric=OBJECTIVE, mode="max", max_t=spec.config.epochs,
                                  grace_period=min(spec.grace_period, spec.config.epochs),
                                  reduction_factor=spec.reduction_factor, time_attr="epoch")
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=build_searcher(spec, adopt_running=resume),
                                    scheduler=scheduler,
                                    num_samples=spec.num_samples, reuse_actors=True),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=spec.storage_path,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,  # one line per trial event instead (sweeps.progress)
            callbacks=[TrialEvents(spec.name, events_log(spec), spec.config.epochs)],
        ),
    )


def events_log(spec: SweepSpec) -> Path:
    """Where a sweep's trial events and results are logged, one JSON line each."""
    return home() / "logs" / f"{spec.name}.log"


def failure_reason(error: BaseException) -> str:
    """The exception's own message: the last line of Ray's wrapped traceback."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:5000] if lines else repr(error)


def trial_identity(result: tune.Result) -> dict[str, str] | None:
    """The MLflow identity of a result's trial run (see ``TrialTracker.identity``)."""
    trial_id = (result.metrics or {}).get("trial_id")
    number = (result.config or {}).get(TRIAL_NUMBER)
    if number is not None:
        return {"trial_number": str(number)}
    return {"trial_id": trial_id} if trial_id else None


def close_runs(spec: SweepSpec, results: tune.ResultGrid) -> None:
    """Reconcile MLflow with Ray's durable results, then give every run its final status.

    Each trial's history is re-sent from its last checkpoint (idempotent), so what a tracking
    outage kept from MLflow — even the whole run of a trial stopped early meanwhile — arrives
    now. Completed trials closed their own runs when they published; what is left are trials the
    scheduler stopped early (KILLED, tagged ``stopped_early``) and failed ones (FAILED, with
    the reason). Runs of trials no longer in the sweep, and Optuna trials still RUNNING, are
    closed as lost (:func:`close_orphans`); after a resume there are none, since new trials take
    over what the killed driver had started (``sweeps.resume``).
    """
    spec = spec.resolved()
    tracking = Tracking(spec.tracking_uri, spec.experiment, spec.artifact_location)
    known = []
    for result in results:
        identity = trial_identity(result)
        if identity is None:
            continue
        known.append(identity)
        trial_id = result.metrics["trial_id"]
        if result.checkpoint is not None:
            record = read_record(result.checkpoint)
            tracker = trial_tracker(result.config["sweep"], trial_id, record,
                                    result.config.get(TRIAL_NUMBER))
            if tracker is not None and not tracker.sync(record["history"]):
                raise ConnectionError(f"tracking server {spec.tracking_uri} unavailable")
        run_id = tracking.find_run({"sweep": spec.name, **identity})
        if not run_id or tracking.client.get_run(run_id).info.status == "FINISHED":
            continue
        if result.error:
            tracking.log(run_id, tags={"failure": failure_reason(result.error)})
            tracking.set_terminated(run_id, "FAILED")
        else:
            tracking.log(run_id, tags={"stopped_early": "true"})
            tracking.set_terminated(run_id, "KILLED")
    close_orphans(spec, tracking, known)
    parent = tracking.find_run({"sweep": spec.name, "kind": "sweep"})
    if parent:
        tracking.set_terminated(parent, "FINISHED")


ORPHANED = "started before the driver stopped, not in Ray Tune's saved state; replaced on resume"


def close_orphans(spec: SweepSpec, tracking: Tracking, known: list[dict[str, str]]) -> None:
    """After a sweep ends: unfinished trial runs that are none of the sweep's trials (``known``
    identities), and Optuna trials still RUNNING (none can be, once the Tuner has returned),
    are closed as lost."""
    runs = search_all(tracking.client, [tracking.experiment_id],
                      f"tags.sweep = '{spec.name}' and tags.kind = 'trial'")
    for run in runs:
        tags = run.data.tags
        ours = any(all(tags.get(k) == v for k, v in identity.items()) for identity in known)
        if not ours and run.info.status == "RUNNING":
            tracking.log(run.info.run_id, tags={"orphaned": ORPHANED})
            tracking.set_terminated(run.info.run_id, "KILLED")
    try:
        study = optuna.load_study(study_name=spec.name,
                                  storage=optuna_storage(spec.optuna_storage))
    except KeyError:  # no study (a seeds-only or grid sweep never made one)
        return
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def run_sweep(spec: SweepSpec, *, resume: bool = False,
              tracking_patience_s: float = 600.0) -> tune.ResultGrid:
    """Run (or resume) the sweep, then reconcile MLflow with the results, waiting up to
    ``tracking_patience_s`` for a tracking server that is down."""
    print(f"sweep {spec.name}: {spec.num_samples} trials of {spec.config.epochs} epochs; every "
          f"result in {events_log(spec)}", file=sys.stderr)
    with tune_output_to(events_log(spec)):
        results = build_tuner(spec, resume=resume).fit()
    print(f"sweep {spec.name}: {len(results)} trials ended; reconciling MLflow", file=sys.stderr)
    deadline = time.monotonic() + tracking_patience_s
    while True:
        try:
            close_runs(spec, results)
            return results
        except Exception as error:  # the results are safe in Ray's storage
            if time.monotonic() > deadline:
                log.warning("could not reconcile MLflow (%s); rerun with --resume to retry",
                            error)
                return results
            log.warning("tracking unavailable (%s); retrying", error.__class__.__name__)
            time.sleep(10)
