"""The command line every sweep shares: flags, ``--smoke``, and the run itself.

``robust-sweeps sweep STUDY [flags]`` (or ``--study FILE.yaml``) runs a study
(``sweeps.study``); each script in ``sweeps/`` runs the same command line for its study
(``python sweeps/emr_wrn.py --smoke``). Ray, Optuna and torch load after the flags are parsed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from sweeps.samplers import SAMPLERS

if TYPE_CHECKING:
    from sweeps.spec import SweepSpec

# Real MNIST, a small MLP, a few short trials on the CPU: the whole stack in minutes.
SMOKE_BASE: dict[str, Any] = {
    "dataset": "mnist", "model": "mlp", "model_params": {"hidden": 64, "layers": 2},
    "epochs": 3, "batch_size": 100, "lr": 0.05, "lr_milestones": [], "schedule": "constant",
    "attack_steps": 3, "eval_steps": 5, "train_subset": 2000, "val_subset": 200,
    "num_threads": 1, "device": "cpu", "epsilon": 0.1, "attack_step_size": 0.04,
}


def parse_args(description: str, argv: list[str] | None,
              prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="real MNIST, small model, 4 trials of 3 epochs, CPU")
    parser.add_argument("--samples", type=int, help="number of trials")
    parser.add_argument("--concurrency", type=int, help="trials running at once")
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU")
    parser.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--no-early-stopping", dest="early_stopping", action="store_false",
                        default=None, help="train every trial to the full epoch budget (no ASHA)")
    parser.add_argument("--name", help="sweep name (Tune experiment, Optuna study, MLflow tag)")
    parser.add_argument("--storage", help="Ray Tune storage path (shared storage on a cluster)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under "
                                               "$ROBUST_SWEEPS_HOME)")
    parser.add_argument("--experiment", help="MLflow experiment")
    parser.add_argument("--optuna-storage", help="Optuna RDB URL (sqlite or postgresql)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, the "
                                          "cluster of a submitted job, or a new local one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a TrialConfig field for all trials")
    return parser.parse_args(argv)


def spec_from_args(spec: SweepSpec, args: argparse.Namespace,
                   smoke_base: dict[str, Any] | None = None) -> SweepSpec:
    """The spec with the command line's flags applied (``smoke_base``: the study's own fields
    under ``--smoke``, replacing the smoke defaults)."""
    from trainables.config import apply_overrides, merge

    base = spec.base
    changes: dict[str, Any] = {}
    if args.smoke:
        base = {**merge(base, SMOKE_BASE), **(smoke_base or {})}
        changes.update(num_samples=4, max_concurrent=2, cpus_per_trial=1.0, gpus_per_trial=0.0,
                       grace_period=1, reduction_factor=2, name=f"{spec.name}-smoke")
    if args.epochs:
        base = {**base, "epochs": args.epochs}
    base = apply_overrides(base, args.overrides)
    flags = {"num_samples": args.samples, "max_concurrent": args.concurrency,
             "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
             "sampler": args.sampler, "name": args.name, "storage_path": args.storage,
             "tracking_uri": args.tracking_uri, "experiment": args.experiment,
             "optuna_storage": args.optuna_storage, "early_stopping": args.early_stopping}
    changes.update({k: v for k, v in flags.items() if v is not None})
    return dataclasses.replace(spec, base=base, **changes)


def summarize(results, wall_seconds: float | None = None) -> dict[str, Any]:
    """Per-trial outcome, and the sweep's wall time against the trials' own time."""
    from sweeps.runner import failure_reason

    rows = []
    for result in results:
        metrics = result.metrics or {}
        rows.append({"trial_id": metrics.get("trial_id"),
                     "trial_number": (result.config or {}).get("trial_number"),
                     "epochs": metrics.get("epoch"),
                     "val_clean_accuracy": metrics.get("val_clean_accuracy"),
                     "val_robust_accuracy": metrics.get("val_robust_accuracy"),
                     "seconds": metrics.get("time_total_s"),
                     "error": failure_reason(result.error) if result.error else None})
    summary = {"trials": len(rows), "errors": sum(r["error"] is not None for r in rows),
               "trial_seconds": sum(r["seconds"] or 0.0 for r in rows), "results": rows}
    if wall_seconds is not None:
        summary["wall_seconds"] = wall_seconds
    return summary


def main(spec: SweepSpec, description: str, argv: list[str] | None = None,
         smoke_base: dict[str, Any] | None = None, prog: str | None = None) -> int:
    args = parse_args(description, argv, prog)
    from sweeps.cluster import connect
    from sweeps.runner import run_sweep

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("sweeps").addHandler(handler)
    logging.getLogger("sweeps").setLevel(logging.INFO)
    spec = spec_from_args(spec, args, smoke_base)
    resolved = spec.resolved()
    print(f"sweep {resolved.name}: {resolved.num_samples} trials of {resolved.config.defense} on "
          f"{resolved.config.model}/{resolved.config.dataset}; results in "
          f"{resolved.storage_path}, tracking {resolved.tracking_uri}", file=sys.stderr)
    if args.address:
        connect(args.address)
    start = time.perf_counter()
    results = run_sweep(spec, resume=args.resume)
    print(json.dumps(summarize(results, time.perf_counter() - start)))
    return 0


def run_study(study: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the study named (or stored at) ``study`` with the command line's flags."""
    from sweeps.study import StudyError, load_study

    try:
        loaded = load_study(study)
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
