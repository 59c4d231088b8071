"""The command line every sweep shares: flags, ``--smoke``, and the run itself.

``robust-sweeps sweep STUDY [flags]`` (or ``--study FILE.yaml``) runs a study
(``sweeps.study``); each script in ``sweeps/`` runs the same command line for its study
(``python sweeps/emr_wrn.py --smoke``). Ray, Optuna and torch load after the flags are parsed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any

import tyro

from sweeps.spec import SweepSpec
from trainables.flags import parse

# Real MNIST, a small MLP, a few short trials on the CPU: the whole stack in minutes.
SMOKE_BASE: dict[str, Any] = {
    "dataset": "mnist", "model": "mlp", "model_params": {"hidden": 64, "layers": 2},
    "epochs": 3, "batch_size": 100, "lr": 0.05, "lr_milestones": [], "schedule": "constant",
    "attack_steps": 3, "eval_steps": 5, "train_subset": 2000, "val_subset": 200,
    "num_threads": 1, "device": "cpu", "epsilon": 0.1, "attack_step_size": 0.04,
}


@dataclass(frozen=True)
class SweepCommand:
    """A sweep's command line: every :class:`SweepSpec` field is a flag (``--num-samples``,
    ``--storage``, ``--tracking-uri``, ``--optuna-storage``, ...), over the study's values."""

    spec: Annotated[SweepSpec, tyro.conf.OmitArgPrefixes]
    smoke: bool = False  # real MNIST, small model, 4 trials of 3 epochs, CPU
    resume: bool = False  # continue an interrupted sweep
    epochs: int | None = None  # epochs per trial (ASHA's max_t)
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()  # KEY=VALUE for all trials
    address: str | None = None  # Ray cluster (default: $RAY_ADDRESS, else a new local one)


def smoke_spec(spec: SweepSpec, smoke_base: dict[str, Any] | None = None) -> SweepSpec:
    """The study at smoke scale: ``SMOKE_BASE`` (the study's ``smoke_base`` over it), four
    short trials, two at a time, on the CPU."""
    from trainables.config import merge

    return dataclasses.replace(
        spec, base={**merge(spec.base, SMOKE_BASE), **(smoke_base or {})}, num_samples=4,
        max_concurrent=2, cpus_per_trial=1.0, gpus_per_trial=0.0, grace_period=1,
        reduction_factor=2, name=f"{spec.name}-smoke")


def parse_command(spec: SweepSpec, argv: list[str], smoke_base: dict[str, Any] | None = None,
                  description: str | None = None, prog: str | None = None) -> SweepCommand:
    """The command line over the study's ``spec`` (``--smoke``: over its smoke scale); the
    returned spec has ``--epochs`` and ``--set`` applied to its base."""
    from trainables.config import apply_overrides

    smoke = "--smoke" in argv
    default = SweepCommand(spec=smoke_spec(spec, smoke_base) if smoke else spec, smoke=smoke)
    command = parse(SweepCommand, argv, default=default, prog=prog, description=description)
    base = command.spec.base
    if command.epochs:
        base = {**base, "epochs": command.epochs}
    base = apply_overrides(base, list(command.set))
    return dataclasses.replace(command, spec=dataclasses.replace(command.spec, base=base))


def sweep_spec(spec: SweepSpec, argv: list[str],
               smoke_base: dict[str, Any] | None = None) -> SweepSpec:
    """The spec a command line runs (checked: its base is a valid TrialConfig)."""
    checked = parse_command(spec, argv, smoke_base).spec
    checked.check()
    return checked


def summarize(results, wall_seconds: float | None = None) -> dict[str, Any]:
    """Per-trial outcome, and the sweep's wall time against the trials' own time; each trial's
    device cost as its last report gave it (``device_hours`` in ``device_unit``,
    :mod:`dashboards.cost`) and the sweep's, summed unit by unit (``device_hours``, NaN where
    GPU-hours and CPU-core-hours meet, ``device_unit``, ``gpu_hours``, ``cpu_hours``)."""
    from dashboards.cost import Cost, total
    from sweeps.runner import failure_reason

    rows, costs = [], []
    for result in results:
        metrics = result.metrics or {}
        cost = Cost.from_metrics(metrics) or Cost()
        costs.append(cost)
        rows.append({"trial_id": metrics.get("trial_id"),
                     "trial_number": (result.config or {}).get("trial_number"),
                     "epochs": metrics.get("epoch"),
                     "val_clean_accuracy": metrics.get("val_clean_accuracy"),
                     "val_robust_accuracy": metrics.get("val_robust_accuracy"),
                     "seconds": metrics.get("time_total_s"),
                     "device_hours": cost.device_hours, "device_unit": cost.unit,
                     "error": failure_reason(result.error) if result.error else None})
    cost = total(costs)
    summary = {"trials": len(rows), "errors": sum(r["error"] is not None for r in rows),
               "trial_seconds": sum(r["seconds"] or 0.0 for r in rows),
               "device_unit": cost.unit, **cost.metrics(), "results": rows}
    summary.setdefault("device_hours", cost.device_hours)
    if wall_seconds is not None:
        summary["wall_seconds"] = wall_seconds
    return summary


def main(spec: SweepSpec, description: str, argv: list[str] | None = None,
         smoke_base: dict[str, Any] | None = None, prog: str | None = None) -> int:
    """Parse, check (the base config and every corner of the search space: bad input exits
    with status 2 and one line, before Ray starts), then run the sweep."""
    from trainables.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = parse_command(spec, argv, smoke_base, description, prog)
        command.spec.check()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from sweeps.cluster import connect
    from sweeps.runner import run_sweep

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("sweeps").addHandler(handler)
    logging.getLogger("sweeps").setLevel(logging.INFO)
    spec = command.spec
    resolved = spec.resolved()
    print(f"sweep {resolved.name}: {resolved.num_samples} trials of {resolved.config.defense} on "
          f"{resolved.config.model}/{resolved.config.dataset}; results in "
          f"{resolved.storage_path}, tracking {resolved.tracking_uri}", file=sys.stderr)
    connect(command.address)  # the flag, else $RAY_ADDRESS, else a new local cluster
    start = time.perf_counter()
    results = run_sweep(spec, resume=command.resume)
    print(json.dumps(summarize(results, time.perf_counter() - start)))
    return 0


def run_study(study: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the study named (or stored at) ``study`` with the command line's flags."""
    from sweeps.study import StudyError, load_study

    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # --help shows the study's own values without building its preset
        loaded = load_study(study, check=not {"-h", "--help"} & set(argv))
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return main(loaded.spec, loaded.description, argv, loaded.smoke_base,
                prog=prog or f"robust-sweeps sweep {study}")


def sweep(argv: list[str] | None = None) -> int:
    """``robust-sweeps sweep STUDY [flags]`` or ``--study FILE.yaml``: run (or ``--resume``)
    a study."""
    from sweeps.study import study_names

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--study"] and len(argv) > 1:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: robust-sweeps sweep STUDY|--study FILE.yaml [--smoke] [--resume] "
              f"[flags]\n\nRun a study's sweep on Ray (Optuna proposes, ASHA stops, MLflow "
              f"records).\nstudies: {', '.join(study_names())}, or a study file (see "
              f"sweeps/studies/)\n`robust-sweeps sweep STUDY --help` lists the flags.")
        return 0
    return run_study(argv[0], argv[1:])
