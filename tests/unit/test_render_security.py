"""Security settings of the rendered worker and server pods: the `restricted` Pod Security
Standard by default, IPC_LOCK (as root) only for RDMA, and the podTemplate overlay still able
to change all of it. tests/cluster/test_pod_security.py proves admission on the apiserver."""

from __future__ import annotations

from typing import Any

import pytest

from trainforge.api import parse_inference_service_spec, parse_training_job_spec
from trainforge.render.inferenceservice import InferenceRef, ModelMount, deployment
from trainforge.render.trainingjob import JobRef, RenderSettings, worker_pod

SETTINGS = RenderSettings(default_image="registry.example/trainer:1")
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
RDMA = {"rdma": {"networks": [{"name": "rail-0"}], "resources": {"rdma/hca": 1}}}
GPU_RDMA_JOB = {"workers": 2, "resources": {"gpusPerWorker": 8}, "network": RDMA}
SERVICE = {"model": {"claimName": "ckpt"}, "resources": {"gpus": 1}}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    job = JobRef(name="llm", namespace="ml", uid="uid")
    return worker_pod(job, parse_training_job_spec(spec), 0, 0, SETTINGS)["spec"]


def server(spec: dict[str, Any]) -> dict[str, Any]:
    ref = InferenceRef(name="chat", namespace="ml", uid="uid")
    mount = ModelMount("ckpt", "/checkpoints", "/checkpoints")
    rendered = deployment(ref, parse_inference_service_spec(spec), mount, SETTINGS)
    pod_spec: dict[str, Any] = rendered["spec"]["template"]["spec"]
    return pod_spec


def env(container: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container["env"] if "value" in var}


@pytest.mark.parametrize(
    "pod_spec",
    [
        worker({"workers": 2}),
        worker({"workers": 2, "resources": {"gpusPerWorker": 8}}),
        worker({**GPU_RDMA_JOB, "network": {"rdma": {**RDMA["rdma"], "ipcLock": False}}}),
        server(SERVICE),
    ],
    ids=["cpu-worker", "gpu-worker", "rdma-worker-without-ipc-lock", "server"],
)
def test_rendered_pods_are_restricted_by_default(pod_spec: dict[str, Any]) -> None:
    assert pod_spec["securityContext"] == RESTRICTED_POD
    (container,) = pod_spec["containers"]
    assert container["securityContext"] == RESTRICTED_CONTAINER
    # The read-only root filesystem leaves /tmp (and HOME on it) writable.
    assert {"name": "scratch", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {}} in pod_spec["volumes"]
    assert env(container)["HOME"] == "/tmp"


def test_rdma_worker_runs_as_root_with_ipc_lock_only() -> None:
    pod_spec = worker(GPU_RDMA_JOB)
    # The pod stays non-root by default: only the trainer container, which needs the
    # capability to be effective, runs as uid 0.
    assert pod_spec["securityContext"] == RESTRICTED_POD
    assert pod_spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]},
        "runAsNonRoot": False,
        "runAsUser": 0,
    }


def test_the_checkpoint_volume_is_writable_by_the_images_group() -> None:
    pod_spec = worker({"workers": 1, "checkpoint": {"claimName": "ckpt"}})
    assert pod_spec["securityContext"]["fsGroup"] == 65532
    mounts = {m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"]}
    assert {"/checkpoints", "/tmp", "/dev/shm"} <= mounts


@pytest.mark.parametrize(("render", "spec"), [(worker, {}), (server, SERVICE)])
def test_user_env_may_move_home(render: Any, spec: dict[str, Any]) -> None:
    home = {"env": [{"name": "HOME", "value": "/data/home"}]}
    (container,) = render({**spec, **home})["containers"]
    assert [var["value"] for var in container["env"] if var["name"] == "HOME"] == ["/data/home"]


@pytest.mark.parametrize(
    ("render", "spec", "container_name"),
    [(worker, {"workers": 1}, "trainer"), (server, SERVICE, "server")],
)
def test_pod_template_overrides_the_security_settings(
    render: Any, spec: dict[str, Any], container_name: str
) -> None:
    """A user image that writes into its own tree and runs as another user."""
    overlay = {
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "containers": [
            {"name": container_name, "securityContext": {"readOnlyRootFilesystem": False}}
        ],
    }
    pod_spec = render({**spec, "podTemplate": {"spec": overlay}})
    assert pod_spec["securityContext"] == {
        **RESTRICTED_POD,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
    }
    assert pod_spec["containers"][0]["securityContext"] == {
        **RESTRICTED_CONTAINER,
        "readOnlyRootFilesystem": False,
    }


def test_pod_template_replaces_the_added_capabilities() -> None:
    overlay = {
        "containers": [{"name": "trainer", "securityContext": {"capabilities": {"add": []}}}]
    }
    pod_spec = worker({**GPU_RDMA_JOB, "podTemplate": {"spec": overlay}})
    assert pod_spec["containers"][0]["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": [],
    }
