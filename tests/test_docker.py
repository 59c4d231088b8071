"""The GPU image and the compose cluster, checked without a Docker engine: hadolint, the
compose-spec schema, versions against requirements.lock, and every command the image, compose and
the RayJobs run, parsed by the project's own command line (a broken entrypoint fails here)."""

from __future__ import annotations

import configparser
import copy
import hashlib
import json
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
from deployment import (
    BIN,
    COMPOSE_SPEC_SHA256,
    DOCKER,
    ENTRYPOINTS,
    K8S_SECRET_VALUES,
    MANIFESTS,
    ROOT,
    cluster_spec,
    compose,
    dockerfile,
    entrypoint,
    env_example,
    manifest,
    parse,
    pins,
    pod_templates,
    project_argv,
    run_help,
)


# ------------------------------------------------------------------ the image
def test_hadolint_passes_the_dockerfile_and_flags_a_bad_one(tmp_path):
    result = subprocess.run([BIN / "hadolint", DOCKER / "Dockerfile"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = subprocess.run([BIN / "hadolint", bad], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_image_ray_python_and_packages_are_the_locks():
    from packaging.specifiers import SpecifierSet

    lock = pins(ROOT / "requirements.lock")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    froms = [args for kind, args in dockerfile() if kind == "FROM"]
    base = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-gpu", froms[-1])
    assert base, f"the image builds on a Ray GPU image, not {froms[-1]}"
    ray_version, python = base.group(1), f"3.{base.group(2)}"
    assert ray_version == lock["ray"] == "2.60.0"
    supported = SpecifierSet(pyproject["project"]["requires-python"])
    assert python == "3.11" and f"{python}.0" in supported and "3.12.0" not in supported
    runs = " ".join(args for kind, args in dockerfile() if kind == "RUN")
    assert f"uv venv --python {python} " in runs
    # the lock pins every runtime dependency; the image installs those at the lock's versions
    dependencies = pyproject["project"]["dependencies"]
    names = {re.split(r"[\[=<>~! ]", dep)[0].lower() for dep in dependencies}
    assert names <= set(lock)
    assert "--constraint requirements.lock" in runs and "--requirement pyproject.toml" in runs
    for name, version in re.findall(r"([A-Za-z0-9_.\-]+)==([\w.]+)", runs):
        assert lock.get(name.lower()) == version, f"{name}=={version} differs from the lock"
    cluster = pins(DOCKER / "requirements-cluster.txt")
    assert {"psycopg2-binary", "boto3"} <= set(cluster)
    assert {name: v for name, v in cluster.items() if lock.get(name, v) != v} == {}
    # torch is the lock's CUDA build, with the same pins as scripts/setup.sh
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert f"torch=={lock['torch']} torchvision=={lock['torchvision']}" in setup
    lock_text = (ROOT / "requirements.lock").read_text()
    cuda = re.search(r"^cuda-toolkit==\S+\n((?:\s+#.*\n)+)", lock_text, re.M)
    assert cuda and "torch" in cuda.group(1) and "nvidia-cudnn-cu13" in lock
    uv = re.fullmatch(r"ghcr\.io/astral-sh/uv:(\S+) AS uv", froms[0])
    assert uv and f'UV_PIN="uv=={uv.group(1)}"' in setup
    # the same image (the project's version) and Ray everywhere
    version = pyproject["project"]["version"]
    assert compose()["x-image"]["image"] == f"robust-sweeps:{version}"
    for name in MANIFESTS:
        doc = manifest(name)
        for template in pod_templates(doc).values():
            for container in template["spec"]["containers"]:
                assert container["image"].endswith(f"/robust-sweeps:{version}"), name
        if (spec := cluster_spec(doc)) is not None:
            assert spec["rayVersion"] == ray_version


def test_image_runs_as_a_non_root_user_and_carries_no_secrets():
    instructions = dockerfile()
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any("gpasswd --delete ray sudo" in args for kind, args in instructions if kind == "RUN")
    for kind, args in instructions:
        if kind in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|TOKEN|SECRET|ACCESS_KEY)", args, re.I), args
    ignored = set((DOCKER / "Dockerfile.dockerignore").read_text().split())
    assert {".git", ".venv", "**/.env", "docker/.env", "mlruns", "*.db"} <= ignored
    assert "docker/.env" in (ROOT / ".gitignore").read_text().split()


# ------------------------------------------------------------------ compose
def test_compose_file_validates_against_the_compose_spec():
    schema_bytes = (DOCKER / "schemas" / "compose-spec.json").read_bytes()
    assert hashlib.sha256(schema_bytes).hexdigest() == COMPOSE_SPEC_SHA256
    validator = jsonschema.Draft202012Validator(json.loads(schema_bytes))
    document = compose()
    assert [e.message for e in validator.iter_errors(document)] == []
    broken = copy.deepcopy(document)
    broken["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["gpu"] = 1
    assert list(validator.iter_errors(broken))
    # every secret is required from the env file, which names them all
    variables = set(re.findall(r"\$\{(\w+)", (DOCKER / "compose.yaml").read_text()))
    assert variables <= set(env_example())
    for secret in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN", "MLFLOW_ADMIN_PASSWORD",
                   "MLFLOW_FLASK_SECRET_KEY"):
        with pytest.raises(KeyError, match=secret):
            compose({k: v for k, v in env_example().items() if k != secret})


def test_compose_cluster_services():
    from mlflow.cli import cli as mlflow_cli
    from ray.scripts.scripts import cli as ray_cli

    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert not service.get("privileged") and service.get("network_mode") != "host"
    assert "ports" not in services["postgres"]
    head = ray_cli.commands["start"].make_context("start", services["ray-head"]["command"][2:])
    worker = ray_cli.commands["start"].make_context("start", services["ray-worker"]["command"][2:])
    assert head.params["head"] and head.params["block"] and head.params["num_gpus"] == 0
    assert worker.params["address"] == f"ray-head:{head.params['port']}"
    probe = services["ray-head"]["healthcheck"]["test"]
    check = ray_cli.commands["health-check"].make_context("health-check", probe[3:])
    assert probe[1:3] == ["ray", "health-check"]
    assert check.params["address"] == f"127.0.0.1:{head.params['port']}"
    for name in ("ray-worker", "sweep", "pool"):
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    for name in ("ray-head", "ray-worker", "sweep", "pool"):
        environment = services[name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token"
        assert environment["RAY_AUTH_TOKEN"] == env_example()["RAY_AUTH_TOKEN"]
    for name in ("ray-head", "ray-worker"):  # Tune's storage path is shared by every node
        volumes = set(services[name]["volumes"])
        assert {"data:/home/ray/data", "storage:/home/ray/storage"} <= volumes
    # MLflow on PostgreSQL with a proxied artifact store; Optuna in the same PostgreSQL
    mlflow = services["mlflow"]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in mlflow["environment"].items():
            patch.setenv(key, value)
        server = mlflow_cli.commands["server"].make_context("server", mlflow["command"][2:])
    store = server.params["backend_store_uri"]
    assert re.fullmatch(r"postgresql://[^:]+:[^@]+@postgres:5432/mlflow", store)
    assert server.params["serve_artifacts"] and server.params["artifacts_destination"]
    assert "mlflow:5000" in server.params["allowed_hosts"].split(",")
    assert "mlartifacts:" + server.params["artifacts_destination"] in mlflow["volumes"]
    # MLflow's login: the admin the cluster's clients log in as, its user store on a volume
    assert server.params["app_name"] == "basic-auth"
    auth = configparser.ConfigParser()
    auth.read(DOCKER / "mlflow-auth.ini")
    assert f"./mlflow-auth.ini:{mlflow['environment']['MLFLOW_AUTH_CONFIG_PATH']}:ro" in mlflow[
        "volumes"]
    store_dir = Path(auth["mlflow"]["database_uri"].removeprefix("sqlite:///")).parent
    assert f"mlflow-auth:{store_dir}" in mlflow["volumes"]
    assert "admin_password" not in auth["mlflow"]
    for name in ("ray-head", "ray-worker", "sweep", "pool", "report"):
        environment = services[name]["environment"]
        assert environment["MLFLOW_TRACKING_USERNAME"] == auth["mlflow"]["admin_username"]
        assert environment["MLFLOW_TRACKING_PASSWORD"] == mlflow["environment"][
            "MLFLOW_AUTH_ADMIN_PASSWORD"]
    optuna = services["ray-head"]["environment"]["OPTUNA_STORAGE"]
    assert optuna == store.rsplit("/", 1)[0] + "/optuna"
    assert "CREATE DATABASE optuna;" in (DOCKER / "postgres-init.sql").read_text()


# ------------------------------------------------------------------ the commands they run
def test_every_command_source_is_exercised():
    jobs = {f"compose {name}" for name, service in compose()["services"].items()
            if "jobs" in service.get("profiles", [])}
    rayjobs = {name for name in MANIFESTS if manifest(name)["kind"] == "RayJob"}
    assert jobs | rayjobs | {"Dockerfile CMD"} == set(ENTRYPOINTS)


@pytest.mark.parametrize("source", ENTRYPOINTS)
def test_entrypoint_parses_with_the_projects_command_line(source, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_SWEEPS_HOME", str(tmp_path))
    monkeypatch.chdir(ROOT)
    parsed = parse(entrypoint(source), monkeypatch)
    if source == "Dockerfile CMD":  # alone, the image runs the CPU smoke sweep
        assert parsed["kind"] == "sweep" and parsed["gpus"] == 0 and parsed["defense"] == "emr"
        return
    # on a cluster every command talks to the shared services, never to files on one node
    assert re.fullmatch(r"https?://[\w.\-]+:\d+", parsed["tracking_uri"])
    if source.startswith("compose"):
        assert parsed["tracking_uri"] == "http://mlflow:5000"
    else:
        assert parsed["tracking_uri"] == K8S_SECRET_VALUES["MLFLOW_TRACKING_URI"]
    if parsed["kind"] in ("sweep", "report"):
        assert parsed["optuna_storage"].startswith("postgresql://")
    if parsed["kind"] == "sweep":
        assert parsed["gpus"] == 1.0 and parsed["defense"] == "emr"
        shared = "/home/ray/storage/" if source.startswith("compose") else "s3://"
        assert parsed["storage"].startswith(shared)
    if parsed["kind"] == "pool":
        assert parsed["gpus"] > 0 and parsed["watch"]
    if parsed["kind"] == "report":
        assert str(parsed["out"]).startswith("/home/ray/storage/")


@pytest.mark.parametrize("source", ENTRYPOINTS)
def test_entrypoint_resolves_as_python_runs_it(source, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = entrypoint(source)
    prog = argv[2] if argv[1] == "-m" else argv[1]
    out = run_help(argv, monkeypatch, capsys)
    assert out.startswith("usage:") and "--tracking-uri" in out, prog


def test_a_broken_entrypoint_is_caught(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUST_SWEEPS_HOME", str(tmp_path))
    with pytest.raises(AssertionError, match="rejected"):
        parse(["python", "-m", "attacks.pool", "--evaluatorz", "2"], monkeypatch)
    with pytest.raises(AssertionError, match="rejected"):
        parse(["python", "sweeps/emr_wrn.py", "--sampler", "grid"], monkeypatch)
    with pytest.raises(ImportError):
        run_help(["python", "-m", "attacks.poool"], monkeypatch, capsys)
    with pytest.raises(KeyError, match="OPTUNA_STORAGE"):
        project_argv(["sh", "-c", 'python sweeps/emr_wrn.py --optuna-storage "$OPTUNA_STORAGE"'],
                     {})
