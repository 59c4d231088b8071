"""Reading the deployment files (Dockerfile, compose, KubeRay manifests) and the commands
they run, for tests/test_docker.py and tests/test_kuberay.py."""

from __future__ import annotations

import copy
import json
import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
KUBERNETES = "1.33.0"  # strict schemas from kubernetes-validate
COMPOSE_SPEC_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
# RayClusterSpec fields newer than the vendored CRD (KubeRay >= 1.5.1 token authentication; the
# shape of ray-operator/config/samples/ray-cluster.auth.secret-ref.yaml)
NEWER_CLUSTER_FIELDS = {"authOptions": {"type": "object", "properties": {
    "mode": {"type": "string", "enum": ["disabled", "token"]}, "secretName": {"type": "string"}}}}
# what the Secret robust-sweeps-services holds on a real cluster, for expanding $VARIABLES
K8S_SECRET_VALUES = {"MLFLOW_TRACKING_URI": "http://mlflow.mlops.svc:5000",
                     "OPTUNA_STORAGE": "postgresql://sweeps:pw@postgres.mlops.svc:5432/optuna",
                     "TUNE_STORAGE": "s3://robust-sweeps/ray-results"}
ENTRYPOINTS = ("Dockerfile CMD", "compose sweep", "compose pool", "compose report",
               "rayjob-emr-wrn.yaml", "rayjob-pool.yaml")


# ------------------------------------------------------------------ reading the files
def pins(path: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)", path.read_text(), re.M)
    return {name.lower().replace("_", "-"): version for name, version in found}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in (DOCKER / "Dockerfile").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in joined.splitlines() if line.strip()]


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (DOCKER / "env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


COMPOSE_VARIABLE = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_]\w*))")


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation; an unset variable without a default is an error."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        current = env.get(name or bare)
        missing = current is None or (operator or "").startswith(":") and current == ""
        if operator is None or operator[-1] == "?":
            if current is None or missing:
                raise KeyError(argument or f"{name or bare} is not set")
            return current
        if operator[-1] == "-":
            return argument if missing else current
        return "" if missing else argument

    return COMPOSE_VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> dict:
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return interpolate(raw, env_example() if env is None else env)


def manifest(name: str) -> dict:
    return yaml.safe_load((DOCKER / "kuberay" / name).read_text())


MANIFESTS = ("raycluster.yaml", "rayjob-emr-wrn.yaml", "rayjob-pool.yaml")


def cluster_spec(doc: dict) -> dict | None:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec")


def pod_templates(doc: dict) -> dict[str, dict]:
    templates = {}
    if (cluster := cluster_spec(doc)) is not None:
        templates["head"] = cluster["headGroupSpec"]["template"]
        for group in cluster["workerGroupSpecs"]:
            templates[f"worker {group['groupName']}"] = group["template"]
    if "submitterPodTemplate" in doc["spec"]:
        templates["submitter"] = doc["spec"]["submitterPodTemplate"]
    return templates


def env_of(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


# ------------------------------------------------------------------ commands
def expand_shell(text: str, env: dict[str, str]) -> str:
    """$NAME / ${NAME} as the shell expands them; a name the environment lacks is an error."""
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in env:
            raise KeyError(f"${name} is not in the command's environment")
        return env[name]
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", value, text)


def ray_job_submit(args: list[str]):
    from ray.dashboard.modules.job.cli import job_cli_group

    return job_cli_group.commands["submit"].make_context("submit", list(args))


def project_argv(argv: list[str], env: dict[str, str]) -> list[str]:
    """The project command inside `sh -c ...` and `ray job submit ... -- ...`."""
    if argv[:2] == ["sh", "-c"]:
        argv = shlex.split(expand_shell(argv[2], env))
    if argv[:3] == ["ray", "job", "submit"]:
        submit = ray_job_submit(argv[3:])
        assert submit.params["working_dir"] == ".", "jobs ship the working tree, as tests do"
        argv = list(submit.params["entrypoint"])
    return argv


def entrypoint(source: str) -> list[str]:
    if source == "Dockerfile CMD":
        return json.loads(next(args for kind, args in dockerfile() if kind == "CMD"))
    if source.startswith("compose "):
        service = compose()["services"][source.split()[1]]
        return project_argv(service["command"], service["environment"])
    doc = manifest(source)
    submitter = doc["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    names = {name for name, item in env_of(submitter).items() if "valueFrom" in item}
    secrets = {name: K8S_SECRET_VALUES[name] for name in names if name in K8S_SECRET_VALUES}
    # KubeRay's submitter runs `ray job submit ... -- <entrypoint>` in a shell
    return shlex.split(expand_shell(doc["spec"]["entrypoint"], secrets))


def parse_sweep(script: str, args: list[str], monkeypatch) -> dict:
    from sweeps.cli import sweep_spec
    from sweeps.study import load_study

    study = load_study(Path(script).stem)
    spec = sweep_spec(study.spec, args, study.smoke_base).resolved()
    return {"kind": "sweep", "tracking_uri": spec.tracking_uri, "storage": spec.storage_path,
            "optuna_storage": spec.optuna_storage, "gpus": spec.gpus_per_trial,
            "defense": spec.config.defense}


def parse_pool(args: list[str], monkeypatch) -> dict:
    from attacks.pool_cli import parse_config

    config = parse_config(args)
    return {"kind": "pool", "tracking_uri": config.tracking_uri, "gpus": config.gpus_per_evaluator,
            "watch": config.watch}


def parse_report(args: list[str], monkeypatch) -> dict:
    import dashboards.cli as cli
    import dashboards.report as report

    seen: dict = {}

    def render(tracking_uri, out, **options):
        seen.update(options, tracking_uri=tracking_uri, out=Path(out))
        return Path(out) / "index.html"

    monkeypatch.setattr(report, "render", render)
    cli.report(args)
    return {"kind": "report", "tracking_uri": seen["tracking_uri"], "out": seen["out"],
            "optuna_storage": seen["optuna_storage"]}


MODULES = {"attacks.pool": parse_pool, "dashboards.report": parse_report}


def parse(argv: list[str], monkeypatch) -> dict:
    """The command's own argparse (and config validation) applied to its exact arguments."""
    assert argv[0] == "python", f"{argv}: the image's interpreter is `python` on PATH"
    try:
        if argv[1] == "-m":
            assert argv[2] in MODULES, f"no command line known for {argv[2]}"
            return MODULES[argv[2]](argv[3:], monkeypatch)
        assert re.fullmatch(r"sweeps/\w+\.py", argv[1]), argv
        return parse_sweep(argv[1], argv[2:], monkeypatch)
    except SystemExit as exit:
        raise AssertionError(f"{shlex.join(argv)} is rejected by its command line") from exit


def run_help(argv: list[str], monkeypatch, capsys) -> str:
    """Run the command as `python` would (script path or -m module) with --help appended."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # scripts put the repository on it
    if argv[1] == "-m":
        monkeypatch.setattr(sys, "argv", [argv[2], *argv[3:], "--help"])
        run = lambda: runpy.run_module(argv[2], run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        monkeypatch.setattr(sys, "argv", [argv[1], *argv[2:], "--help"])
        run = lambda: runpy.run_path(str(ROOT / argv[1]), run_name="__main__")  # noqa: E731
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit:
        warnings.simplefilter("ignore", RuntimeWarning)  # re-running an imported module
        run()
    assert exit.value.code in (0, None)
    return capsys.readouterr().out


# ------------------------------------------------------------------ KubeRay schemas
def crd_schemas() -> dict[str, dict]:
    crd = yaml.safe_load((DOCKER / "schemas" / "kuberay-rayjobs-v1.crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    job = copy.deepcopy(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    job["properties"]["rayClusterSpec"]["properties"].update(NEWER_CLUSTER_FIELDS)
    return {"RayJob": job, "RayCluster": job["properties"]["rayClusterSpec"]}


def unknown_fields(schema: dict, value, path: str) -> list[str]:
    """Fields the API server would prune (or reject under strict field validation)."""
    if schema.get("x-vendored-elided") or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []  # pod templates are checked against Kubernetes' own schema below
    if isinstance(value, list) and "items" in schema:
        return [found for i, item in enumerate(value)
                for found in unknown_fields(schema["items"], item, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        if key in schema.get("properties", {}):
            found += unknown_fields(schema["properties"][key], item, f"{path}.{key}")
        elif isinstance(schema.get("additionalProperties"), dict):
            found += unknown_fields(schema["additionalProperties"], item, f"{path}.{key}")
        elif "properties" in schema:
            found.append(f"{path}.{key}")
    return found


def crd_errors(doc: dict) -> list[str]:
    schema = crd_schemas()[doc["kind"]]
    errors = [f"{list(e.path)}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(doc["spec"])]
    return errors + [f"unknown field {f}" for f in unknown_fields(schema, doc["spec"], "spec")]


def pod_template_errors(template: dict) -> list[str]:
    import kubernetes_validate

    document = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
                "template": template}
    try:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [str(error).splitlines()[0]]
    return []
