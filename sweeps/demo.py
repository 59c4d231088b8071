"""The whole service in one command, on this machine: sweeps → evaluation pool → leaderboard.

1. starts a local Ray cluster (2 CPUs);
2. runs a sweep per defense on real MNIST (a 2 × 256 MLP on 20,000 training images, 4 trials
   of 4 epochs, Optuna TPE and ASHA): PGD-AT and TRADES as baselines, EMR as the method under
   test — sized so every defense reaches MNIST-like clean accuracy (≥ 90 %) in seconds;
3. runs the evaluation pool on each sweep's best finished checkpoint: AutoAttack (standard) on
   the first ``--n-examples`` test points, PGD-100 (CE and CW), Square and a light SPSA, the
   AutoAttack accuracy at two larger radii (0.2, 0.3), and the effective / average margins;
4. writes the leaderboard to the embedded sqlite MLflow store and renders the HTML report;
5. prints where the report is and the command that opens the MLflow UI, and stops the cluster.

    .venv/bin/python sweeps/demo.py            # README's first command runs this
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a Ray job

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".robust-sweeps-demo"
DEFENSES = ("pgd_at", "trades", "emr")
POOL_ATTACKS = ("aa-standard", "pgd-100-ce", "pgd-100-cw", "square:queries=1000", "spsa-light")
# Over the smoke settings: a model and data size at which the MNIST numbers look like MNIST.
DEMO_BASE = {"model_params": {"hidden": 256, "layers": 2}, "train_subset": 20000}


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fresh_home(path: Path) -> Path:
    """The demo's own folder, emptied if a previous demo made it (never anything else)."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise SystemExit(f"{path} exists and was not made by the demo; choose --home")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by sweeps/demo.py; removed by the next demo run\n")
    return path


def quiet_libraries() -> None:
    """Only warnings from MLflow's and Optuna's loggers, no experimental-API notices: the
    demo's own lines are the story."""
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_sweeps(defenses, samples: int, epochs: int) -> list[dict]:
    from sweeps.cli import SMOKE_BASE, summarize
    from sweeps.runner import run_sweep
    from sweeps.spec import SweepSpec
    from trainables.config import merge

    summaries = []
    for defense in defenses:
        spec = SweepSpec(name=f"demo-{defense}", base=merge(merge(SMOKE_BASE, DEMO_BASE), {
            "defense": defense, "epochs": epochs}), num_samples=samples, max_concurrent=2,
            cpus_per_trial=1.0, grace_period=1, reduction_factor=2)
        started = time.perf_counter()
        summary = summarize(run_sweep(spec), time.perf_counter() - started)
        best = max((r["val_robust_accuracy"] or 0.0 for r in summary["results"]), default=0.0)
        say(f"sweep {spec.name}: {summary['trials']} trials, {summary['errors']} errors, best "
            f"val robust accuracy {best:.1%}, {summary['wall_seconds']:.0f} s")
        summaries.append({"sweep": spec.name, **summary})
    return summaries


def run_pool(sweeps: list[str], top_k: int, n_examples: int) -> None:
    from attacks.pool_cli import main as pool_main

    for sweep in sweeps:
        say(f"evaluation pool on the {top_k} best checkpoints of {sweep}")
        # full mode: the demo's leaderboard shows every attack's own column
        pool_main(["--sweep", sweep, "--top-k", str(top_k), "--attacks", *POOL_ATTACKS,
                   "--mode", "full",
                   "--n-examples", str(n_examples), "--shard-size", str(max(1, n_examples // 2)),
                   "--evaluators", "2", "--epsilon-curve", "0.2", "0.3", "--margins",
                   "--settle-seconds", "0.2"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=ROOT / "demo-results",
                        help="where the demo keeps everything (emptied first)")
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES))
    parser.add_argument("--samples", type=int, default=4, help="trials per sweep")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=1, help="checkpoints evaluated per sweep")
    parser.add_argument("--n-examples", type=int, default=300, help="test points evaluated")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    home = fresh_home(args.home.resolve())
    os.environ["ROBUST_SWEEPS_HOME"] = str(home)
    import ray

    from dashboards.leaderboard import load, to_markdown
    from dashboards.report import render
    from dashboards.runs import default_tracking_uri
    from sweeps.environment import default_optuna_storage

    quiet_libraries()
    say(f"starting a local Ray cluster (2 CPUs); everything goes to {home}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        summaries = run_sweeps(args.defenses, args.samples, args.epochs)
        run_pool([s["sweep"] for s in summaries], args.top_k, args.n_examples)
    finally:
        ray.shutdown()
        say("stopped the Ray cluster")
    uri = default_tracking_uri(home)
    index = render(uri, home / "report", optuna_storage=default_optuna_storage(home),
                   title="Demo leaderboard: PGD-AT, TRADES and EMR on MNIST")
    board = to_markdown(load(uri))
    (home / "leaderboard.md").write_text(board)
    minutes = (time.perf_counter() - started) / 60
    print(board)
    print(f"Report: {index}")
    from mlflow.tracking import MlflowClient

    board_id = MlflowClient(uri).get_experiment_by_name("leaderboard").experiment_id
    print(f"MLflow UI: {ROOT / '.venv' / 'bin' / 'mlflow'} ui --backend-store-uri {uri} "
          f"--host 127.0.0.1 --port 5000   then open "
          f"http://127.0.0.1:5000/#/experiments/{board_id}/runs")
    print(json.dumps({"minutes": round(minutes, 1), "report": str(index),
                      "sweeps": [{k: s[k] for k in ("sweep", "trials", "errors")}
                                 for s in summaries]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
