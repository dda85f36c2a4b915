"""Gang policy Kueue against a real Kueue manager (hack/cluster/build-kueue.sh, run by
tests/kueuetest.py) and the operator run with --kueue: quota, admission, preemption.

Each test makes its own ResourceFlavor, ClusterQueue (named after the namespace) and
LocalQueue, so Kueue decides with exactly the quota the test states. KWOK runs the pods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetest import Cluster, Kubectl, Operator, start_operator, wait_for
from kueuetest import Kueue, running_kueue

GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def kueue(
    cluster: Cluster, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kueue]:
    with running_kueue(cluster.kubeconfig, kubectl, tmp_path_factory.mktemp("kueue")) as manager:
        yield manager


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, kubectl: Kubectl, kueue: Kueue, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = start_operator(cluster.kubeconfig, log, "--kueue")
    yield op
    op.stop()
    assert "Traceback" not in op.logs(), op.logs()[-5000:]


@pytest.fixture(autouse=True)
def delete_queue(kubectl: Kubectl, namespace: str) -> Iterator[None]:
    """make_queue's cluster-scoped objects go with the test (their namespace goes anyway)."""
    yield
    kubectl("delete", "clusterqueue", namespace, "--wait=false", "--ignore-not-found", check=False)
    kubectl("delete", "resourceflavor", f"{namespace}-flavor", "--wait=false",
            "--ignore-not-found", check=False)  # fmt: skip


def apply_objects(kubectl: Kubectl, *objects: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


def make_queue(
    kubectl: Kubectl,
    namespace: str,
    gpus: int,
    flavor_spec: dict[str, Any] | None = None,
) -> str:
    """A LocalQueue `team` in `namespace` backed by a ClusterQueue with `gpus` GPUs of quota
    in a flavor of its own; lower-priority workloads may be preempted."""
    flavor = f"{namespace}-flavor"
    apply_objects(
        kubectl,
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
            "spec": flavor_spec or {},
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": namespace},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", GPU],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "100"},
                                    {"name": "memory", "nominalQuota": "100Gi"},
                                    {"name": GPU, "nominalQuota": str(gpus)},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "team", "namespace": namespace},
            "spec": {"clusterQueue": namespace},
        },
    )
    wait_for(
        lambda: any(
            c["type"] == "Active" and c["status"] == "True"
            for c in get(kubectl, "clusterqueue", namespace).get("status", {}).get("conditions", [])
        ),
        f"ClusterQueue {namespace} to be active",
    )
    return "team"


def get(kubectl: Kubectl, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    result = kubectl(*args, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def job(name: str, workers: int = 2, gpus: int = 4, **scheduling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "workers": workers,
            "image": "example.com/trainer:1",
            "resources": {"gpusPerWorker": gpus, "requests": {"cpu": "1", "memory": "1Gi"}},
            "scheduling": {"gang": {"policy": "Kueue"}, "queueName": "team", **scheduling},
        },
    }


def create(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return get(kubectl, "trainingjob", name, namespace).get("status", {})


def condition(kubectl: Kubectl, namespace: str, name: str, type_: str) -> dict[str, Any]:
    conditions = status(kubectl, namespace, name).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), {})


def pods(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl(
        "get", "pods", "-n", namespace, "-l", f"trainforge.io/job-name={name}", "-o", "json"
    )
    return json.loads(out.stdout)["items"]


def wait_running(kubectl: Kubectl, namespace: str, name: str, workers: int = 2) -> None:
    def ready() -> bool:
        live = [
            p
            for p in pods(kubectl, namespace, name)
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        return len(live) == workers and status(kubectl, namespace, name).get("phase") == "Running"

    wait_for(ready, f"TrainingJob {name} running with {workers} workers", timeout=90)


def wait_queued(kubectl: Kubectl, namespace: str, name: str, reason: str) -> dict[str, Any]:
    wait_for(
        lambda: (
            condition(kubectl, namespace, name, "Suspended").get("reason") == reason
            and not pods(kubectl, namespace, name)
        ),
        f"TrainingJob {name} suspended by Kueue ({reason}) with no workers",
        timeout=90,
    )
    return condition(kubectl, namespace, name, "Suspended")


def workload(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return get(kubectl, "workloads.kueue.x-k8s.io", name, namespace)


def test_quota_admits_one_gang_and_queues_the_next_until_it_frees(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    make_queue(kubectl, namespace, gpus=8)
    create(kubectl, namespace, job("first"))
    wait_running(kubectl, namespace, "first")
    admission = workload(kubectl, namespace, "first")["status"]["admission"]
    assert admission["clusterQueue"] == namespace

    # The second gang does not fit next to the first: no worker exists, and the job says why
    # in Kueue's own words.
    create(kubectl, namespace, job("second"))
    queued = wait_queued(kubectl, namespace, "second", "WaitingForKueue")
    wait_for(
        lambda: (
            "insufficient"
            in condition(kubectl, namespace, "second", "Suspended").get("message", "").lower()
        ),
        "Kueue's reason (insufficient quota) in the job's Suspended condition",
    )
    assert "team" in queued["message"]
    # The queued Workload is the one the operator made, not replaced on every resync (5 s).
    uid = workload(kubectl, namespace, "second")["metadata"]["uid"]
    time.sleep(6)
    assert workload(kubectl, namespace, "second")["metadata"]["uid"] == uid

    # Suspending the first job deactivates its Workload: Kueue evicts it, the operator hands
    # the quota back once its workers are gone, and the second gang starts.
    kubectl("patch", "trainingjob", "first", "-n", namespace, "--type=merge", "-p",
            '{"spec":{"suspend":true}}')  # fmt: skip
    wait_running(kubectl, namespace, "second")
    assert not pods(kubectl, namespace, "first")
    assert status(kubectl, namespace, "second").get("restarts", 0) == 0
    assert status(kubectl, namespace, "first").get("restarts", 0) == 0


def test_preempted_gang_stops_gracefully_and_resumes_without_counting_a_failure(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    low, high = f"{namespace}-low", f"{namespace}-high"
    apply_objects(
        kubectl,
        *(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
            for name, value in ((low, 100), (high, 1000))
        ),
    )
    try:
        make_queue(kubectl, namespace, gpus=8)
        create(kubectl, namespace, job("research", priorityClassName=low))
        wait_running(kubectl, namespace, "research")
        first_gang = {p["metadata"]["uid"] for p in pods(kubectl, namespace, "research")}

        create(kubectl, namespace, job("deadline", priorityClassName=high))
        evicted = wait_queued(kubectl, namespace, "research", "EvictedByKueue")
        assert "Preempted" in evicted["message"], evicted
        wait_running(kubectl, namespace, "deadline")
        after = status(kubectl, namespace, "research")
        assert after.get("restarts", 0) == 0, after  # a preemption is not a failure
        assert after["restartAttempt"] == 1, after  # the next gang resumes from a checkpoint
        requeued = workload(kubectl, namespace, "research")["status"]["conditions"]
        assert any(c["type"] == "Requeued" and c["status"] == "True" for c in requeued)

        # The urgent job goes; the preempted one is admitted again with a fresh gang.
        kubectl("delete", "trainingjob", "deadline", "-n", namespace)
        wait_running(kubectl, namespace, "research")
        resumed = status(kubectl, namespace, "research")
        assert resumed.get("restarts", 0) == 0 and resumed["restartAttempt"] == 1, resumed
        second_gang = {p["metadata"]["uid"] for p in pods(kubectl, namespace, "research")}
        assert not first_gang & second_gang
    finally:
        kubectl("delete", "priorityclass", low, high, check=False)


def test_finished_job_releases_its_quota(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    make_queue(kubectl, namespace, gpus=8)
    create(kubectl, namespace, job("done"))
    wait_running(kubectl, namespace, "done")
    create(kubectl, namespace, job("next"))
    wait_queued(kubectl, namespace, "next", "WaitingForKueue")
    for pod in pods(kubectl, namespace, "done"):  # every worker exits 0 (hack/cluster/kwok.yaml)
        kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace,
                "trainforge.test/exit-code=0")  # fmt: skip
    wait_for(
        lambda: status(kubectl, namespace, "done").get("phase") == "Succeeded",
        "the first job to succeed",
    )
    wait_for(
        lambda: any(
            c["type"] == "Finished" and c["status"] == "True"
            for c in workload(kubectl, namespace, "done").get("status", {}).get("conditions", [])
        ),
        "the finished job's Workload to say Finished",
    )
    wait_running(kubectl, namespace, "next")


def test_without_the_kueue_integration_the_job_stalls_with_the_fix(
    cluster: Cluster, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    op = start_operator(cluster.kubeconfig, tmp_path / "operator.log")
    try:
        create(kubectl, namespace, job("nokueue"))
        wait_for(
            lambda: (
                condition(kubectl, namespace, "nokueue", "Stalled").get("reason")
                == "KueueNotEnabled"
            ),
            "a Stalled condition naming the missing Kueue integration",
        )
        assert (
            "kueue.enabled=true" in condition(kubectl, namespace, "nokueue", "Stalled")["message"]
        )
        assert not pods(kubectl, namespace, "nokueue")
    finally:
        op.stop()
