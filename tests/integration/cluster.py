"""Processes for integration tests: Ray nodes, sweep drivers and an MLflow server, each in its
own process group so that a test stops exactly what it started (never ``ray stop``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# clusters from `ray start` use token authentication; their clients must say so
TOKEN_AUTH = {"RAY_AUTH_MODE": "token"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader: a zombie still counts as a member of its group
            if not _group_alive(process.pid):
                return
            time.sleep(0.2)


def kill_group(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGKILL the process group at once (a preempted machine), then wait until it is gone."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **TOKEN_AUTH, **(env or {})},
                            start_new_session=True)


class RayNode:
    """``ray start`` (head or worker) in a process group of its own."""

    def __init__(self, log_dir: Path, *, cpus: int, head_address: str | None = None,
                 dashboard: bool = False) -> None:
        # Ray's unix sockets live under the temp dir, whose path must stay short (107 bytes)
        temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.temp_dir, self.cpus = temp_dir, cpus
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        args = [str(BIN / "ray"), "start", "--block", f"--num-cpus={cpus}",
                "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        if head_address is None:
            args += ["--head", f"--port={self.gcs_port}", f"--temp-dir={temp_dir}",
                     f"--ray-client-server-port={free_port()}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}",
                     f"--include-dashboard={'true' if dashboard else 'false'}"]
        else:
            args += [f"--address={head_address}"]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(args, log_dir / f"ray-{'head' if head_address is None else 'worker'}"
                                             f"-{self.gcs_port}.log")
        self.address = head_address or f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    def wait_until_up(self, nodes: int, timeout_s: float = 120.0) -> None:
        count = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}")
            try:
                result = subprocess.run([str(BIN / "python"), "-c", count], capture_output=True,
                                        text=True, cwd=ROOT, timeout=60,
                                        env={**os.environ, **TOKEN_AUTH})
            except subprocess.TimeoutExpired:
                continue
            lines = result.stdout.strip().splitlines()
            if result.returncode == 0 and lines and int(lines[-1]) >= nodes:
                return
            time.sleep(2)
        raise TimeoutError(f"Ray at {self.address} did not show {nodes} nodes")

    def stop(self) -> None:
        stop_group(self.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a sqlite store and a local artifact store."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = spawn(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            self.root / f"server-{time.time():.0f}.log")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError("mlflow server did not answer /health")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


# -- what a finished sweep must hold ------------------------------------------------------------
def summary_of(log: Path) -> dict:
    lines = [line for line in log.read_text().splitlines() if line.startswith('{"trials"')]
    assert lines, log.read_text()[-3000:]
    return json.loads(lines[-1])


def trial_runs(tracking_uri: str, experiment: str = "sweeps"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return client, []
    runs = client.search_runs([found.experiment_id], filter_string="tags.kind = 'trial'")
    return client, runs


def finished_optuna_trials(storage: str, study_name: str) -> int:
    try:
        import optuna

        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception:  # not created yet (or the database is mid-creation)
        return 0
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def assert_sweep_consistent(summary: dict, tracking_uri: str, optuna_storage: str, study: str,
                            num_samples: int) -> None:
    """Exactly ``num_samples`` trials in Ray, Optuna (all finished) and MLflow; every run
    holds each epoch of its trial once."""
    assert summary["trials"] == num_samples and summary["errors"] == 0, summary
    client, runs = trial_runs(tracking_uri)
    runs = [r for r in runs if r.data.tags.get("sweep") == study]
    numbers = sorted(r["trial_number"] for r in summary["results"])
    assert numbers == list(range(num_samples))
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == numbers
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    assert not [r for r in runs if "orphaned" in r.data.tags]
    by_number = {int(r.data.tags["trial_number"]): r for r in runs}
    for result in summary["results"]:
        run = by_number[result["trial_number"]]
        steps = [m.step for m in client.get_metric_history(run.info.run_id,
                                                           "val_robust_accuracy")]
        assert sorted(steps) == list(range(1, max(steps) + 1)), (result, steps)
        assert max(steps) >= result["epochs"]
        if run.info.status == "FINISHED":
            files = {a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")}
            assert "best_checkpoint/model.safetensors" in files
    import optuna

    trials = optuna.load_study(study_name=study, storage=optuna_storage).trials
    assert len(trials) == num_samples
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), trials


