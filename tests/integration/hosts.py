"""A small cluster of hosts on this machine, built from Linux network namespaces.

``Hosts`` creates one namespace per host (``head``, ``w1``, ``w2``) and a switch namespace
holding a bridge; each host reaches the switch over a veth pair and owns one address of the
documentation range 198.51.100.0/24 (the head is .1). Every address lives inside a namespace
the harness created, nothing crosses hosts over 127.0.0.1, and ``close`` stops exactly the
processes it started and removes the namespaces (which removes their links).

``SharedServices`` runs on the head host what a real cluster shares: PostgreSQL (a temporary
data directory, trust authentication inside the private network) holding the MLflow backend
store and the Optuna storage, an S3-compatible object store (moto's standalone server) holding
Ray Tune's storage and the MLflow server's artifacts, and the MLflow tracking server. Clients
reach them only by address, as a cluster user would: ``http://198.51.100.1:5000``,
``postgresql://…@198.51.100.1:5432/optuna``, ``s3://robust-sweeps/…``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.cluster import BIN, ROOT, TOKEN_AUTH, stop_group

SUBNET = "198.51.100"
BUCKET = "robust-sweeps"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


class PrerequisiteMissing(RuntimeError):
    """This machine cannot build the hosts (not root, no ip netns, no PostgreSQL)."""


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise PrerequisiteMissing("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(found[-1]).parent


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise PrerequisiteMissing("network namespaces need root")
    if shutil.which("ip") is None:
        raise PrerequisiteMissing("iproute2's ip is missing")
    postgres_bin()
    try:
        subprocess.run(["id", "postgres"], check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        raise PrerequisiteMissing("no postgres user (apt-get install postgresql)") from error


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Host:
    def __init__(self, name: str, namespace: str, address: str, port: str, switch: str) -> None:
        self.name, self.namespace, self.address, self.port = name, namespace, address, port
        self.switch = switch  # the namespace holding the bridge this host's port is on
        self.processes: list[subprocess.Popen] = []

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *args]

    def spawn(self, args: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        """``args`` on this host, in a process group of its own, output to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(self.command(args), cwd=ROOT, stdout=open(log, "a"),
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **TOKEN_AUTH, **(env or {})})
        self.processes.append(process)
        return process

    def run(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(args), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, check=check,
                              env={**os.environ, **TOKEN_AUTH, **(env or {})})

    def python(self, code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
        """Run ``code`` with the project's interpreter on this host; its stdout."""
        result = self.run([str(BIN / "python"), "-c", code], env=env, timeout=timeout,
                          check=False)
        if result.returncode != 0:
            raise RuntimeError(f"on {self.name}: {result.stderr[-3000:]}")
        return result.stdout

    def cut(self) -> None:
        """The host's network cable pulled: its switch port goes down."""
        ip("-n", self.switch, "link", "set", self.port, "down")

    def restore(self) -> None:
        ip("-n", self.switch, "link", "set", self.port, "up")


class Hosts:
    """``head`` (198.51.100.1), ``w1`` (.2), ``w2`` (.3) on one switch."""

    def __init__(self, names: tuple[str, ...] = ("head", "w1", "w2")) -> None:
        check_prerequisites()
        tag = f"rs{os.getpid() % 100000}"
        self.switch = f"{tag}-net"
        self.hosts: dict[str, Host] = {}
        ip("netns", "add", self.switch)
        try:
            ip("-n", self.switch, "link", "set", "lo", "up")
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for number, name in enumerate(names, start=1):
                namespace, port = f"{tag}-{name}", f"p-{name}"
                ip("netns", "add", namespace)
                ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
                   "eth0", "netns", namespace)
                ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
                ip("-n", namespace, "link", "set", "lo", "up")
                ip("-n", namespace, "addr", "add", f"{SUBNET}.{number}/24", "dev", "eth0")
                ip("-n", namespace, "link", "set", "eth0", "up")
                self.hosts[name] = Host(name, namespace, f"{SUBNET}.{number}", port,
                                        self.switch)
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def close(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                stop_group(process)
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - a service still starting answers with errors
            value = None
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s")


class SharedServices:
    """PostgreSQL, the object store and the MLflow server on ``host`` (the head)."""

    PG_PORT, S3_PORT, MLFLOW_PORT = 5432, 9000, 5000

    def __init__(self, host: Host, root: Path) -> None:
        self.host, self.root = host, root
        self.pg_data = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
        self.pg_socket = Path(tempfile.mkdtemp(prefix="pgs", dir="/tmp"))
        self.postgres: subprocess.Popen | None = None
        self.s3: subprocess.Popen | None = None
        self.mlflow: subprocess.Popen | None = None
        a = host.address
        self.s3_endpoint = f"http://{a}:{self.S3_PORT}"
        self.tracking_uri = f"http://{a}:{self.MLFLOW_PORT}"
        self.optuna_storage = f"postgresql://postgres@{a}:{self.PG_PORT}/optuna"
        self.mlflow_store = f"postgresql://postgres@{a}:{self.PG_PORT}/mlflow"
        self.storage = f"s3://{BUCKET}/ray"

    # -- what every client on the cluster needs in its environment -----------------------
    @property
    def client_env(self) -> dict[str, str]:
        return {**S3_KEYS, "AWS_ENDPOINT_URL": self.s3_endpoint,
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint}

    # -- PostgreSQL -------------------------------------------------------------------------
    def start_postgres(self) -> None:
        pg = postgres_bin()
        if not (self.pg_data / "PG_VERSION").exists():
            shutil.chown(self.pg_data, "postgres")
            subprocess.run(["runuser", "-u", "postgres", "--", str(pg / "initdb"), "-D",
                            str(self.pg_data), "--auth=trust", "-U", "postgres"],
                           check=True, capture_output=True)
            with open(self.pg_data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {SUBNET}.0/24 trust\n")
        shutil.chown(self.pg_socket, "postgres")
        self.postgres = self.host.spawn(
            ["runuser", "-u", "postgres", "--", str(pg / "postgres"), "-D", str(self.pg_data),
             "-c", f"listen_addresses={self.host.address}", "-c", f"port={self.PG_PORT}",
             "-c", f"unix_socket_directories={self.pg_socket}", "-c", "max_connections=200",
             "-c", "fsync=off"],
            self.root / "postgres.log")
        wait_until(lambda: self.host.run(
            [str(pg / "pg_isready"), "-h", self.host.address, "-p", str(self.PG_PORT)],
            check=False).returncode == 0, 60, "PostgreSQL accepts connections")

    def create_databases(self) -> None:
        pg = postgres_bin()
        for name in ("mlflow", "optuna"):
            self.host.run([str(pg / "createdb"), "-h", self.host.address, "-p",
                           str(self.PG_PORT), "-U", "postgres", name])

    def stop_postgres(self) -> None:
        if self.postgres is not None:
            stop_group(self.postgres)
            self.postgres = None

    # -- the object store -----------------------------------------------------------------
    def start_s3(self) -> None:
        self.s3 = self.host.spawn([str(BIN / "moto_server"), "-H", self.host.address, "-p",
                                   str(self.S3_PORT)], self.root / "s3.log", env=S3_KEYS)
        wait_until(lambda: self.host.run(
            ["curl", "-sf", "-o", "/dev/null", f"{self.s3_endpoint}/moto-api/"],
            check=False).returncode == 0, 60, "the object store answers")

    def create_bucket(self) -> None:
        self.host.python(f"import boto3; boto3.client('s3').create_bucket(Bucket='{BUCKET}')",
                         env=self.client_env)

    def stop_s3(self) -> None:
        if self.s3 is not None:
            stop_group(self.s3)
            self.s3 = None

    # -- the MLflow tracking server -----------------------------------------------------------
    def start_mlflow(self) -> None:
        self.mlflow = self.host.spawn(
            [str(BIN / "mlflow"), "server", "--host", self.host.address, "--port",
             str(self.MLFLOW_PORT), "--backend-store-uri", self.mlflow_store,
             "--artifacts-destination", f"s3://{BUCKET}/mlartifacts", "--workers", "1",
             "--allowed-hosts", f"{self.host.address}:{self.MLFLOW_PORT}"],
            self.root / "mlflow.log", env=self.client_env)
        wait_until(lambda: self.host.run(
            ["curl", "-sf", "-o", "/dev/null", f"{self.tracking_uri}/health"],
            check=False).returncode == 0, 180, "the MLflow server answers /health", poll_s=2)

    def stop_mlflow(self) -> None:
        if self.mlflow is not None:
            stop_group(self.mlflow)
            self.mlflow = None

    # -- all of it ----------------------------------------------------------------------------
    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_postgres()
        self.create_databases()
        self.start_s3()
        self.create_bucket()
        self.start_mlflow()

    def stop(self) -> None:
        self.stop_mlflow()
        self.stop_s3()
        self.stop_postgres()
        shutil.rmtree(self.pg_data, ignore_errors=True)
        shutil.rmtree(self.pg_socket, ignore_errors=True)


# A node that stops answering is declared dead after ~10 to 20 s instead of about a minute, so
# that a network cut longer than that is a lost node (its trials resume elsewhere) in test time.
HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                 "RAY_health_check_failure_threshold": "10"}


class HostRay:
    """A Ray node on a host: the head (GCS on the head's address) or a worker joining it."""

    PORT = 6379

    def __init__(self, host: Host, log_dir: Path, *, cpus: int, head: Host | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.host, self.head = host, head or host
        self.address = f"{self.head.address}:{self.PORT}"
        args = [str(BIN / "ray"), "start", "--block", f"--num-cpus={cpus}",
                f"--node-ip-address={host.address}", "--disable-usage-stats"]
        if head is None:
            self.temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
            args += ["--head", f"--port={self.PORT}", f"--temp-dir={self.temp_dir}",
                     "--include-dashboard=false"]
            env = {**HEALTH_CHECKS, **(env or {})}
        else:
            self.temp_dir = None
            args += [f"--address={self.address}"]
        self.process = host.spawn(args, log_dir / f"ray-{host.name}.log", env=env)

    def alive_nodes(self) -> int:
        code = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        return int(self.head.python(code, timeout=90).strip().splitlines()[-1])

    def wait_for_nodes(self, nodes: int, timeout_s: float = 180) -> None:
        wait_until(lambda: self.alive_nodes() >= nodes, timeout_s,
                   f"{nodes} Ray nodes alive", poll_s=3)

    def stop(self) -> None:
        stop_group(self.process)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
