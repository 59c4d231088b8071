"""The shared sweep runner: a :class:`SweepSpec` becomes a Ray Tune ``Tuner``.

Optuna proposes each trial's knobs through the defense's define-by-run ``search_space``
(TPE by default, NSGA-II for a clean-vs-robust Pareto sweep, CMA-ES or random on request),
with the study in an RDB store that optuna-dashboard can read. ASHA stops hopeless trials on
validation robust accuracy. One MLflow parent run stands for the sweep; each trial logs a child
run (``trainables.trainable``). ``resume=True`` continues an interrupted sweep in place. With
``rerun_top_k`` the best trials that ran their full budget are then trained again with other
seeds (the Tune experiment ``<name>-seeds``), their runs tagged ``seed_rerun`` and, like every
trial's, with their ``config_group``.
"""

from __future__ import annotations

import functools
import logging
import math
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
    log_sweep_cost,
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
from trainables.recipe_space import with_recipe
from trainables.trainable import (
    OBJECTIVE,
    TRIAL_NUMBER,
    read_record,
    train_trial,
    trial_config,
    trial_tracker,
)

log = logging.getLogger(__name__)

PARETO = ("val_clean_accuracy", "val_robust_accuracy")


# -------------------------------------------------------------------- search spaces
def defense_space(defense: str, trial, recipe: tuple[str, ...] = ()) -> dict[str, Any]:
    """The defense's own define-by-run space, with the training options ``recipe`` searched
    too (``trainables.recipe_space``), returned as TrialConfig overrides."""
    return {"overrides": with_recipe(defense_class(defense).search_space, recipe)(trial)}


def seeds_only_space(trial) -> dict[str, Any]:
    """For parameter-free controls (SMD): only the seed varies."""
    return {"overrides": {"seed": trial.suggest_int("seed", 0, 2**31 - 1)}}


def build_searcher(spec: SweepSpec, *, adopt_running: bool = False):
    space = (seeds_only_space if spec.seeds_only
             else functools.partial(defense_space, spec.config.defense,
                                    recipe=spec.search_recipe))
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


def trainable_of(spec: SweepSpec):
    return tune.with_resources(train_trial, {"cpu": spec.cpus_per_trial,
                                             "gpu": spec.gpus_per_trial})


def sweep_space(spec: SweepSpec) -> dict[str, Any]:
    """What every trial of the (resolved) sweep gets: its base config and tracking settings."""
    return {
        # validation by the signal that ranks trials as AutoAttack ranks their checkpoints
        # (benchmarks/proxy_fidelity.py): best-iterate PGD on the CW margin, unless the base
        # says otherwise
        "base": merge({"margin_every": max(1, spec.config.epochs // 10), "eval_loss": "cw",
                       "eval_keep": "best"}, merge(spec.base, {"eval_every": 1})),
        "sweep": {"name": spec.name, "tracking_uri": spec.tracking_uri,
                  "experiment": spec.experiment, "artifact_location": spec.artifact_location,
                  "parent_run_id": parent_run(spec), "code_version": code_version()},
    }


def run_config(spec: SweepSpec, name: str) -> tune.RunConfig:
    """The Tune experiment ``name`` of the (resolved) sweep: storage, retries, trial events."""
    return tune.RunConfig(
        name=name, storage_path=spec.storage_path,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=0,  # one line per trial event instead (sweeps.progress)
        callbacks=[TrialEvents(name, events_log(spec), spec.config.epochs)],
    )


def build_tuner(spec: SweepSpec, *, resume: bool = False) -> tune.Tuner:
    spec = spec.resolved()
    create_stores(spec)
    trainable = trainable_of(spec)
    experiment_dir = f"{spec.storage_path.rstrip('/')}/{spec.name}"  # a path or a URI
    param_space = sweep_space(spec)
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
        run_config=run_config(spec, spec.name),
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


def close_runs(spec: SweepSpec, results: tune.ResultGrid, *, reruns: bool = False) -> None:
    """Reconcile MLflow with Ray's durable results, then give every run its final status.

    Each trial's history is re-sent from its last checkpoint (idempotent), so what a tracking
    outage kept from MLflow — even the whole run of a trial stopped early meanwhile — arrives
    now. Completed trials closed their own runs when they published; what is left are trials the
    scheduler stopped early (KILLED, tagged ``stopped_early``) and failed ones (FAILED, with
    the reason). Runs of trials no longer in the sweep, and Optuna trials still RUNNING, are
    closed as lost (:func:`close_orphans`); after a resume there are none, since new trials take
    over what the killed driver had started (``sweeps.resume``). ``reruns``: the results are
    the sweep's seed reruns, and only runs of seed reruns can be their orphans (and only others
    those of the search). The parent run then gets the device cost of all the sweep's trials
    (``dashboards.runs.log_sweep_cost``).
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
    close_orphans(spec, tracking, known, reruns=reruns)
    parent = tracking.find_run({"sweep": spec.name, "kind": "sweep"})
    if parent:
        log_sweep_cost(tracking, parent, spec.name)  # every trial's device-hours, summed
        tracking.set_terminated(parent, "FINISHED")


ORPHANED = "started before the driver stopped, not in Ray Tune's saved state; replaced on resume"


def close_orphans(spec: SweepSpec, tracking: Tracking, known: list[dict[str, str]], *,
                  reruns: bool = False) -> None:
    """After a sweep ends: unfinished trial runs that are none of the sweep's trials (``known``
    identities), and Optuna trials still RUNNING (none can be, once the Tuner has returned),
    are closed as lost."""
    runs = search_all(tracking.client, [tracking.experiment_id],
                      f"tags.sweep = '{spec.name}' and tags.kind = 'trial'")
    for run in runs:
        tags = run.data.tags
        ours = any(all(tags.get(k) == v for k, v in identity.items()) for identity in known)
        phase = (tags.get(SEED_RERUN_TAG) == "true") == reruns
        if not ours and phase and run.info.status == "RUNNING":
            tracking.log(run.info.run_id, tags={"orphaned": ORPHANED})
            tracking.set_terminated(run.info.run_id, "KILLED")
    try:
        study = optuna.load_study(study_name=spec.name,
                                  storage=optuna_storage(spec.optuna_storage))
    except KeyError:  # no study (a seeds-only or grid sweep never made one)
        return
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


# -------------------------------------------------------------------- seed reruns
SEED_RERUN_TAG = "seed_rerun"  # "true" on the runs of a sweep's seed reruns
RERUNS = "seeds"  # a sweep's seed reruns are the Tune experiment <name>-seeds


def ran_to_the_end(spec: SweepSpec, result: tune.Result) -> bool:
    """Whether the trial ran its full budget without error, with a finite objective."""
    metrics = result.metrics or {}
    value = metrics.get(OBJECTIVE)
    return (result.error is None and int(metrics.get("epoch") or 0) >= spec.config.epochs
            and isinstance(value, int | float) and math.isfinite(value))


def best_finished(spec: SweepSpec, results, k: int) -> list[tune.Result]:
    """The ``k`` trials that ran to the end with the highest objective (the validation robust
    accuracy they last reported, as the search saw it), best first."""
    done = [result for result in results if ran_to_the_end(spec, result)]
    return sorted(done, key=lambda result: result.metrics[OBJECTIVE], reverse=True)[:k]


def rerun_overrides(spec: SweepSpec, results) -> list[dict[str, Any]]:
    """The overrides of every seed rerun: for each of the best ``rerun_top_k`` trials, its own
    overrides with seed s+1, …, s+n-1 (s its own seed, n ``rerun_seeds``)."""
    reruns = []
    for result in best_finished(spec, results, spec.rerun_top_k):
        overrides = result.config.get("overrides") or {}
        seed = trial_config(result.config).seed
        reruns += [merge(overrides, {"seed": seed + i}) for i in range(1, spec.rerun_seeds)]
    return reruns


def build_rerun_tuner(spec: SweepSpec, overrides: list[dict[str, Any]], *,
                      resume: bool = False) -> tune.Tuner:
    """One trial per entry of ``overrides``, each to its full budget (no search, no early
    stopping), tagged as a seed rerun."""
    spec = spec.resolved()
    name = f"{spec.name}-{RERUNS}"
    experiment_dir = f"{spec.storage_path.rstrip('/')}/{name}"
    param_space = {**sweep_space(spec), "overrides": tune.grid_search(overrides),
                   "tags": {SEED_RERUN_TAG: "true"}}
    if resume and has_snapshot(experiment_dir):
        return tune.Tuner.restore(experiment_dir, trainable_of(spec), resume_unfinished=True,
                                  resume_errored=True, param_space=param_space)
    return tune.Tuner(
        trainable_of(spec), param_space=param_space,
        tune_config=tune.TuneConfig(scheduler=ResumableFIFO(), num_samples=1,
                                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
        run_config=run_config(spec, name))


def rerun_seeds(spec: SweepSpec, results, *, resume: bool = False,
                tracking_patience_s: float = 600.0) -> list[tune.Result]:
    """Train the best ``rerun_top_k`` configurations of ``results`` with their further seeds
    and reconcile MLflow with their results (none when ``rerun_top_k`` is 0)."""
    overrides = rerun_overrides(spec, results)
    if not overrides:
        return []
    print(f"sweep {spec.name}: the best {len(overrides) // (spec.rerun_seeds - 1)} "
          f"configuration(s) again with {spec.rerun_seeds - 1} more seed(s) each, "
          f"{len(overrides)} trials", file=sys.stderr)
    with tune_output_to(events_log(spec)):
        reruns = build_rerun_tuner(spec, overrides, resume=resume).fit()
    reconcile(spec, reruns, tracking_patience_s, reruns=True)
    return list(reruns)


def reconcile(spec: SweepSpec, results, tracking_patience_s: float, *,
              reruns: bool = False) -> None:
    """:func:`close_runs`, waiting up to ``tracking_patience_s`` for a tracking server that
    is down."""
    deadline = time.monotonic() + tracking_patience_s
    while True:
        try:
            close_runs(spec, results, reruns=reruns)
            return
        except Exception as error:  # the results are safe in Ray's storage
            if time.monotonic() > deadline:
                log.warning("could not reconcile MLflow (%s); rerun with --resume to retry",
                            error)
                return
            log.warning("tracking unavailable (%s); retrying", error.__class__.__name__)
            time.sleep(10)


def run_sweep(spec: SweepSpec, *, resume: bool = False,
              tracking_patience_s: float = 600.0) -> list[tune.Result]:
    """Run (or resume) the sweep, then reconcile MLflow with the results, waiting up to
    ``tracking_patience_s`` for a tracking server that is down; then the seed reruns
    (``rerun_top_k``), alike. Every trial's result, the search's first."""
    print(f"sweep {spec.name}: {spec.num_samples} trials of {spec.config.epochs} epochs; every "
          f"result in {events_log(spec)}", file=sys.stderr)
    with tune_output_to(events_log(spec)):
        results = build_tuner(spec, resume=resume).fit()
    print(f"sweep {spec.name}: {len(results)} trials ended; reconciling MLflow", file=sys.stderr)
    reconcile(spec, results, tracking_patience_s)
    return list(results) + rerun_seeds(spec, results, resume=resume,
                                       tracking_patience_s=tracking_patience_s)
