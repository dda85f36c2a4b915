"""Children the API server refuses, or whose names are taken, as users meet them on a real
control plane (admission plugins on, RBAC on): both kinds report a Stalled condition naming
the admission step and the server's message, record one Event, and back off.

The operator runs with its normal settings apart from the tests' short resync, so what these
tests see of the backoff is what a cluster sees."""

from __future__ import annotations

import json
import re
import time
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


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def wait_condition(
    kubectl: Kubectl, namespace: str, ref: str, type_: str, timeout: int = 60
) -> dict[str, Any]:
    kubectl(
        "wait", f"--for=condition={type_}", ref, "-n", namespace, f"--timeout={timeout}s",
        timeout=timeout + 10,
    )  # fmt: skip
    kind, name = ref.split("/")
    return get(kubectl, namespace, kind, name)


def events(kubectl: Kubectl, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    out = kubectl(
        "get", "events", "-n", namespace, "-o", "json",
        "--field-selector", f"involvedObject.name={name},reason={reason}",
    ).stdout  # fmt: skip
    return list(json.loads(out)["items"])


def retry_delays(operator: Operator, queue: str, namespace: str, name: str) -> list[int]:
    """The delays the operator logged before each retry of one object."""
    pattern = re.compile(
        rf"{queue}: \('{namespace}', '{name}'\) failed \d+ times in a row .*; next try in (\d+)s"
    )
    return [int(m.group(1)) for m in pattern.finditer(operator.logs())]


def pod_names(kubectl: Kubectl, namespace: str, job: str) -> list[str]:
    out = kubectl(
        "get", "pods", "-n", namespace, "-l", f"trainforge.io/job-name={job}", "-o", "json"
    ).stdout  # fmt: skip
    return sorted(p["metadata"]["name"] for p in json.loads(out)["items"])


def test_a_worker_refused_by_pod_security_stalls_the_job_with_one_event_and_backs_off(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline")
    host = {"spec": {"hostNetwork": True}}
    apply(kubectl, namespace, training_job("hostnet", podTemplate=host))

    job = wait_condition(kubectl, namespace, "trainingjob/hostnet", "Stalled")
    stalled = condition(job, "Stalled")
    assert stalled["reason"] == "AdmissionRejected"
    assert stalled["message"].startswith(
        f"the PodSecurity admission plugin refused Pod {namespace}/hostnet-worker-0: "
    )
    assert 'violates PodSecurity "baseline:latest"' in stalled["message"]
    assert "hostNetwork" in stalled["message"]
    assert job["status"]["phase"] == "Pending"
    assert condition(job, "Running")["reason"] == "AdmissionRejected"
    assert condition(job, "Reconciling")["status"] == "False"
    assert pod_names(kubectl, namespace, "hostnet") == []

    time.sleep(12)
    (event,) = events(kubectl, namespace, "hostnet", "AdmissionRejected")
    assert event["type"] == "Warning"
    assert event["message"] == stalled["message"]
    delays = retry_delays(operator, "trainingjobs", namespace, "hostnet")
    # 1, 2, 4, 8 s …: a handful of tries in 12 s, not one every few seconds forever.
    assert 3 <= len(delays) <= 6, delays
    assert delays == sorted(delays) and delays[-1] >= 4, delays

    # The user's fix (a spec change) is acted on at once, whatever the backoff.
    kubectl("patch", "trainingjob", "hostnet", "-n", namespace, "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/podTemplate"}]')  # fmt: skip
    wait_for(
        lambda: (
            condition(get(kubectl, namespace, "trainingjob", "hostnet"), "Stalled").get("status")
            == "False"
        ),
        "the job to stop being Stalled",
        timeout=10,
    )
    assert pod_names(kubectl, namespace, "hostnet") == ["hostnet-worker-0", "hostnet-worker-1"]


def test_a_worker_over_the_namespace_quota_is_reported_until_the_quota_allows_it(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "quota", "two-pods", "--hard=pods=1", "-n", namespace)
    wait_for(
        lambda: get(kubectl, namespace, "resourcequota", "two-pods").get("status", {}).get("hard"),
        "the quota controller to count the namespace",
    )
    apply(kubectl, namespace, training_job("quota"))
    job = wait_condition(kubectl, namespace, "trainingjob/quota", "Stalled")
    stalled = condition(job, "Stalled")
    assert stalled["reason"] == "AdmissionRejected"
    assert stalled["message"].startswith(
        f"the ResourceQuota admission plugin refused Pod {namespace}/quota-worker-1: "
    )
    assert "exceeded quota: two-pods" in stalled["message"]

    kubectl("delete", "quota", "two-pods", "-n", namespace)
    kubectl(
        "wait", "--for=condition=Ready", "trainingjob/quota", "-n", namespace, "--timeout=90s",
        timeout=100,
    )  # fmt: skip
    assert condition(get(kubectl, namespace, "trainingjob", "quota"), "Stalled")["status"] == (
        "False"
    )


@pytest.mark.parametrize(
    ("spec", "reason", "says"),
    [
        (
            {"scheduling": {"priorityClassName": "no-such-class"}},
            "AdmissionRejected",
            "the Priority admission plugin refused Pod",
        ),
        (
            {"podTemplate": {"spec": {"serviceAccountName": "no-such-account"}}},
            "AdmissionRejected",
            "the ServiceAccount admission plugin refused Pod",
        ),
        (
            {
                "podTemplate": {
                    "spec": {"containers": [{"name": "trainer", "imagePullPolicy": "Sometimes"}]}
                }
            },
            "ChildRejected",
            "imagePullPolicy",
        ),
        (
            {"env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]},
            "ChildRejected",
            "fieldPath",
        ),
    ],
    ids=["unknown-priority-class", "unknown-service-account", "invalid-overlay", "bad-env-source"],
)
def test_a_worker_the_api_server_refuses_is_named_in_status(
    operator: Operator,
    kubectl: Kubectl,
    namespace: str,
    spec: dict[str, Any],
    reason: str,
    says: str,
) -> None:
    apply(kubectl, namespace, training_job("refused", **spec))
    job = wait_condition(kubectl, namespace, "trainingjob/refused", "Stalled")
    stalled = condition(job, "Stalled")
    assert stalled["reason"] == reason
    assert says in stalled["message"]
    assert events(kubectl, namespace, "refused", reason)


def test_names_taken_by_objects_the_job_does_not_own_are_reported_not_adopted(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "service", "clusterip", "taken", "--tcp=80:80", "-n", namespace)
    apply(kubectl, namespace, training_job("taken"))
    job = wait_condition(kubectl, namespace, "trainingjob/taken", "Stalled")
    assert condition(job, "Stalled")["reason"] == "NameConflict"
    assert condition(job, "Stalled")["message"].startswith(
        f"Service {namespace}/taken already exists and is not controlled by this TrainingJob"
    )
    assert job["status"]["phase"] == "Pending"
    assert pod_names(kubectl, namespace, "taken") == []
    service = get(kubectl, namespace, "service", "taken")
    assert "ownerReferences" not in service["metadata"]
    assert service["spec"]["clusterIP"] != "None"

    kubectl("run", "other-worker-0", "--image=example.com/x:1", "-n", namespace)
    apply(kubectl, namespace, training_job("other"))
    job = wait_condition(kubectl, namespace, "trainingjob/other", "Stalled")
    assert condition(job, "Stalled")["message"].startswith(
        f"Pod {namespace}/other-worker-0 already exists and is not controlled by this TrainingJob"
    )
    assert "ownerReferences" not in get(kubectl, namespace, "pod", "other-worker-0")["metadata"]
    assert job["status"]["phase"] == "Pending"

    kubectl("delete", "service", "taken", "-n", namespace)
    kubectl(
        "wait", "--for=condition=Ready", "trainingjob/taken", "-n", namespace, "--timeout=90s",
        timeout=100,
    )  # fmt: skip


def test_inference_pods_refused_by_admission_stall_the_service_with_the_message(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline")
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
            "metadata": {"name": "hostnet"},
            "spec": {
                "image": "example.com/trainer:1",
                "model": {"claimName": "ckpt"},
                "podTemplate": {"spec": {"hostNetwork": True}},
            },
        },
    )
    svc = wait_condition(kubectl, namespace, "infsvc/hostnet", "Stalled")
    stalled = condition(svc, "Stalled")
    assert stalled["reason"] == "AdmissionRejected"
    assert stalled["message"].startswith(
        f"the PodSecurity admission plugin refused the pods of Deployment {namespace}/hostnet: "
    )
    assert 'violates PodSecurity "baseline:latest"' in stalled["message"]
    assert condition(svc, "ModelLoaded")["reason"] == "AdmissionRejected"
    assert condition(svc, "Reconciling")["status"] == "False"
    assert events(kubectl, namespace, "hostnet", "AdmissionRejected")

    kubectl("patch", "infsvc", "hostnet", "-n", namespace, "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/podTemplate"}]')  # fmt: skip
    kubectl(
        "wait", "--for=condition=Ready", "infsvc/hostnet", "-n", namespace, "--timeout=90s",
        timeout=100,
    )  # fmt: skip
