"""What happens to a TrainingJob's children behind the operator's back, on the real control
plane: workers deleted by hand, evicted through the Eviction API or lost with their node
restart the whole gang (uncounted, as a disruption); a deleted headless Service comes back; a
deleted checkpoint claim is never silently replaced by an empty one; a container that cannot
start is named in status, for both kinds.

A worker's container state is set through the pod's status subresource, as the kubelet
reports it (KWOK nodes run no container)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubetest import Kubectl, Operator, wait_for

pytestmark = pytest.mark.cluster


def apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def training_job(name: str, workers: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "workers": workers,
            "image": "example.com/trainer:1",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            **spec,
        },
    }


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    out = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def job_status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    job = get(kubectl, namespace, "trainingjob", name)
    assert job is not None
    return dict(job.get("status", {}))


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def running_workers(
    kubectl: Kubectl, namespace: str, job: str, count: int, attempt: int = 0
) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        out = kubectl(
            "get", "pods", "-n", namespace, "-l", f"trainforge.io/job-name={job}", "-o", "json"
        ).stdout
        pods = [
            p
            for p in json.loads(out)["items"]
            if p["metadata"]["labels"]["trainforge.io/restart-attempt"] == str(attempt)
            and p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]
        return sorted(pods, key=lambda p: p["metadata"]["name"]) if len(pods) == count else None

    return wait_for(ready, f"{count} running workers of {job} (attempt {attempt})", timeout=90)  # type: ignore[return-value]


def wait_job_running(kubectl: Kubectl, namespace: str, job: str) -> None:
    wait_for(
        lambda: job_status(kubectl, namespace, job).get("phase") == "Running",
        f"TrainingJob {job} to run",
    )


def assert_restarted_uncounted(kubectl: Kubectl, namespace: str, job: str, lost: str) -> None:
    running_workers(kubectl, namespace, job, 2, attempt=1)
    status = job_status(kubectl, namespace, job)
    assert (status["restartAttempt"], status["restarts"]) == (1, 0)
    events = kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "-o",
        "json",
        "--field-selector",
        f"involvedObject.name={job},reason=GangRestarted",
    ).stdout
    messages = [e["message"] for e in json.loads(events)["items"]]
    assert any(lost in m and "not counted" in m for m in messages), messages


def test_a_worker_deleted_by_hand_restarts_the_whole_gang_uncounted(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, training_job("manual"))
    first = running_workers(kubectl, namespace, "manual", 2)
    wait_job_running(kubectl, namespace, "manual")
    kubectl("delete", "pod", "manual-worker-1", "-n", namespace, "--wait=false")
    assert_restarted_uncounted(kubectl, namespace, "manual", "manual-worker-1")
    # The survivor of the old gang went too: a lone replacement could not rejoin it.
    assert (
        get(kubectl, namespace, "pod", "manual-worker-0")["metadata"]["uid"]
        != (  # type: ignore[index]
            first[0]["metadata"]["uid"]
        )
    )


def test_an_evicted_worker_restarts_the_whole_gang_uncounted(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, training_job("evicted"))
    running_workers(kubectl, namespace, "evicted", 2)
    wait_job_running(kubectl, namespace, "evicted")
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "evicted-worker-0", "namespace": namespace},
    }
    kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{namespace}/pods/evicted-worker-0/eviction",
        "-f",
        "-",
        input=json.dumps(eviction),
    )
    assert_restarted_uncounted(kubectl, namespace, "evicted", "evicted-worker-0")


@pytest.fixture
def own_node(kubectl: Kubectl) -> Iterator[str]:
    """A KWOK node of this test's own (a test may lose it without harming others)."""
    name = f"kwok-lost-{uuid.uuid4().hex[:5]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "type": "kwok",
                "trainforge.test/node": name,
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(node))
    yield name
    kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")


def test_workers_lost_with_their_node_restart_the_whole_gang_uncounted(
    operator: Operator, kubectl: Kubectl, namespace: str, own_node: str
) -> None:
    apply(
        kubectl,
        namespace,
        training_job("lost", scheduling={"nodeSelector": {"trainforge.test/node": own_node}}),
    )
    running_workers(kubectl, namespace, "lost", 2)
    wait_job_running(kubectl, namespace, "lost")
    kubectl("delete", "node", own_node)
    # The pod garbage collector deletes pods bound to a node that is gone (after ~40 s).
    wait_for(
        lambda: job_status(kubectl, namespace, "lost").get("restartAttempt") == 1,
        "the gang to restart after its node was lost",
        timeout=150,
        interval=1,
    )
    status = job_status(kubectl, namespace, "lost")
    assert status["restarts"] == 0
    events = kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "-o",
        "json",
        "--field-selector",
        "involvedObject.name=lost,reason=GangRestarted",
    ).stdout
    assert "not counted" in json.loads(events)["items"][0]["message"]


def test_a_deleted_headless_service_of_a_running_job_comes_back(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, training_job("dns"))
    running_workers(kubectl, namespace, "dns", 2)
    wait_job_running(kubectl, namespace, "dns")
    old = get(kubectl, namespace, "service", "dns")
    assert old is not None
    kubectl("delete", "service", "dns", "-n", namespace)

    def recreated() -> dict[str, Any] | None:
        new = get(kubectl, namespace, "service", "dns")
        return new if new and new["metadata"]["uid"] != old["metadata"]["uid"] else None

    new: dict[str, Any] = wait_for(recreated, "the headless Service to be created again")  # type: ignore[assignment]
    assert new["spec"]["clusterIP"] == "None"
    assert new["spec"]["selector"] == old["spec"]["selector"]
    assert new["metadata"]["ownerReferences"][0]["name"] == "dns"
    status = job_status(kubectl, namespace, "dns")
    assert (status["phase"], status["restartAttempt"]) == ("Running", 0)


def test_a_deleted_checkpoint_claim_is_reported_never_replaced_by_an_empty_one(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        training_job("keep", checkpoint={"volumeClaimTemplate": {"size": "1Gi"}}),
    )
    running_workers(kubectl, namespace, "keep", 2)
    checkpoint = {"step": 40, "path": "/checkpoints/step-00000040", "time": "2026-11-23T00:00:00Z"}
    kubectl(
        "annotate",
        "pod",
        "keep-worker-0",
        "-n",
        namespace,
        "trainforge.test/exit-code=1",
        f"trainforge.test/termination-message={json.dumps({'step': 45, 'checkpoint': checkpoint})}",
    )
    running_workers(kubectl, namespace, "keep", 2, attempt=1)
    assert job_status(kubectl, namespace, "keep")["checkpoint"]["step"] == 40
    claim = get(kubectl, namespace, "pvc", "keep-checkpoints")
    assert claim is not None

    # The workers still use it, so it lingers (pvc-protection) until they are gone.
    kubectl("delete", "pvc", "keep-checkpoints", "-n", namespace, "--wait=false")
    wait_for(
        lambda: (
            condition(job_status(kubectl, namespace, "keep"), "Stalled").get("status") == "True"
        ),
        "the job to report the lost claim",
    )
    stalled = condition(job_status(kubectl, namespace, "keep"), "Stalled")
    assert stalled["reason"] == "CheckpointVolumeLost"
    assert "step 40" in stalled["message"] and "does not replace it" in stalled["message"]
    kubectl("delete", "pods", "-n", namespace, "-l", "trainforge.io/job-name=keep")
    wait_for(
        lambda: (
            (c := get(kubectl, namespace, "pvc", "keep-checkpoints")) is None
            or c["metadata"]["uid"] != claim["metadata"]["uid"]
        ),
        "the old claim to be gone",
    )
    # No new, empty claim appears: the job waits for the user.
    for _ in range(10):
        assert get(kubectl, namespace, "pvc", "keep-checkpoints") is None
        assert condition(job_status(kubectl, namespace, "keep"), "Stalled")["reason"] == (
            "CheckpointVolumeLost"
        )
        time.sleep(0.5)


def kubelet_reports_waiting(
    kubectl: Kubectl, namespace: str, pod: str, container: str, reason: str, message: str
) -> None:
    """Write a container's waiting state into the pod's status, as the kubelet does."""
    patch = {
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": [
                {
                    "name": container,
                    "image": "example.com/trainer:1",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        }
    }
    kubectl(
        "patch",
        "pod",
        pod,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )


def test_a_worker_whose_image_cannot_be_pulled_is_named_in_status(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, training_job("pull"))
    running_workers(kubectl, namespace, "pull", 2)
    kubelet_message = (
        'Back-off pulling image "example.com/trainer:1": ErrImagePull: failed to pull and '
        "unpack image: not found"
    )
    kubelet_reports_waiting(
        kubectl, namespace, "pull-worker-1", "trainer", "ImagePullBackOff", kubelet_message
    )
    kubectl(
        "wait",
        "--for=condition=Stalled",
        "trainingjob/pull",
        "-n",
        namespace,
        "--timeout=60s",
        timeout=70,
    )
    status = job_status(kubectl, namespace, "pull")
    stalled = condition(status, "Stalled")
    assert stalled["reason"] == "ImagePullBackOff"
    assert stalled["message"].startswith(
        f"pod pull-worker-1 cannot start container trainer: ImagePullBackOff: {kubelet_message}"
    )
    assert status["phase"] == "Pending"
    assert condition(status, "Running")["reason"] == "ImagePullBackOff"
    events = kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "-o",
        "json",
        "--field-selector",
        "involvedObject.name=pull,reason=ImagePullBackOff",
    ).stdout
    assert len(json.loads(events)["items"]) == 1


def test_a_server_that_keeps_crashing_is_named_in_the_inference_service_status(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "ckpt"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    apply(
        kubectl,
        namespace,
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "crashy"},
            "spec": {"image": "example.com/trainer:1", "model": {"claimName": "ckpt"}},
        },
    )
    kubectl(
        "wait",
        "--for=condition=Ready",
        "infsvc/crashy",
        "-n",
        namespace,
        "--timeout=60s",
        timeout=70,
    )
    out = kubectl(
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        "trainforge.io/inference-service=crashy",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout
    kubelet_message = f"back-off 5m0s restarting failed container=server pod={out}_{namespace}"
    kubelet_reports_waiting(kubectl, namespace, out, "server", "CrashLoopBackOff", kubelet_message)
    kubectl(
        "wait",
        "--for=condition=Stalled",
        "infsvc/crashy",
        "-n",
        namespace,
        "--timeout=60s",
        timeout=70,
    )
    svc = get(kubectl, namespace, "infsvc", "crashy")
    assert svc is not None
    stalled = condition(svc["status"], "Stalled")
    assert stalled["reason"] == "CrashLoopBackOff"
    assert kubelet_message in stalled["message"]
    assert "kubectl logs --previous" in stalled["message"]
    assert condition(svc["status"], "Ready")["status"] == "False"
