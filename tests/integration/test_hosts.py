"""Sweeps and the evaluation pool across three hosts (network namespaces) on shared services:
PostgreSQL (MLflow's backend store, the Optuna storage), an S3 object store (Ray Tune's
storage, MLflow's artifacts) and the MLflow server, all on the head host, reached by address.

The head runs the Ray head (no CPUs for trials) and the drivers; trials run on the two worker
hosts. Faults: a worker's network cut mid-trial and restored, a worker's processes killed,
PostgreSQL restarted mid-sweep, the object store down for 30 s, the MLflow server down for
60 s, the pool killed and restarted,
two pools at once; then the leaderboard and the report read it all from a worker host. After
each sweep fault, every check of ``assert_sweep_consistent`` (exactly the trials
asked for in Ray, Optuna and MLflow, each epoch logged once, checkpoints there) runs on the
head, as a client of the services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import BIN, kill_group
from tests.integration.hosts import (
    HostRay,
    Hosts,
    PrerequisiteMissing,
    SharedServices,
    wait_until,
)

pytestmark = pytest.mark.integration
REQUIRED = os.environ.get("ROBUST_SWEEPS_REQUIRE_HOSTS") == "1"


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts = Hosts()
        try:
            self.head = self.hosts["head"]
            self.services = SharedServices(self.head, root / "services")
            self.services.start()
            env = self.services.client_env
            self.ray_head = HostRay(self.head, root / "ray", cpus=0, env=env)
            self.ray_head.wait_for_nodes(1)
            self.workers = {}
            for count, name in enumerate(("w1", "w2"), start=2):  # one at a time: 2 cores
                self.workers[name] = self.join(name)
                self.ray_head.wait_for_nodes(count)
        except BaseException:
            self.close()
            raise

    def rejoin(self, name: str) -> None:
        """Host ``name`` back in the cluster after a fault took its node away."""
        self.workers[name].stop()
        self.workers[name] = self.join(name)
        self.ray_head.wait_for_nodes(3)

    def join(self, name: str) -> HostRay:
        """A Ray worker node on host ``name``, joined to the head."""
        return HostRay(self.hosts[name], self.root / "ray", cpus=1, head=self.head,
                       env=self.services.client_env)

    @property
    def flags(self) -> list[str]:
        s = self.services
        return ["--address", self.ray_head.address, "--tracking-uri", s.tracking_uri,
                "--optuna-storage", s.optuna_storage, "--storage", s.storage]

    def sweep(self, name: str, log: Path, *extra: str):
        """A smoke sweep driven from the head host, as a cluster user would start it."""
        args = [str(BIN / "robust-sweeps"), "sweep", "emr_wrn", "--smoke", "--name", name,
                *self.flags, *extra]
        return self.head.spawn(args, log, env={"ROBUST_SWEEPS_HOME": str(self.root / name),
                                               **self.services.client_env})

    def check(self, name: str, log: Path, num_samples: int) -> dict:
        """``assert_sweep_consistent`` on the head, as a client of the shared services."""
        s = self.services
        code = ("from pathlib import Path; import json\n"
                "from tests.integration.cluster import assert_sweep_consistent, summary_of\n"
                f"summary = summary_of(Path({str(log)!r}))\n"
                f"assert_sweep_consistent(summary, {s.tracking_uri!r}, {s.optuna_storage!r}, "
                f"{name!r}, {num_samples})\n"
                "print(json.dumps(summary))")
        return json.loads(self.head.python(code, env=s.client_env).strip().splitlines()[-1])

    def ask(self, function: str, *args: Any) -> Any:
        """``tests.integration.queries.<function>(*args)`` run on the head, its JSON result."""
        code = ("import json, sys; from tests.integration import queries\n"
                f"print(json.dumps(queries.{function}(*json.loads(sys.argv[1]))))")
        result = self.head.run([str(BIN / "python"), "-c", code, json.dumps(args)],
                               env=self.services.client_env, check=False)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        return json.loads(result.stdout.strip().splitlines()[-1])

    def pool(self, host: str, log: Path, *, leaderboard: str, pool_id: str, state: str,
             attacks: tuple[str, ...]):
        """``robust-sweeps pool`` on host ``host`` against the cluster and the services."""
        s = self.services
        args = [str(BIN / "robust-sweeps"), "pool", "--tracking-uri", s.tracking_uri,
                "--address", self.ray_head.address, "--experiments", "sweeps",
                "--leaderboard", leaderboard, "--pool-id", pool_id,
                "--state-dir", str(self.root / state), "--attacks", *attacks,
                "--n-examples", "64", "--shard-size", "16", "--settle-seconds", "2",
                "--evaluators", "1", "--mode", "full"]  # (shard, attack) units, as counted
        return self.hosts[host].spawn(args, log, env={**s.client_env, "OMP_NUM_THREADS": "1"})

    def trial_nodes(self, name: str) -> set[str]:
        """The node addresses the sweep's trials reported from (Ray Tune's ``node_ip``)."""
        code = ("import json, pyarrow.fs as pf\n"
                f"fs, path = pf.FileSystem.from_uri({self.services.storage + '/' + name!r})\n"
                "found = fs.get_file_info(pf.FileSelector(path, recursive=True))\n"
                "ips = set()\n"
                "for info in found:\n"
                "    if info.path.endswith('/result.json'):\n"
                "        with fs.open_input_stream(info.path) as f:\n"
                "            ips |= {json.loads(l)['node_ip'] for l in f.read().decode()"
                ".splitlines() if l.strip()}\n"
                "print(json.dumps(sorted(ips)))")
        out = self.head.python(code, env=self.services.client_env)
        return set(json.loads(out.strip().splitlines()[-1]))

    def close(self) -> None:
        for worker in getattr(self, "workers", {}).values():
            worker.stop()
        if getattr(self, "ray_head", None) is not None:
            self.ray_head.stop()
        if getattr(self, "services", None) is not None:
            self.services.stop()
        self.hosts.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    try:
        built = Cluster(tmp_path_factory.mktemp("hosts"))
    except PrerequisiteMissing as error:
        if REQUIRED:
            raise
        pytest.skip(f"no multi-host cluster here: {error}")
    yield built
    built.close()


# Long enough that a fault lands mid-trial: one trial per worker, ~10 s an epoch, no ASHA (a
# trial stopped early on a lost host would leave nothing to resume).
FAULT_SWEEP = ["--samples", "2", "--epochs", "5", "--set", "train_subset=20000",
               "--no-early-stopping"]


def epochs_logged(cluster: Cluster, name: str) -> int:
    """Epochs the sweep's trials have logged to MLflow so far (asked from the head)."""
    code = ("from tests.integration.cluster import trial_runs\n"
            f"client, runs = trial_runs({cluster.services.tracking_uri!r})\n"
            f"runs = [r for r in runs if r.data.tags.get('sweep') == {name!r}]\n"
            "print(sum(len(client.get_metric_history(r.info.run_id, 'val_robust_accuracy'))"
            " for r in runs))")
    try:
        return int(cluster.head.python(code, env=cluster.services.client_env, timeout=60)
                   .strip().splitlines()[-1])
    except (RuntimeError, ValueError, subprocess.TimeoutExpired):
        return 0  # the server may be the thing that is down


def sweep_through(cluster: Cluster, name: str, fault, *, epochs_before: int = 2) -> dict:
    """A sweep across the hosts with ``fault(cluster)`` injected once its trials have logged
    ``epochs_before`` epochs; it must finish with every trial and nothing lost or doubled."""
    log = cluster.root / f"{name}.log"
    driver = cluster.sweep(name, log, *FAULT_SWEEP)
    wait_until(lambda: driver.poll() is not None or epochs_logged(cluster, name) >= epochs_before,
               600, f"{epochs_before} epochs of {name}", poll_s=2)
    assert driver.poll() is None, log.read_text()[-3000:]
    fault(cluster)
    assert driver.wait(timeout=1200) == 0, log.read_text()[-3000:]
    summary = cluster.check(name, log, num_samples=2)
    nodes = cluster.trial_nodes(name)
    assert nodes and nodes <= {cluster.hosts["w1"].address, cluster.hosts["w2"].address}, nodes
    return summary


def test_a_worker_hosts_network_cut_mid_trial_then_restored(cluster):
    def cut(c: Cluster) -> None:
        c.hosts["w1"].cut()
        time.sleep(45)  # past Ray's health checks: the head declares the node dead
        c.hosts["w1"].restore()

    sweep_through(cluster, "netcut", cut)
    cluster.rejoin("w1")


def test_a_worker_hosts_processes_killed_mid_trial(cluster):
    sweep_through(cluster, "killed", lambda c: kill_group(c.workers["w2"].process))
    cluster.rejoin("w2")


def down_for(service: str, seconds: float):
    """A fault: the head's ``service`` (postgres, mlflow) stopped for ``seconds``, then started."""
    def fault(c: Cluster) -> None:
        getattr(c.services, f"stop_{service}")()
        time.sleep(seconds)
        getattr(c.services, f"start_{service}")()

    return fault


def test_postgresql_restarted_mid_sweep(cluster):
    sweep_through(cluster, "pgrestart", down_for("postgres", 5))


def test_the_object_store_down_for_30_s(cluster):
    def outage(c: Cluster) -> None:
        # frozen, not killed: moto keeps its objects in memory, and a store that came back
        # empty would be a lost store, not an outage. Nothing answers for 30 s.
        os.killpg(c.services.s3.pid, signal.SIGSTOP)
        try:
            time.sleep(30)
        finally:
            os.killpg(c.services.s3.pid, signal.SIGCONT)

    sweep_through(cluster, "s3down", outage)


def test_the_mlflow_server_down_for_60_s(cluster):
    sweep_through(cluster, "mlflowdown", down_for("mlflow", 60))


POOL_ATTACKS = ("pgd:steps=20", "square:queries=50")


@pytest.fixture(scope="session")
def pending(cluster) -> list[str]:
    """Published trial runs awaiting evaluation (a smoke sweep publishes some if the sweeps
    above did not run in this session)."""
    if len([r for r in cluster.ask("published", cluster.services.tracking_uri).values()
            if r["status"] == "pending"]) < 2:
        log = cluster.root / "published.log"
        driver = cluster.sweep("published", log, "--samples", "2")
        assert driver.wait(timeout=900) == 0, log.read_text()[-3000:]
    found = cluster.ask("published", cluster.services.tracking_uri)
    return sorted(run for run, r in found.items() if r["status"] == "pending")


def test_two_pools_on_two_hosts_evaluate_each_checkpoint_once(cluster, pending):
    uri = cluster.services.tracking_uri
    pools = [cluster.pool(host, cluster.root / f"pool-{host}.log", leaderboard="lb-two",
                          pool_id=f"two-{host}", state=f"pool-{host}", attacks=POOL_ATTACKS)
             for host in ("head", "w1")]
    for host, process in zip(("head", "w1"), pools, strict=True):
        log = cluster.root / f"pool-{host}.log"
        assert process.wait(timeout=1200) == 0, log.read_text()[-3000:]
    rows = cluster.ask("leaderboard", uri, "lb-two")
    sources = [row["source"] for row in rows]
    assert sorted(sources) == pending, "a checkpoint was evaluated twice or not at all"
    after = cluster.ask("published", uri)
    by_source = {row["source"]: row["run_id"] for row in rows}
    assert all(after[run] == {"status": "done", "result": by_source[run]} for run in pending)
    evaluated = [json.loads(line)["evaluated"]
                 for host in ("head", "w1")
                 for line in (cluster.root / f"pool-{host}.log").read_text().splitlines()
                 if line.startswith('{"')]
    assert sum(evaluated) == len(pending) and all(n >= 0 for n in evaluated), evaluated


def test_a_killed_pool_restarts_without_redoing_units(cluster, pending):
    """Its numbers equal the uninterrupted evaluation of the two pools above."""
    uri = cluster.services.tracking_uri
    reference = {row["source"]: row["metrics"] for row in cluster.ask("leaderboard", uri,
                                                                       "lb-two")}
    if not reference:
        pytest.skip("needs the two-pool evaluation of the same checkpoints")
    cluster.ask("set_pending", uri, pending)
    units = cluster.root / "pool-kill" / "evaluations"
    log = cluster.root / "pool-kill.log"
    first = cluster.pool("head", log, leaderboard="lb-kill", pool_id="kill", state="pool-kill",
                         attacks=POOL_ATTACKS)
    wait_until(lambda: first.poll() is not None or len(list(units.rglob("shard*.json"))) >= 6,
               600, "six finished units", poll_s=0.2)
    assert first.poll() is None, "the pool finished before it could be killed"
    kill_group(first)
    done = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in units.rglob("shard*.json")}
    second = cluster.pool("head", log, leaderboard="lb-kill", pool_id="kill",
                          state="pool-kill", attacks=POOL_ATTACKS)
    assert second.wait(timeout=1200) == 0, log.read_text()[-3000:]
    summary = json.loads([line for line in log.read_text().splitlines()
                          if line.startswith('{"')][-1])
    assert summary["units_reused"] >= len(done), summary
    for path, (mtime, content) in done.items():  # no finished (shard, attack) unit redone
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content, path
    rows = cluster.ask("leaderboard", uri, "lb-kill")
    assert sorted(row["source"] for row in rows) == pending
    def measured(metrics: dict) -> dict:  # every metric but the clocks and the costs
        return {k: v for k, v in metrics.items()
                if not k.endswith(("_seconds", "_hours", "_per_device_hour"))}

    for row in rows:
        assert measured(row["metrics"]) == measured(reference[row["source"]]), row["source"]


def test_the_report_and_leaderboard_read_the_shared_services(cluster, pending):
    """From a worker host, through the flags alone: the leaderboard rows the pools wrote and the
    HTML report with the sweeps' Optuna studies from PostgreSQL."""
    s = cluster.services
    if not cluster.ask("leaderboard", s.tracking_uri, "lb-two"):
        pytest.skip("needs the two-pool evaluation above")
    worker = cluster.hosts["w2"]
    shown = worker.run([str(BIN / "robust-sweeps"), "leaderboard", "--tracking-uri",
                        s.tracking_uri, "--experiment", "lb-two", "--format", "csv"],
                       env=s.client_env)
    assert len(shown.stdout.strip().splitlines()) == 1 + len(pending), shown.stdout
    out = cluster.root / "report"
    made = worker.run([str(BIN / "robust-sweeps"), "report", "--tracking-uri", s.tracking_uri,
                       "--experiment", "lb-two", "--optuna-storage", s.optuna_storage,
                       "--out", str(out)], env=s.client_env)
    assert (out / "index.html").is_file(), made.stdout + made.stderr
    assert str(out / "index.html") in made.stdout
