"""Kill/resume soak: one sweep whose driver is SIGKILLed again and again, each time resumed.

Every cycle starts the smoke sweep's driver (``--resume`` after the first) and kills it, with
its local Ray cluster, at a moment picked by one of the strategies below, in turn:

* ``random``: a random number of seconds after the driver started;
* ``trial-end``: the moment the Optuna study holds one more finished trial (the study is then
  ahead of Ray Tune's snapshot: the race a resume must survive);
* ``checkpoint``: the moment a new trial checkpoint appears in the Tune storage;
* ``mid-epoch``: half a second after a new checkpoint, while the next epoch trains;
* ``reconcile`` (the last cycle): the moment the driver starts reconciling MLflow after Tune
  has finished.

The first four take turns; every strategy also fires on ``reconcile``, so a sweep that reaches
its end early is still killed there.
After the kills a last ``--resume`` runs the sweep to its end, and the stores are checked:
exactly ``--samples`` trials in Ray, in Optuna (none RUNNING) and in MLflow, no duplicated
trial or epoch, every finished trial's metrics and checkpoint present.

    .venv/bin/python benchmarks/soak_resume.py --cycles 10            # the full soak
    .venv/bin/python benchmarks/soak_resume.py --cycles 3 --samples 4  # CI's short version

The last line is ``soak: K of N kill/resume cycles passed``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tests.integration.cluster import BIN, kill_group, spawn  # noqa: E402

STUDY = "soak"
RECONCILING = "reconciling MLflow"
STRATEGIES = ("random", "trial-end", "checkpoint", "mid-epoch")


@dataclass
class Stores:
    home: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def optuna_storage(self) -> str:
        return f"sqlite:///{self.home / 'optuna.db'}"

    def finished_trials(self) -> int:
        try:
            study = optuna.load_study(study_name=STUDY, storage=self.optuna_storage)
        except Exception:  # not created yet
            return 0
        return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))

    def checkpoints(self) -> int:
        return sum(1 for _ in (self.home / "ray_results" / STUDY).glob("*/checkpoint_*"))


def reconciling(log: Path) -> bool:
    return log.exists() and RECONCILING in log.read_text(errors="replace")


def trigger(strategy: str, stores: Stores, log: Path, rng: random.Random) -> Callable[[], bool]:
    """A condition that turns true at the strategy's moment (or when reconciling starts)."""
    start = time.monotonic()
    finished, checkpoints = stores.finished_trials(), stores.checkpoints()
    delay = rng.uniform(5.0, 45.0)  # from Ray's start-up (≈ 20 s) into training
    seen: dict[str, float] = {}

    def moment() -> bool:
        if strategy == "random":
            return time.monotonic() - start > delay
        if strategy == "trial-end":
            return stores.finished_trials() > finished
        if strategy == "checkpoint":
            return stores.checkpoints() > checkpoints
        if strategy == "mid-epoch":
            if "at" not in seen and stores.checkpoints() > checkpoints:
                seen["at"] = time.monotonic()
            return "at" in seen and time.monotonic() - seen["at"] > 0.5
        return False  # "reconcile": only the common condition below

    return lambda: moment() or reconciling(log)


def check_sweep(summary: dict, stores: Stores, num_samples: int) -> list[str]:
    """What is wrong with the finished sweep's three stores (empty: nothing)."""
    problems = []
    if summary["trials"] != num_samples or summary["errors"]:
        problems.append(f"Ray: {summary['trials']} trials, {summary['errors']} errors")
    numbers = sorted(r["trial_number"] for r in summary["results"])
    if numbers != list(range(num_samples)):
        problems.append(f"Ray: trial numbers {numbers}")
    client = MlflowClient(stores.tracking_uri)
    experiment = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.kind = 'trial' and tags.sweep = '{STUDY}'")
    run_numbers = sorted(int(r.data.tags["trial_number"]) for r in runs)
    if run_numbers != numbers:
        problems.append(f"MLflow: runs for trials {run_numbers}")
    for run in runs:
        number = run.data.tags["trial_number"]
        if run.info.status not in ("FINISHED", "KILLED") or "orphaned" in run.data.tags:
            problems.append(f"MLflow: trial {number} is {run.info.status}")
        steps = [m.step for m in client.get_metric_history(run.info.run_id,
                                                           "val_robust_accuracy")]
        if not steps or sorted(steps) != list(range(1, max(steps) + 1)):
            problems.append(f"MLflow: trial {number} holds epochs {sorted(steps)}")
        result = next((r for r in summary["results"] if str(r["trial_number"]) == number), None)
        if result and steps and max(steps) < result["epochs"]:
            problems.append(f"MLflow: trial {number} lacks epochs after {max(steps)}")
        if run.info.status == "FINISHED" and "best_checkpoint/model.safetensors" not in {
                a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")}:
            problems.append(f"MLflow: trial {number} published no checkpoint")
    trials = optuna.load_study(study_name=STUDY, storage=stores.optuna_storage).trials
    states = [t.state.name for t in trials]
    if len(trials) != num_samples or set(states) != {"COMPLETE"}:
        problems.append(f"Optuna: {len(trials)} trials, states {states}")
    return problems


def count_repairs(log: Path, caught: dict[str, int]) -> None:
    """What the resumed driver found ahead of Tune's snapshot (its ``sweeps.resume`` lines)."""
    text = log.read_text(errors="replace")
    caught["finished ahead"] += text.count("finished before the driver stopped")
    caught["asked ahead"] += text.count("new trials adopt them")
    caught["newer checkpoint"] += text.count("(Tune's snapshot named")


def summary_of(log: Path) -> dict | None:
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if line.startswith('{"trials"')]
    return json.loads(lines[-1]) if lines else None


def soak(args: argparse.Namespace) -> int:
    home = Path(args.home or tempfile.mkdtemp(prefix="soak-"))
    home.mkdir(parents=True, exist_ok=True)
    stores = Stores(home)
    rng = random.Random(args.seed)
    command = [str(BIN / "python"), "sweeps/emr_wrn.py", "--smoke", "--name", STUDY,
               "--samples", str(args.samples), "--epochs", str(args.epochs),
               "--set", f"train_subset={args.train_subset}",
               "--set", f"attack_steps={args.attack_steps}"]
    env = {"ROBUST_SWEEPS_HOME": str(home)}
    print(f"soak: {args.cycles} kills of one {args.samples}-trial sweep; stores in {home}",
          file=sys.stderr)
    caught = {"finished ahead": 0, "asked ahead": 0, "newer checkpoint": 0}
    kills = 0
    for cycle in range(args.cycles + 1):
        log = home / f"driver-{cycle}.log"
        driver = spawn(command + (["--resume"] if cycle else []), log, env)
        if cycle == args.cycles:  # the last run goes to the end
            code = driver.wait(timeout=args.timeout)
            break
        last = cycle == args.cycles - 1
        strategy = "reconcile" if last else STRATEGIES[cycle % len(STRATEGIES)]
        moment = trigger(strategy, stores, log, rng)
        started = time.monotonic()
        while driver.poll() is None and not moment():
            time.sleep(0.05)
        if driver.poll() is not None:
            if driver.returncode:
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
                print(f"soak: {max(cycle - 1, 0)} of {args.cycles} kill/resume cycles passed "
                      f"(run {cycle + 1} failed)")
            else:
                print(f"soak: the sweep ended after {cycle} kills, before the next; give it more "
                      "work (--samples, --epochs, --train-subset)")
            return 1
        kill_group(driver)
        kills += 1
        count_repairs(log, caught)
        print(f"cycle {cycle + 1}: killed at '{strategy}' after {time.monotonic() - started:.1f}"
              f" s; Optuna finished {stores.finished_trials()}, checkpoints {stores.checkpoints()}",
              file=sys.stderr)
    text = log.read_text(errors="replace")
    count_repairs(log, caught)
    summary = summary_of(log)
    if code != 0 or summary is None:
        print(text[-3000:], file=sys.stderr)
        print(f"soak: 0 of {args.cycles} kill/resume cycles passed (the last resume failed)")
        return 1
    problems = check_sweep(summary, stores, args.samples)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(json.dumps({"kills": kills, "resumes_that_met": caught, "problems": problems,
                      "trials": summary["trials"]}))
    passed = kills if not problems else 0
    print(f"soak: {passed} of {args.cycles} kill/resume cycles passed")
    return 0 if passed == args.cycles else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=10, help="kills, each followed by resume")
    parser.add_argument("--samples", type=int, default=12, help="trials in the sweep")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-subset", type=int, default=12000)
    parser.add_argument("--attack-steps", type=int, default=10, help="PGD steps in training")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random kill delays")
    parser.add_argument("--home", help="stores' folder (default: a new temporary one)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="the last resume's limit")
    return soak(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
