"""The KubeRay manifests: the vendored CRD schema, Kubernetes' strict PodTemplate schema, GPU
requests, token authentication and shared storage."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from deployment import (
    MANIFESTS,
    cluster_spec,
    crd_errors,
    env_of,
    manifest,
    pod_template_errors,
    pod_templates,
)


# ------------------------------------------------------------------ KubeRay
@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_manifest_validates_against_the_crd_and_kubernetes(name):
    doc = manifest(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    assert crd_errors(doc) == []
    for role, template in pod_templates(doc).items():
        assert pod_template_errors(template) == [], f"{name} {role}"
        for container in template["spec"]["containers"]:  # what the CRD takes on trust
            assert container["name"] and container["image"]


def test_kuberay_validation_catches_misspelt_fields():
    cluster = manifest("raycluster.yaml")
    cluster["spec"]["workerGroupSpec"] = cluster["spec"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in error for error in crd_errors(cluster))
    job = manifest("rayjob-emr-wrn.yaml")
    del job["spec"]["entrypoint"]
    assert any("entrypoint" in error for error in crd_errors(job))
    template = copy.deepcopy(pod_templates(manifest("raycluster.yaml"))["worker gpu"])
    template["spec"]["containers"][0]["resource"] = template["spec"]["containers"][0]["resources"]
    assert pod_template_errors(template)


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_gpus_token_auth_and_shared_storage(name):
    doc = manifest(name)
    if (spec := cluster_spec(doc)) is not None:
        assert spec["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}
        assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
        for group in spec["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                limits = container["resources"]["limits"]
                assert int(limits["nvidia.com/gpu"]) >= 1
                assert container["resources"]["requests"]["nvidia.com/gpu"] == limits[
                    "nvidia.com/gpu"]
    for role, template in pod_templates(doc).items():
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] != 0
        for container in template["spec"]["containers"]:
            env = env_of(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token", f"{name} {role}"
            token = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert token == {"name": "ray-auth-token", "key": "auth_token"}
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            for variable, item in env.items():  # secrets and service URLs never inline
                if re.search(r"TOKEN|PASSWORD|SECRET|KEY|STORAGE|URI|URL", variable):
                    assert "valueFrom" in item, f"{name} {role} {variable}"
            if role != "submitter":  # Tune writes to S3 from every node
                assert {"TUNE_STORAGE", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
                        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    if doc["kind"] == "RayJob":
        submitter = doc["spec"]["submitterPodTemplate"]["spec"]
        assert submitter["restartPolicy"] == "Never"
        assert "command" not in submitter["containers"][0], "KubeRay supplies `ray job submit`"
        assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"]) == {"working_dir": "/home/ray/app"}
