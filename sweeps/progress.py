"""A sweep's progress as one line per event that matters, the details in a log file.

Ray Tune's own output (status tables every few seconds, every trial's whole configuration,
its warnings) leaves the terminal (:func:`tune_output_to`; the warnings go to the log file).
:class:`TrialEvents` prints a line when a trial starts (its sampled knobs), when it finishes
(its epochs and validation numbers), when the scheduler stops it early, and when it fails (the
reason), and writes every reported result, one JSON line each, to the sweep's log file, whose
path is printed when the sweep starts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune

from trainables.trainable import OBJECTIVE, TRIAL_NUMBER

Say = Callable[[str], None]


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _flat(values: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flat(value) if isinstance(value, dict) else {key: value})
    return flat


def knobs(config: dict[str, Any]) -> str:
    """The trial's sampled values, compactly: ``beta=6.99, weight_decay=0.000643``."""
    sampled = _flat(config.get("overrides") or {})
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(sampled.items())) or "base settings"


@contextmanager
def tune_output_to(log_path: Path) -> Iterator[None]:
    """Ray Tune's own output off the terminal for the duration: its status tables (the legacy
    reporter at verbosity 0 prints none) and its logged warnings, which go to ``log_path``."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("ray.tune")
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        handler.close()


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) and value == value else "—"


class TrialEvents(tune.Callback):
    """Prints a sweep's trial events, one line each, and logs every result to ``log_path``."""

    def __init__(self, sweep: str, log_path: Path, epochs: int, say: Say = to_stderr) -> None:
        self.sweep, self.log_path, self.epochs, self.say = sweep, Path(log_path), epochs, say
        self.last: dict[str, dict[str, Any]] = {}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def _name(self, trial) -> str:
        number = (trial.config or {}).get(TRIAL_NUMBER)
        return f"trial {number}" if number is not None else f"trial {trial.trial_id}"

    def _log(self, event: str, trial, **fields: Any) -> None:
        line = {"time": time.time(), "event": event, "trial_id": trial.trial_id,
                TRIAL_NUMBER: (trial.config or {}).get(TRIAL_NUMBER), **fields}
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(line, default=str) + "\n")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._log("start", trial, config=trial.config)
        self.say(f"[{self.sweep}] {self._name(trial)} started: {knobs(trial.config or {})}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[trial.trial_id] = result
        self._log("result", trial, result={k: v for k, v in result.items()
                                           if isinstance(v, int | float | str)})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = self.last.get(trial.trial_id, trial.last_result or {})
        epoch = int(result.get("epoch", 0) or 0)
        what = (f"finished {epoch} epochs" if epoch >= self.epochs else
                f"stopped by its patience (no better val robust accuracy) after {epoch} of "
                f"{self.epochs} epochs" if result.get("stopped_early") else
                f"stopped early by the scheduler after {epoch} of {self.epochs} epochs")
        self._log("complete", trial, epoch=epoch)
        self.say(f"[{self.sweep}] {self._name(trial)} {what}: val clean "
                 f"{_percent(result.get('val_clean_accuracy'))}, val robust "
                 f"{_percent(result.get(OBJECTIVE))}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = getattr(trial, "error_msg", None) or "see the log"
        reason = str(error).strip().splitlines()[-1][:300] if str(error).strip() else "error"
        self._log("error", trial, error=str(error)[-5000:])
        self.say(f"[{self.sweep}] {self._name(trial)} failed: {reason}")
