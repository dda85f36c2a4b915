"""The API server itself rejects invalid TrainingJobs (schema, bounds, CEL), naming the field.

Each invalid manifest is also checked against the pydantic models, which must reject it too:
`trainforge local run` and the operator get the same answer as `kubectl apply`.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainforge.api import InvalidSpec, parse_training_job, parse_training_job_spec
from trainforge.render.trainingjob import JobRef, RenderSettings, desired_children

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
REPO = Path(__file__).resolve().parents[2]


def manifest(name: str = "job", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"workers": 2, **spec},
    }


def apply(
    kubectl: Kubectl, namespace: str, obj: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False)


# (id, manifest, fragments that must all appear in the server's error)
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("workers-zero", manifest(workers=0), ["spec.workers", "greater than or equal to 1"]),
    ("workers-too-many", manifest(workers=5000), ["spec.workers", "less than or equal to 1024"]),
    ("workers-not-a-number", manifest(workers="two"), ["spec.workers", "must be of type integer"]),
    (
        "negative-gpus",
        manifest(resources={"gpusPerWorker": -1}),
        ["spec.resources.gpusPerWorker", "greater than or equal to 0"],
    ),
    (
        "unknown-gang-policy",
        manifest(scheduling={"gang": {"policy": "Slurm"}}),
        ["spec.scheduling.gang.policy", 'Unsupported value: "Slurm"'],
    ),
    (
        "procs-exceed-gpus",
        manifest(procsPerWorker=8, resources={"gpusPerWorker": 4}),
        ["spec.procsPerWorker", "must not exceed resources.gpusPerWorker"],
    ),
    (
        "bad-quantity-shared-memory",
        manifest(resources={"sharedMemory": "lots"}),
        ["spec.resources.sharedMemory", "should match"],
    ),
    (
        "bad-quantity-request",
        manifest(resources={"requests": {"memory": "1.5.5Gi"}}),
        ["spec.resources.requests.memory", "should match"],
    ),
    (
        "negative-quantity",
        manifest(resources={"sharedMemory": -5}),
        ["spec.resources.sharedMemory", "greater than or equal to 0"],
    ),
    (
        "bad-resource-name",
        manifest(resources={"requests": {"CPU!!": 1}}),
        ["spec.resources.requests", "keys must match"],
    ),
    (
        "gpu-in-limits",
        manifest(resources={"gpusPerWorker": 1, "limits": {"nvidia.com/gpu": 2}}),
        ["spec.resources", "set resources.gpusPerWorker instead"],
    ),
    (
        "name-too-long-for-child-names",
        manifest(name="a" * 55, workers=2),
        ["metadata.name", "too long for spec.workers"],
    ),
    (
        "name-too-long-for-many-workers",
        manifest(name="a" * 53, workers=101),
        ["metadata.name", "too long for spec.workers"],
    ),
    (
        "name-not-a-dns-label",
        manifest(name="job.v2"),
        ["metadata.name", "must start with a lowercase letter"],
    ),
    (
        "claim-and-template",
        manifest(checkpoint={"claimName": "ckpt", "volumeClaimTemplate": {"size": "1Gi"}}),
        ["spec.checkpoint", "exactly one of checkpoint.claimName"],
    ),
    (
        "neither-claim-nor-template",
        manifest(checkpoint={"mountPath": "/ckpt"}),
        ["spec.checkpoint", "exactly one of checkpoint.claimName", "(spec.runtimeRef)"],
    ),
    (
        "runtime-ref-of-another-kind",
        manifest(runtimeRef={"name": "rdma-fabric", "kind": "ServingRuntime"}),
        ["spec.runtimeRef.kind", "Unsupported value"],
    ),
    (
        "template-without-size",
        manifest(checkpoint={"volumeClaimTemplate": {"storageClassName": "fast"}}),
        ["spec.checkpoint.volumeClaimTemplate.size", "Required value"],
    ),
    (
        "checkpoint-on-shm",
        manifest(checkpoint={"claimName": "ckpt", "mountPath": "/dev/shm"}),
        ["spec.checkpoint.mountPath", "must not be /dev/shm"],
    ),
    (
        "env-shadows-world-size",
        manifest(env=[{"name": "WORLD_SIZE", "value": "3"}]),
        ["spec.env[0].name", "env WORLD_SIZE is set by trainforge"],
    ),
    (
        "env-shadows-torchrun",
        manifest(env=[{"name": "PET_NNODES", "value": "3"}]),
        ["spec.env[0].name", "env PET_NNODES is set by trainforge"],
    ),
    (
        "kueue-without-queue",
        manifest(scheduling={"gang": {"policy": "Kueue"}}),
        ["spec.scheduling.queueName", "gang policy Kueue needs scheduling.queueName"],
    ),
    (
        "queue-without-gang",
        manifest(scheduling={"queueName": "research"}),
        ["spec.scheduling.queueName", "only to gang policy Volcano or Kueue"],
    ),
    (
        "volcano-with-other-scheduler",
        manifest(scheduling={"schedulerName": "default-scheduler", "gang": {"policy": "Volcano"}}),
        ["spec.scheduling.schedulerName", "schedulerName volcano"],
    ),
    (
        "timeout-without-coscheduling",
        manifest(scheduling={"gang": {"policy": "Volcano", "scheduleTimeoutSeconds": 60}}),
        ["spec.scheduling.gang.scheduleTimeoutSeconds", "only to policy Coscheduling"],
    ),
    (
        "too-many-tolerations",
        manifest(
            scheduling={"tolerations": [{"key": f"k{i}", "operator": "Exists"} for i in range(33)]}
        ),
        ["spec.scheduling.tolerations", "must have at most 32 items"],
    ),
    (
        "pod-template-restart-policy",
        manifest(podTemplate={"spec": {"restartPolicy": "Always"}}),
        ["spec.podTemplate.spec", "must not set restartPolicy"],
    ),
    (
        "pod-template-reserved-label",
        manifest(podTemplate={"metadata": {"labels": {"trainforge.io/job-name": "other"}}}),
        ["spec.podTemplate.metadata.labels", "set by trainforge"],
    ),
    (
        "bad-rdma-network-name",
        manifest(network={"rdma": {"networks": [{"name": "Rail_0"}]}}),
        ["spec.network.rdma.networks[0].name", "should match"],
    ),
    (
        "unknown-nccl-debug-level",
        manifest(network={"rdma": {"nccl": {"debug": "LOUD"}}}),
        ["spec.network.rdma.nccl.debug", 'Unsupported value: "LOUD"'],
    ),
    (
        "exit-code-zero",
        manifest(failurePolicy={"failOnExitCodes": [0]}),
        ["spec.failurePolicy.failOnExitCodes[0]", "greater than or equal to 1"],
    ),
    ("unknown-field", manifest(worker=3), ['unknown field "spec.worker"']),
    (
        "duplicate-env-name",
        manifest(env=[{"name": "SEED", "value": "1"}, {"name": "SEED", "value": "2"}]),
        ["spec.env[1]", "Duplicate value", "SEED"],
    ),
    (
        "duplicate-rdma-network",
        manifest(network={"rdma": {"networks": [{"name": "rail-0"}, {"name": "rail-0"}]}}),
        ["spec.network.rdma.networks", "may be listed once"],
    ),
    (
        "image-with-whitespace",
        manifest(image="example.com/trainer :1"),
        ["spec.image", "should match"],
    ),
    (
        "checkpoint-size-zero",
        manifest(checkpoint={"volumeClaimTemplate": {"size": "0Gi"}}),
        ["spec.checkpoint.volumeClaimTemplate.size", "must be more than 0"],
    ),
    (
        "read-write-once-pod-with-another-mode",
        manifest(
            checkpoint={
                "volumeClaimTemplate": {
                    "size": "1Gi",
                    "accessModes": ["ReadWriteOncePod", "ReadWriteMany"],
                }
            }
        ),
        ["spec.checkpoint.volumeClaimTemplate.accessModes", "ReadWriteOncePod cannot"],
    ),
    (
        "access-mode-twice",
        manifest(
            checkpoint={
                "volumeClaimTemplate": {
                    "size": "1Gi",
                    "accessModes": ["ReadWriteMany", "ReadWriteMany"],
                }
            }
        ),
        ["spec.checkpoint.volumeClaimTemplate.accessModes[1]", "Duplicate value"],
    ),
    (
        "request-above-limit",
        manifest(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}),
        ["spec.resources", "must not exceed resources.limits"],
    ),
    (
        "node-selector-value-not-a-label-value",
        manifest(scheduling={"nodeSelector": {"zone": "eu west"}}),
        ["spec.scheduling.nodeSelector.zone", "should match"],
    ),
]


@pytest.mark.parametrize(
    ("obj", "fragments"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_manifest_is_rejected_naming_the_field(
    kubectl: Kubectl, namespace: str, obj: dict[str, Any], fragments: list[str]
) -> None:
    result = apply(kubectl, namespace, obj)
    assert result.returncode != 0, f"accepted: {yaml.safe_dump(obj)}"
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    # The same manifest never gets past the models either.
    with pytest.raises(InvalidSpec):
        parse_training_job({**obj, "metadata": {**obj["metadata"], "namespace": namespace}})
    assert kubectl("get", "trainingjobs", "-n", namespace, "-o", "name").stdout == ""


VALID = [
    ("minimal", manifest()),
    ("longest-name-for-10-workers", manifest(name="a" * 54, workers=10)),
    (
        "full",
        manifest(
            workers=4,
            procsPerWorker=8,
            image="registry.example/trainer:1",
            env=[{"name": "NCCL_DEBUG", "value": "INFO"}],
            trainer={"recipe": "gpt", "maxSteps": 10},
            resources={"gpusPerWorker": 8, "requests": {"cpu": 8, "memory": "64Gi"}},
            network={"rdma": {"networks": [{"name": "rail-0", "interface": "net1"}]}},
            checkpoint={"claimName": "ckpt", "everySteps": 100},
            scheduling={"gang": {"policy": "Kueue"}, "queueName": "team-a", "spreadWorkers": True},
            podTemplate={
                "metadata": {"labels": {"team": "a"}},
                "spec": {"serviceAccountName": "x"},
            },
        ),
    ),
    # The claim may come from the runtime: only the cadence here.
    (
        "runtime-provides-the-claim",
        manifest(runtimeRef={"name": "rdma-fabric"}, checkpoint={"everySteps": 100}),
    ),
]


@pytest.mark.parametrize("obj", [case[1] for case in VALID], ids=[case[0] for case in VALID])
def test_valid_manifest_is_accepted(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    result = apply(kubectl, namespace, obj)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "path", sorted((REPO / "examples").glob("trainingjob-*.yaml")), ids=lambda p: p.name
)
def test_examples_are_accepted_and_stored_specs_parse(
    kubectl: Kubectl, namespace: str, path: Path
) -> None:
    assert apply(kubectl, namespace, yaml.safe_load(path.read_text())).returncode == 0
    stored = yaml.safe_load(kubectl("get", "trainingjobs", "-n", namespace, "-o", "yaml").stdout)
    for item in stored["items"]:
        parse_training_job(item)


def test_server_applies_the_schema_defaults(kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, namespace, manifest())
    spec = yaml.safe_load(kubectl("get", "tj", "job", "-n", namespace, "-o", "yaml").stdout)["spec"]
    assert spec["failurePolicy"]["maxRestarts"] == 3
    assert spec["resources"]["sharedMemory"] == "1Gi"
    assert spec["scheduling"]["gang"]["policy"] == "None"
    assert spec["suspend"] is False


def _set_phase(kubectl: Kubectl, namespace: str, phase: str) -> None:
    kubectl(
        "patch", "tj", "job", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", yaml.safe_dump({"status": {"phase": phase}}),
    )  # fmt: skip


BASE = manifest(
    resources={"gpusPerWorker": 1},
    checkpoint={"volumeClaimTemplate": {"size": "1Gi"}},
)


def _changed(path: list[str], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    target = obj
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return obj


LOCKED_CHANGES = [
    ("workers", ["spec", "workers"], 3),
    ("procsPerWorker", ["spec", "procsPerWorker"], 1),
    ("resources", ["spec", "resources", "gpusPerWorker"], 2),
    ("network", ["spec", "network"], {"rdma": {"networks": [{"name": "rail-0"}]}}),
    ("checkpoint", ["spec", "checkpoint", "mountPath"], "/elsewhere"),
]


@pytest.mark.parametrize(
    ("field", "path", "value"), LOCKED_CHANGES, ids=[c[0] for c in LOCKED_CHANGES]
)
def test_gang_shape_is_immutable_while_running(
    kubectl: Kubectl, namespace: str, field: str, path: list[str], value: Any
) -> None:
    assert apply(kubectl, namespace, BASE).returncode == 0
    _set_phase(kubectl, namespace, "Running")
    result = apply(kubectl, namespace, _changed(path, value))
    assert result.returncode != 0
    assert f"spec.{field}" in result.stderr
    assert "cannot change while the job is Running" in result.stderr
    assert "spec.suspend: true" in result.stderr


def test_gang_shape_may_change_before_the_job_runs_and_while_suspended(
    kubectl: Kubectl, namespace: str
) -> None:
    assert apply(kubectl, namespace, BASE).returncode == 0
    assert apply(kubectl, namespace, _changed(["spec", "workers"], 3)).returncode == 0
    _set_phase(kubectl, namespace, "Suspended")
    result = apply(kubectl, namespace, _changed(["spec", "workers"], 4))
    assert result.returncode == 0, result.stderr


def test_other_fields_stay_mutable_while_running(kubectl: Kubectl, namespace: str) -> None:
    assert apply(kubectl, namespace, BASE).returncode == 0
    _set_phase(kubectl, namespace, "Running")
    for path, value in ((["spec", "suspend"], True), (["spec", "ttlSecondsAfterFinished"], 60)):
        result = apply(kubectl, namespace, _changed(path, value))
        assert result.returncode == 0, result.stderr


RENDERED_SPECS = [
    ("cpu", {"workers": 2, "checkpoint": {"volumeClaimTemplate": {"size": "1Gi"}}}),
    (
        "gpu-rdma",
        {
            "workers": 2,
            "resources": {"gpusPerWorker": 8, "requests": {"cpu": 8}, "sharedMemory": "8Gi"},
            "network": {
                "rdma": {
                    "networks": [{"name": "rail-0", "interface": "net1"}],
                    "resources": {"rdma/rail0": 1},
                    "nccl": {"ibHCA": "mlx5_0", "debug": "INFO"},
                }
            },
            "scheduling": {"spreadWorkers": True, "gang": {"policy": "Kueue"}, "queueName": "q"},
        },
    ),
    (
        "pod-template",
        {
            "command": ["python", "-c", "print(1)"],
            "podTemplate": {
                "metadata": {"annotations": {"a": "b"}},
                "spec": {
                    "terminationGracePeriodSeconds": 120,
                    "containers": [{"name": "trainer", "imagePullPolicy": "Always"}],
                },
            },
        },
    ),
]


@pytest.mark.parametrize("spec", [c[1] for c in RENDERED_SPECS], ids=[c[0] for c in RENDERED_SPECS])
def test_rendered_children_are_valid_kubernetes_objects(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any]
) -> None:
    """A server-side dry run of every core child (PodGroups need Volcano or scheduler-plugins)."""
    job = JobRef(name="job", namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    children = desired_children(job, parse_training_job_spec(spec), 0, RenderSettings())
    core = [child for child in children.in_creation_order() if child["kind"] != "PodGroup"]
    result = kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(core), check=False
    )
    assert result.returncode == 0, result.stderr
