"""Pod Security admission on the real API server (its PodSecurity plugin is on by default):
the pods trainforge renders are admitted in namespaces that enforce `restricted`, except an
RDMA worker holding IPC_LOCK, which needs `privileged` (docs/install.md, "Pod Security")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetest import Kubectl, Operator, wait_for
from trainforge.api import parse_inference_service_spec, parse_training_job_spec
from trainforge.render.inferenceservice import InferenceRef, ModelMount, deployment
from trainforge.render.trainingjob import JobRef, RenderSettings, worker_pod

pytestmark = pytest.mark.cluster

SETTINGS = RenderSettings(default_image="example.com/trainer:1")
RDMA_RESOURCE = "rdma/rdma_shared_device_a"
GPU_RDMA_JOB: dict[str, Any] = {
    "workers": 2,
    "resources": {"gpusPerWorker": 8, "requests": {"cpu": "1", "memory": "1Gi"}},
    "network": {"rdma": {"resources": {RDMA_RESOURCE: 1}, "nccl": {"ibHCA": "mlx5_0"}}},
}
WITHOUT_IPC_LOCK: dict[str, Any] = {
    **GPU_RDMA_JOB,
    "network": {"rdma": {**GPU_RDMA_JOB["network"]["rdma"], "ipcLock": False}},
}


def enforce(kubectl: Kubectl, namespace: str, level: str) -> None:
    kubectl(
        "label", "namespace", namespace, f"pod-security.kubernetes.io/enforce={level}",
        "--overwrite",
    )  # fmt: skip


def rendered_worker(namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    job = JobRef(name="llm", namespace=namespace, uid="3d1f7a52-0000-4000-8000-000000000001")
    return worker_pod(job, parse_training_job_spec(spec), 0, 0, SETTINGS)


def rendered_server_pod(namespace: str) -> dict[str, Any]:
    """The Deployment's pod template as the Pod its ReplicaSet creates (Pod Security is
    enforced on pods; on a Deployment it only warns)."""
    ref = InferenceRef(name="chat", namespace=namespace, uid="3d1f7a52-0000-4000-8000-000000000002")
    spec = parse_inference_service_spec({"model": {"claimName": "ckpt"}, "resources": {"gpus": 1}})
    template = deployment(ref, spec, ModelMount("ckpt", "/checkpoints", "/checkpoints"), SETTINGS)
    pod_template = template["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "chat-0", "namespace": namespace, **pod_template["metadata"]},
        "spec": pod_template["spec"],
    }


def dry_run(kubectl: Kubectl, pod: dict[str, Any]) -> Any:
    return kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)


@pytest.mark.parametrize(
    "render",
    [
        lambda ns: rendered_worker(ns, {"workers": 2}),
        lambda ns: rendered_worker(ns, {**GPU_RDMA_JOB, "network": {}}),
        lambda ns: rendered_worker(ns, WITHOUT_IPC_LOCK),
        rendered_server_pod,
    ],
    ids=["cpu-worker", "gpu-worker", "rdma-worker-ipc-lock-off", "inference-server"],
)
def test_rendered_pods_pass_restricted(kubectl: Kubectl, namespace: str, render: Any) -> None:
    enforce(kubectl, namespace, "restricted")
    result = dry_run(kubectl, render(namespace))
    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout
    # Admitted without even a warning.
    assert "PodSecurity" not in result.stderr


IPC_LOCK_ADDED = (
    'container "trainer" must not include "IPC_LOCK" in securityContext.capabilities.add'
)


@pytest.mark.parametrize(
    ("level", "refusals"),
    [
        (
            "restricted",
            [
                'violates PodSecurity "restricted:latest"',
                f"unrestricted capabilities ({IPC_LOCK_ADDED})",
                "runAsNonRoot != true",
                "runAsUser=0",
            ],
        ),
        (
            "baseline",
            [
                'violates PodSecurity "baseline:latest": '
                f"non-default capabilities ({IPC_LOCK_ADDED})"
            ],
        ),
        ("privileged", []),
    ],
)
def test_rdma_worker_with_ipc_lock_needs_a_privileged_namespace(
    kubectl: Kubectl, namespace: str, level: str, refusals: list[str]
) -> None:
    """What docs/install.md and docs/rdma.md tell platform teams, as the API server says it."""
    enforce(kubectl, namespace, level)
    result = dry_run(kubectl, rendered_worker(namespace, GPU_RDMA_JOB))
    if not refusals:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0, result.stdout
    for refusal in refusals:
        assert refusal in result.stderr


def job(name: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": {"image": "example.com/trainer:1", **spec},
        }
    )


def pods(kubectl: Kubectl, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def test_cpu_job_runs_in_a_restricted_namespace(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    enforce(kubectl, namespace, "restricted")
    kubectl(
        "apply", "-n", namespace, "-f", "-",
        input=job(
            "cpu",
            workers=2,
            resources={"requests": {"cpu": "100m", "memory": "256Mi"}},
            checkpoint={"volumeClaimTemplate": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]}},
        ),
    )  # fmt: skip

    def running() -> bool:
        found = pods(kubectl, namespace, "trainforge.io/job-name=cpu")
        return len(found) == 2 and all(p["status"].get("phase") == "Running" for p in found)

    wait_for(running, "both workers of cpu running in a restricted namespace", timeout=90)
    for pod in pods(kubectl, namespace, "trainforge.io/job-name=cpu"):
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    wait_for(
        lambda: (
            condition(get(kubectl, namespace, "trainingjob", "cpu"), "Running").get("status")
            == "True"
        ),
        "TrainingJob cpu to be Running",
    )


def test_inference_service_becomes_ready_in_a_restricted_namespace(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    enforce(kubectl, namespace, "restricted")
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "ckpt"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    service = {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat"},
        "spec": {
            "image": "example.com/trainer:1",
            "model": {"claimName": "ckpt"},
            "replicas": 2,
            "resources": {"requests": {"cpu": "100m"}},
        },
    }
    for obj in (claim, service):
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    kubectl(
        "wait", "--for=condition=Ready", "infsvc/chat", "-n", namespace, "--timeout=90s",
        timeout=100,
    )  # fmt: skip
    found = pods(kubectl, namespace, "trainforge.io/inference-service=chat")
    assert len(found) == 2
    assert all(p["spec"]["securityContext"]["runAsNonRoot"] is True for p in found)


def test_rdma_job_in_a_baseline_namespace_is_reported_until_the_namespace_allows_it(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    """The worker with IPC_LOCK is refused under baseline; the job says so (Stalled, naming
    the PodSecurity plugin and the capability, with a Warning Event) and starts once the
    platform team labels the namespace privileged."""
    enforce(kubectl, namespace, "baseline")
    kubectl("apply", "-n", namespace, "-f", "-", input=job("rdma", **GPU_RDMA_JOB))

    def stalled() -> dict[str, Any]:
        return condition(get(kubectl, namespace, "trainingjob", "rdma"), "Stalled")

    wait_for(lambda: stalled().get("status") == "True", "the RDMA job to be Stalled")
    message = stalled()["message"]
    assert stalled()["reason"] == "AdmissionRejected"
    assert message.startswith(
        f"the PodSecurity admission plugin refused Pod {namespace}/rdma-worker-0: "
    )
    assert f"non-default capabilities ({IPC_LOCK_ADDED})" in message
    assert pods(kubectl, namespace, "trainforge.io/job-name=rdma") == []
    listed = kubectl(
        "get", "events", "-n", namespace, "-o", "json",
        "--field-selector", "involvedObject.name=rdma,reason=AdmissionRejected",
    )  # fmt: skip
    events = json.loads(listed.stdout)["items"]
    assert [(e["type"], e["message"]) for e in events] == [("Warning", message)]

    enforce(kubectl, namespace, "privileged")

    def running() -> bool:
        found = pods(kubectl, namespace, "trainforge.io/job-name=rdma")
        return len(found) == 2 and all(p["status"].get("phase") == "Running" for p in found)

    # The operator backs off while refused (up to its maximum delay), then retries.
    wait_for(running, "both RDMA workers running once the namespace is privileged", timeout=180)
    assert stalled()["status"] == "False"
