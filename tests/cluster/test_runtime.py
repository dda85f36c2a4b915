"""TrainingRuntimes against the real control plane (KWOK runs the pods): a job that names a
runtime gets the runtime's pods, may override what the runtime leaves open and is Stalled
when it overrides a locked field, waits (Stalled) for a runtime that does not exist yet, and
keeps running unchanged when the runtime is edited."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetest import Kubectl, wait_for

REPO = Path(__file__).resolve().parents[2]
SELECTOR = "trainforge.io/job-name={job}"


def get_job(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "trainingjob", name, "-n", ns, "-o", "json").stdout)


def condition(kubectl: Kubectl, ns: str, name: str, type_: str) -> dict[str, Any]:
    conditions = get_job(kubectl, ns, name).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), {})


def running_pods(kubectl: Kubectl, ns: str, job: str, count: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        out = kubectl("get", "pods", "-n", ns, "-l", SELECTOR.format(job=job), "-o", "json")
        pods = [
            p
            for p in json.loads(out.stdout)["items"]
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        return sorted(pods, key=lambda p: p["metadata"]["name"]) if len(pods) == count else None

    return wait_for(ready, f"{count} running workers of {job}")  # type: ignore[return-value]


def pod_names(kubectl: Kubectl, ns: str, job: str) -> list[str]:
    out = kubectl("get", "pods", "-n", ns, "-l", SELECTOR.format(job=job), "-o", "name")
    return out.stdout.split()


def apply(kubectl: Kubectl, ns: str, *objects: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objects))


def trainer(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "trainer")


def runtime(kind: str, name: str, template: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"template": template, **spec},
    }


def job(name: str, ref: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"runtimeRef": ref, **spec},
    }


SMALL = {
    "image": "example.com/trainer:1",
    "resources": {"gpusPerWorker": 1, "requests": {"cpu": "100m", "memory": "128Mi"}},
    "env": [{"name": "TEAM", "value": "platform"}],
}


@pytest.fixture
def cluster_runtimes(kubectl: Kubectl) -> Iterator[list[str]]:
    """Names of ClusterTrainingRuntimes a test creates; deleted afterwards."""
    names: list[str] = []
    yield names
    if names:
        kubectl("delete", "clustertrainingruntime", *names, "--ignore-not-found", check=False)


def test_the_five_line_example_runs_on_the_charts_rdma_runtime(
    kubectl: Kubectl, namespace: str, operator: Any, cluster_runtimes: list[str]
) -> None:
    example = (REPO / "examples" / "trainingjob-runtime.yaml").read_text()
    assert len(example.splitlines()) == 5
    values = yaml.safe_load((REPO / "helm" / "trainforge" / "values.yaml").read_text())
    chart = values["exampleRuntime"]
    cluster_runtimes.append(chart["name"])
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(
            runtime(
                "ClusterTrainingRuntime", chart["name"], chart["template"], locked=chart["locked"]
            )
        ),
    )
    apply(
        kubectl,
        namespace,
        *(
            {
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": net["name"]},
                "spec": {"config": '{"cniVersion": "0.3.1"}'},
            }
            for net in chart["template"]["network"]["rdma"]["networks"]
        ),
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=example)  # as is
    name = yaml.safe_load(example)["metadata"]["name"]

    pods = running_pods(kubectl, namespace, name, 2)
    container = trainer(pods[0])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NCCL_IB_HCA"] == "mlx5_0:1,mlx5_1:1"
    networks = json.loads(pods[0]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert [n["name"] for n in networks] == ["rdma-rail-0", "rdma-rail-1"]
    assert len({p["spec"]["nodeName"] for p in pods}) == 2  # spreadWorkers
    claim = json.loads(
        kubectl("get", "pvc", f"{name}-checkpoints", "-n", namespace, "-o", "json").stdout
    )
    assert claim["spec"]["resources"]["requests"]["storage"] == "500Gi"

    # The documented way to see what runs: kubectl get tj -o yaml.
    status = yaml.safe_load(kubectl("get", "tj", name, "-n", namespace, "-o", "yaml").stdout)[
        "status"
    ]
    assert status["runtime"]["kind"] == "ClusterTrainingRuntime"
    assert status["runtime"]["name"] == chart["name"]
    assert status["effectiveSpec"]["resources"]["gpusPerWorker"] == 8
    assert status["effectiveSpec"]["trainer"]["maxSteps"] == 10000
    assert "runtimeRef" not in status["effectiveSpec"]

    explained = " ".join(kubectl("explain", "trainingjob.spec.runtimeRef").stdout.split())
    assert "Take every field this job does not set from a TrainingRuntime or" in explained
    explained = " ".join(kubectl("explain", "clustertrainingruntime.spec.locked").stdout.split())
    assert "is Stalled (reason RuntimeLocked)" in explained


def test_a_job_overrides_what_the_runtime_allows_and_is_stalled_on_a_locked_field(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    ref = {"kind": "TrainingRuntime", "name": "small"}
    apply(kubectl, namespace, runtime("TrainingRuntime", "small", SMALL, locked=["image"]))
    apply(
        kubectl,
        namespace,
        job(
            "allowed",
            ref,
            workers=2,
            env=[{"name": "TEAM", "value": "nlp"}],
            resources={"gpusPerWorker": 2},
        ),
        job("refused", ref, image="example.com/mine:1"),
    )
    pods = running_pods(kubectl, namespace, "allowed", 2)
    container = trainer(pods[0])
    assert container["image"] == "example.com/trainer:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["cpu"] == "100m"  # the runtime's, kept
    assert {"name": "TEAM", "value": "nlp"} in container["env"]

    wait_for(
        lambda: (
            condition(kubectl, namespace, "refused", "Stalled").get("reason") == "RuntimeLocked"
        ),
        "the locked override to be Stalled",
    )
    message = condition(kubectl, namespace, "refused", "Stalled")["message"]
    assert message.startswith("spec.image: TrainingRuntime small locks image")
    assert "remove spec.image from the TrainingJob" in message
    assert pod_names(kubectl, namespace, "refused") == []
    # The fix the message names: the job starts.
    kubectl(
        "patch", "tj", "refused", "-n", namespace, "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/image"}]',
    )  # fmt: skip
    pods = running_pods(kubectl, namespace, "refused", 1)
    assert trainer(pods[0])["image"] == "example.com/trainer:1"
    assert condition(kubectl, namespace, "refused", "Stalled")["status"] == "False"


def test_a_missing_runtime_is_stalled_and_the_job_starts_once_it_exists(
    kubectl: Kubectl, namespace: str, operator: Any, cluster_runtimes: list[str]
) -> None:
    name = f"later-{uuid.uuid4().hex[:5]}"
    apply(kubectl, namespace, job("waits", {"name": name}, workers=2))
    wait_for(
        lambda: (
            condition(kubectl, namespace, "waits", "Stalled").get("reason") == "RuntimeNotFound"
        ),
        "the missing runtime to be Stalled",
    )
    message = condition(kubectl, namespace, "waits", "Stalled")["message"]
    assert f"spec.runtimeRef: ClusterTrainingRuntime {name} does not exist" in message
    assert pod_names(kubectl, namespace, "waits") == []

    cluster_runtimes.append(name)
    kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(runtime("ClusterTrainingRuntime", name, SMALL))
    )
    running_pods(kubectl, namespace, "waits", 2)
    assert condition(kubectl, namespace, "waits", "Stalled")["status"] == "False"


def test_editing_the_runtime_does_not_change_a_running_job(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    ref = {"kind": "TrainingRuntime", "name": "edited"}
    apply(kubectl, namespace, runtime("TrainingRuntime", "edited", SMALL))
    apply(kubectl, namespace, job("steady", ref, workers=2))
    before = running_pods(kubectl, namespace, "steady", 2)
    uids = {p["metadata"]["uid"] for p in before}

    apply(
        kubectl,
        namespace,
        runtime("TrainingRuntime", "edited", {**SMALL, "image": "example.com/trainer:2"}),
    )
    # Make the operator reconcile the job now (a metadata change), then give it time to act.
    kubectl("annotate", "tj", "steady", "-n", namespace, "poke=1")
    wait_for(
        lambda: get_job(kubectl, namespace, "steady")["metadata"]["annotations"].get("poke"),
        "the annotation",
    )
    time.sleep(5)  # what must not happen: a restart of the gang with the new image
    after = running_pods(kubectl, namespace, "steady", 2)
    assert {p["metadata"]["uid"] for p in after} == uids
    assert {trainer(p)["image"] for p in after} == {"example.com/trainer:1"}
    status = get_job(kubectl, namespace, "steady")["status"]
    assert status["runtime"]["generation"] == 1
    assert status["effectiveSpec"]["image"] == "example.com/trainer:1"

    # Suspend and resume: the documented way to move a job to the runtime's new version.
    kubectl(
        "patch", "tj", "steady", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_for(lambda: not pod_names(kubectl, namespace, "steady"), "the suspended job's pods to go")
    kubectl(
        "patch", "tj", "steady", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    resumed = running_pods(kubectl, namespace, "steady", 2)
    assert {trainer(p)["image"] for p in resumed} == {"example.com/trainer:2"}
    assert get_job(kubectl, namespace, "steady")["status"]["runtime"]["generation"] == 2
