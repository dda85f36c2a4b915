"""Live progress against the real control plane: a running worker pushes its progress with the
trainer's own client (trainforge_trainer.push), authenticated as the pod by a token the API
server binds to it; the operator checks it with a TokenReview. KWOK runs the pods, so the test
plays rank 0."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubetest import Cluster, Kubectl, Operator, free_port, start_operator, wait_for
from trainforge_trainer.push import push_progress

AUDIENCE = "trainforge-progress"


@pytest.fixture(scope="module")
def progress_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1/progress"


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, progress_url: str
) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    port = progress_url.split(":")[2].split("/")[0]
    op = start_operator(
        cluster.kubeconfig, log, f"--progress-port={port}", f"--progress-url={progress_url}"
    )
    yield op
    op.stop()
    assert "Traceback" not in op.logs(), op.logs()[-5000:]


def apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def training_job(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "workers": 1,
            "image": "example.com/trainer:1",
            "resources": {"gpusPerWorker": 1, "requests": {"cpu": "1", "memory": "1Gi"}},
            "checkpoint": {"volumeClaimTemplate": {"size": "1Gi"}},
            **spec,
        },
    }


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


def running_worker(kubectl: Kubectl, namespace: str, job: str, attempt: int = 0) -> dict:
    def ready() -> dict[str, Any] | None:
        pod = json.loads(
            kubectl(
                "get", "pod", f"{job}-worker-0", "-n", namespace, "-o", "json", check=False
            ).stdout
            or "{}"
        )
        labels = pod.get("metadata", {}).get("labels", {})
        if (
            pod.get("status", {}).get("phase") == "Running"
            and labels.get("trainforge.io/restart-attempt") == str(attempt)
            and not pod["metadata"].get("deletionTimestamp")
        ):
            return pod
        return None

    return wait_for(ready, f"{job}-worker-0 (attempt {attempt}) running")  # type: ignore[return-value]


def pod_token(kubectl: Kubectl, namespace: str, pod: str, audience: str = AUDIENCE) -> str:
    """What the kubelet puts in the projected volume: a token bound to the pod."""
    return kubectl(
        "create", "token", "default", "-n", namespace, "--bound-object-kind=Pod",
        f"--bound-object-name={pod}", f"--audience={audience}", "--duration=10m",
    ).stdout.strip()  # fmt: skip


def status(kubectl: Kubectl, namespace: str, job: str) -> dict[str, Any]:
    return get(kubectl, namespace, "trainingjob", job).get("status", {})


def test_a_running_workers_progress_and_checkpoint_reach_status_and_serving(
    operator: Operator, kubectl: Kubectl, namespace: str, progress_url: str
) -> None:
    apply(kubectl, namespace, training_job("llm"))
    pod = running_worker(kubectl, namespace, "llm")
    # The pod carries what the trainer needs: the URL and a projected token of our audience.
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["TRAINFORGE_PROGRESS_URL"] == progress_url
    sources = [s for v in pod["spec"]["volumes"] for s in v.get("projected", {}).get("sources", [])]
    assert {
        "serviceAccountToken": {"audience": AUDIENCE, "expirationSeconds": 600, "path": "token"}
    } in sources

    token = pod_token(kubectl, namespace, "llm-worker-0")
    record = {
        "step": 120,
        "totalSteps": 1000,
        "loss": 2.25,
        "samplesPerSecond": 512.0,
        "etaSeconds": 300.0,
        "transport": "Socket",
        "checkpoint": {"step": 100, "path": "step-00000100", "time": "2026-11-30T12:00:00Z"},
    }
    code, body = push_progress(progress_url, token, record)
    assert code == 200, body

    started = time.monotonic()
    live = wait_for(
        lambda: (
            (s := status(kubectl, namespace, "llm")).get("checkpoint", {}).get("step") == 100 and s
        ),
        "the pushed progress in status",
        timeout=45,  # one progress write per 30 s per job, at most
    )
    assert time.monotonic() - started <= 35
    progress = live["progress"]  # type: ignore[index]
    assert {k: progress[k] for k in record if k != "checkpoint"} == {
        k: v for k, v in record.items() if k != "checkpoint"
    }
    assert live["phase"] == "Running"  # type: ignore[index]
    columns = kubectl("get", "tj", "llm", "-n", namespace).stdout.split("\n")
    assert "STEP" in columns[0] and "CHECKPOINT" in columns[0]
    assert "120" in columns[1] and "100" in columns[1]

    # Serving follows the running job: its first live checkpoint is enough to deploy.
    apply(
        kubectl,
        namespace,
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "llm-serve"},
            "spec": {
                "image": "example.com/trainer:1",
                "model": {"fromTrainingJob": "llm", "name": "llm"},
            },
        },
    )
    deployment = wait_for(
        lambda: json.loads(
            kubectl(
                "get", "deployment", "llm-serve", "-n", namespace, "-o", "json", check=False
            ).stdout
            or "{}"
        ),
        "the InferenceService's Deployment while the job still runs",
    )
    assert "llm-checkpoints" in json.dumps(deployment)
    assert status(kubectl, namespace, "llm")["phase"] == "Running"
    # The servers get the push URL and a token too, and report the step they serve.
    [server] = wait_for(
        lambda: json.loads(
            kubectl(
                "get", "pods", "-n", namespace, "-l", "trainforge.io/inference-service=llm-serve",
                "-o", "json",
            ).stdout
        )["items"],
        "a server pod",
    )  # type: ignore[misc]  # fmt: skip
    env = {e["name"]: e.get("value") for e in server["spec"]["containers"][0]["env"]}
    assert env["TRAINFORGE_PROGRESS_URL"] == progress_url
    token = pod_token(kubectl, namespace, server["metadata"]["name"])
    # (Under a reload policy it also names the newest step it refused as worse.)
    code, body = push_progress(progress_url, token, {"servedStep": 100, "skippedStep": 120})
    assert code == 200 and f"InferenceService {namespace}/llm-serve" in body
    model = wait_for(
        lambda: (
            get(kubectl, namespace, "inferenceservice", "llm-serve")
            .get("status", {})
            .get("model", {})
            .get("servedStep")
            == 100
            and get(kubectl, namespace, "inferenceservice", "llm-serve")["status"]["model"]
        ),
        "status.model.servedStep from the server's report",
        timeout=35,
    )
    assert model["step"] == 100 and model["skippedStep"] == 120  # type: ignore[index]


def test_a_pod_reports_only_for_its_own_job(
    operator: Operator, kubectl: Kubectl, namespace: str, progress_url: str
) -> None:
    apply(kubectl, namespace, training_job("a"))
    apply(kubectl, namespace, training_job("b"))
    running_worker(kubectl, namespace, "a")
    running_worker(kubectl, namespace, "b")
    # A pod that claims to be b's worker by its labels, without being b's child.
    kubectl(
        "run", "forger", "-n", namespace, "--image=example.com/x:1",
        "--labels=app.kubernetes.io/managed-by=trainforge,trainforge.io/job-name=b",
    )  # fmt: skip
    kubectl("run", "plain", "-n", namespace, "--image=example.com/x:1")

    forger = pod_token(kubectl, namespace, "forger")
    wait_for(  # once the operator's pod watch has seen it
        lambda: (
            "not a worker of a known job" in push_progress(progress_url, forger, {"step": 6})[1]
        ),
        "the forged report refused as not b's worker",
    )
    code, body = push_progress(progress_url, pod_token(kubectl, namespace, "plain"), {"step": 666})
    assert code == 403 and "is not a TrainingJob worker" in body
    # A token for the API server (its default audience) is no progress token.
    api_token = kubectl(
        "create", "token", "default", "-n", namespace, "--bound-object-kind=Pod",
        "--bound-object-name=a-worker-0",
    ).stdout.strip()  # fmt: skip
    code, body = push_progress(progress_url, api_token, {"step": 666})
    assert code == 401, body
    code, _ = push_progress(progress_url, "not-a-token", {"step": 666})
    assert code == 401
    # a's worker naming b in its body still reports for a.
    code, body = push_progress(
        progress_url, pod_token(kubectl, namespace, "a-worker-0"), {"step": 7, "job": "b"}
    )
    assert code == 200 and f"TrainingJob {namespace}/a" in body
    wait_for(
        lambda: status(kubectl, namespace, "a").get("progress", {}).get("step") == 7,
        "a's progress",
        timeout=45,
    )
    assert "progress" not in status(kubectl, namespace, "b")


def test_a_job_whose_step_stops_is_restarted_with_no_progress(
    operator: Operator, kubectl: Kubectl, namespace: str, progress_url: str
) -> None:
    apply(
        kubectl,
        namespace,
        training_job("hung", failurePolicy={"maxRestarts": 2, "progressDeadlineSeconds": 30}),
    )
    running_worker(kubectl, namespace, "hung")
    code, body = push_progress(
        progress_url, pod_token(kubectl, namespace, "hung-worker-0"), {"step": 5}
    )
    assert code == 200, body
    # No further step: within the deadline (+ the 30 s write interval) the gang restarts.
    wait_for(
        lambda: status(kubectl, namespace, "hung").get("restarts") == 1,
        "a NoProgress gang restart",
        timeout=90,
    )
    events = json.loads(
        kubectl(
            "get", "events", "-n", namespace, "--field-selector=reason=GangRestarted", "-o", "json"
        ).stdout
    )["items"]  # fmt: skip
    assert [e["type"] for e in events] == ["Warning"]  # counted against maxRestarts
    assert "has not changed for 30s" in events[0]["message"], events[0]
    assert "last step 5" in events[0]["message"]
    running_worker(kubectl, namespace, "hung", attempt=1)


def nad(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name},
        "spec": {"config": '{"cniVersion": "0.3.1"}'},
    }


def network_status(*networks: tuple[str, str]) -> str:
    """What Multus writes on a pod it attached."""
    entries = [{"name": "cbr0", "interface": "eth0", "default": True}]
    entries += [{"name": n, "interface": i, "ips": ["192.168.0.9"]} for n, i in networks]
    return json.dumps(entries)


def rdma_job(name: str, require: bool = False) -> dict[str, Any]:
    return training_job(
        name,
        workers=2,
        network={
            "rdma": {
                "networks": [{"name": "rail-0"}, {"name": "rail-1"}],
                "resources": {"rdma/rdma_shared_device_a": 1},
                "requireRDMA": require,
            }
        },
    )


def condition(job_status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in job_status.get("conditions", []) if c["type"] == type_), {})


def test_rdma_attachments_and_transport_are_read_back(
    operator: Operator, kubectl: Kubectl, namespace: str, progress_url: str
) -> None:
    apply(kubectl, namespace, nad("rail-0"))
    apply(kubectl, namespace, nad("rail-1"))
    apply(kubectl, namespace, rdma_job("rdma"))
    running_worker(kubectl, namespace, "rdma")
    both = network_status((f"{namespace}/rail-0", "net1"), (f"{namespace}/rail-1", "net2"))
    one = network_status((f"{namespace}/rail-0", "net1"))
    kubectl(
        "annotate",
        "pod",
        "rdma-worker-0",
        "-n",
        namespace,
        f"k8s.v1.cni.cncf.io/network-status={both}",
    )
    kubectl(
        "annotate", "pod", "rdma-worker-1", "-n", namespace,
        f"k8s.v1.cni.cncf.io/network-status={one}",
    )  # fmt: skip

    missing = wait_for(
        lambda: (
            condition(status(kubectl, namespace, "rdma"), "RDMAAttached").get("reason")
            == "AttachmentMissing"
            and status(kubectl, namespace, "rdma")
        ),
        "RDMAAttached=False for the missing rail",
    )
    attached = condition(missing, "RDMAAttached")  # type: ignore[arg-type]
    assert f"rdma-worker-1: network {namespace}/rail-1 is not attached" in attached["message"]
    assert "rdma-worker-0" not in attached["message"]
    assert missing["networks"][0] == {  # type: ignore[index]
        "worker": "rdma-worker-0",
        "attachments": [
            {"network": f"{namespace}/rail-0", "interface": "net1"},
            {"network": f"{namespace}/rail-1", "interface": "net2"},
        ],
    }

    # NCCL says it runs over sockets: RDMA requested but not used.
    token = pod_token(kubectl, namespace, "rdma-worker-0")
    assert push_progress(progress_url, token, {"step": 3, "transport": "Socket"})[0] == 200
    wait_for(
        lambda: (
            condition(status(kubectl, namespace, "rdma"), "RDMAActive").get("reason")
            == "FellBackToTCP"
        ),
        "RDMAActive=False/FellBackToTCP",
        timeout=45,
    )
    assert status(kubectl, namespace, "rdma")["phase"] == "Running"

    # With requireRDMA a worker running without its attachments fails the job at once (on
    # KWOK nothing writes network-status; on a real node Multus writes it before the
    # containers start). The transport fallback's failure is unit-tested.
    apply(kubectl, namespace, rdma_job("strict", require=True))
    wait_for(
        lambda: status(kubectl, namespace, "strict").get("phase") == "Failed",
        "the requireRDMA job to fail",
    )
    failed = condition(status(kubectl, namespace, "strict"), "Failed")
    assert failed["reason"] == "RDMARequired"
    assert failed["message"].startswith("spec.network.rdma.requireRDMA is true: ")
    assert f"strict-worker-0: network {namespace}/rail-0 is not attached" in failed["message"]
