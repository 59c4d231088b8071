"""What makes a sweep resumable after its driver dies at any moment.

**Checkpoints.** Ray Tune's snapshot names each trial's latest checkpoint as of the snapshot; a
trial that went on saving meanwhile has newer ones, and Tune deletes the oldest beyond
``num_to_keep``, which may be the very one the snapshot names. The schedulers here
(:class:`ResumableASHA`, :class:`ResumableFIFO`) point every restored trial at its newest
*complete* checkpoint on storage (complete: every file its ``trial.json`` lists is there at
its size) before Tune restores it, so a trial resumes where it really stopped, never from a
deleted folder.

**The search.** Two stores hold a sweep's progress and they are written at different times.
The Optuna study (an RDB) is written at once: a trial is asked for when Tune creates it and
told its value the moment Tune ends it. Tune's experiment snapshot (trial states, the
searcher's own state) is written every few seconds. A driver killed between the two leaves the
study ahead of the snapshot in exactly two ways, and ``Tuner.restore`` brings back the snapshot:

* **finished ahead**: the study has a trial finished that the snapshot still has running. Tune
  resumes it from its newest checkpoint (its last one, or close to it); Optuna refuses any
  update to a finished trial (``UpdateFinishedTrialError``), so whatever the trial reports
  again is not sent. The study keeps the trial's first completion.
* **asked ahead**: the study has trials that the snapshot never saw (asked for after it, still
  running or even finished). Tune will create as many new trials as it lost; each adopts one of
  those Optuna trials, with the parameters already drawn, instead of asking for another (one
  already finished is trained again and not reported again). The study ends with exactly
  ``num_samples`` trials and nothing left RUNNING.

Every suggestion carries the Optuna trial number (``trial_number``), the trial's identity in
MLflow, so an adopted trial continues the run the lost one had started.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna
import pyarrow.fs
from ray import tune
from ray.train._internal.session import _TrainingResult
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from sweeps.retry import patiently
from trainables.trainable import RECORD, TRIAL_NUMBER, report_of

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose restored state is reconciled with the study it writes to."""

    def __init__(self, *args, adopt_running: bool = False, **kwargs) -> None:
        """``adopt_running``: a sweep started again after its driver died before Tune's first
        snapshot; the study's trials (running or finished) are taken over by the first
        suggestions."""
        super().__init__(*args, **kwargs)
        self._adoptable: list[int] = []  # storage ids of Optuna trials no Tune trial holds
        if adopt_running:
            self.reconcile()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.reconcile()

    def reconcile(self) -> None:
        """Align the restored state with the study: trials the study has finished count as
        completed here, and trials that no restored Tune trial holds (asked after the last
        snapshot, running or already finished) are taken over by the next suggestions,
        oldest first."""
        storage = self._ot_study._storage
        held = {trial._trial_id for trial in self._ot_trials.values()}
        for tune_id, trial in self._ot_trials.items():
            if storage.get_trial(trial._trial_id).state.is_finished():
                if tune_id not in self._completed_trials:
                    log.info("trial %s (Optuna #%d) finished before the driver stopped; its "
                             "replay is not reported again", tune_id, trial.number)
                self._completed_trials.add(tune_id)
        lost = [t for t in self._ot_study.get_trials(deepcopy=False) if t._trial_id not in held]
        self._adoptable = [t._trial_id for t in sorted(lost, key=lambda t: t.number)]
        if self._adoptable:
            log.info("%d Optuna trials were asked for after the last snapshot; new trials "
                     "adopt them", len(self._adoptable))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._ot_trials and self._adoptable:
            adopted = optuna.trial.Trial(self._ot_study, self._adoptable.pop(0))
            self._ot_trials[trial_id] = adopted
            if adopted._cached_frozen_trial.state.is_finished():
                # finished after the snapshot: trained again (its numbers already recorded,
                # MLflow keeps each epoch once), never reported again
                self._completed_trials.add(trial_id)
        config = super().suggest(trial_id)
        if config is None:
            return None
        return {**config, TRIAL_NUMBER: self._ot_trials[trial_id].number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials:  # a replay of a finished trial is silent
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)


# ------------------------------------------------------------------------------- checkpoints
def has_snapshot(experiment_path: str) -> bool:
    """Whether Tune saved an experiment state there (a path or a URI such as ``s3://…``): a
    driver killed in its first seconds leaves an experiment folder without one."""
    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
    found = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return any(info.base_name.startswith("experiment_state-") for info in found)


def is_complete(fs: pyarrow.fs.FileSystem, path: str) -> dict[str, Any] | None:
    """The checkpoint's record if every file it lists is on storage at its size, else None."""
    try:
        with fs.open_input_stream(f"{path}/{RECORD}") as stream:
            record = json.loads(stream.readall())
    except (OSError, ValueError):
        return None
    files = record.get("files") or {}
    infos = fs.get_file_info([f"{path}/{name}" for name in files])
    if any(info.size != size for info, size in zip(infos, files.values(), strict=True)):
        return None
    return record


def newest_checkpoint(fs: pyarrow.fs.FileSystem, trial_path: str) -> _TrainingResult | None:
    """The trial's newest complete checkpoint on storage, with the metrics the trial reported
    with it, as Tune registers a checkpoint."""
    found = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    folders = sorted((info.path for info in found if info.type == pyarrow.fs.FileType.Directory
                      and info.base_name.startswith("checkpoint_")), reverse=True)
    for path in folders:
        record = is_complete(fs, path)
        if record is not None and record.get("history"):
            metrics = {**report_of(record), "training_iteration": record["history"][-1]["epoch"]}
            return _TrainingResult(checkpoint=tune.Checkpoint(path, filesystem=fs),
                                   metrics=metrics)
    return None


class RestoresNewestCheckpoint:
    """Scheduler mixin: each trial added (restored trials are added too) resumes from its newest
    complete checkpoint when that is newer than Tune's, or Tune's is gone."""

    def on_trial_add(self, tune_controller, trial) -> None:
        manager = trial.run_metadata.checkpoint_manager
        known = manager.latest_checkpoint_result if manager is not None else None
        if known is not None:
            storage = trial.storage
            newest = patiently(newest_checkpoint, storage.storage_filesystem,
                               storage.trial_fs_path, what="Ray Tune's storage")
            if newest is not None and newest.checkpoint.path != known.checkpoint.path and (
                    newest.checkpoint.path > known.checkpoint.path
                    or patiently(is_complete, storage.storage_filesystem,
                                 known.checkpoint.path, what="Ray Tune's storage") is None):
                log.info("trial %s resumes from %s (Tune's snapshot named %s)", trial.trial_id,
                         newest.checkpoint.path.rsplit("/", 1)[-1],
                         known.checkpoint.path.rsplit("/", 1)[-1])
                # forget what is gone (Tune would try to delete it again), then register
                fs = storage.storage_filesystem
                manager._checkpoint_results = [
                    saved for saved in manager._checkpoint_results
                    if fs.get_file_info(saved.checkpoint.path).type != pyarrow.fs.FileType.NotFound]
                manager.register_checkpoint(newest)
                # the next checkpoint goes after the newest folder, never into an old one
                index = int(newest.checkpoint.path.rsplit("_", 1)[-1])
                trial.storage.current_checkpoint_index = index + 1
                trial.run_metadata.invalidate_cache()
                trial.invalidate_json_state()
        super().on_trial_add(tune_controller, trial)


class ResumableASHA(RestoresNewestCheckpoint, ASHAScheduler):
    """ASHA (early stopping on the objective) whose restored trials resume where they stopped."""


class ResumableFIFO(RestoresNewestCheckpoint, FIFOScheduler):
    """Every trial to its full budget; restored trials resume where they stopped."""
