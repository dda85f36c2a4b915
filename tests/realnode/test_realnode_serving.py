"""A TrainingJob on the real node reporting live while it trains, and an InferenceService
serving its checkpoints meanwhile. Rank 0 pushes progress and every committed checkpoint to
the operator's progress Service (a ClusterIP routed by the node's kube-proxy), so status and
`kubectl get tj` follow the job before any pod ends; a `fromTrainingJob` service deploys from
the running job's checkpoint (the trainer image as the server, the job's claim mounted
read-only), answers an Open Inference Protocol V2 infer request through `kubectl
port-forward`, and picks up the job's newer checkpoints without a restart."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any

import pytest
import yaml
from realnode_helpers import describe_pods, get, port_forward, status, training_job, workers

from kubetest import Cluster, Kubectl, wait_for

# The session's first test also waits for the real node and any image rebuild.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

# Far more steps than the test lasts (an idle machine trains ~40 steps/s: 3,000 steps once
# ended before the server came up); the namespace's teardown stops the job. Checkpoints often
# enough to see a newer one.
STEPS, EVERY = 100_000, 100


def inference_service(name: str, job: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name},
            "spec": {
                "model": {"fromTrainingJob": job, "name": "mlp"},
                "replicas": 1,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            },
        }
    )


def http(port: int, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = obj.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), {})


def workers_running(kubectl: Kubectl, ns: str, job: str) -> bool:
    """Both workers of the job's first attempt run and none has ended yet: no container of
    theirs has a termination message the operator could have read status from."""
    pods = workers(kubectl, ns, job)
    return len(pods) == 2 and all(
        cs.get("state", {}).get("running") and not cs.get("lastState") and cs["restartCount"] == 0
        for pod in pods
        for cs in pod["status"].get("containerStatuses") or [{}]
    )


def printed_columns(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, str]:
    """What `kubectl get <kind> <name>` prints, by column header (headers such as MODEL STEP
    hold a single space; kubectl pads columns with at least three)."""
    header, row = kubectl("get", kind, name, "-n", ns).stdout.splitlines()
    starts = [(m.group(), m.start()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    ends = [start for _, start in starts[1:]] + [len(row)]
    return {name: row[start:end].strip() for (name, start), end in zip(starts, ends, strict=True)}


def model_status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return get(kubectl, ns, "infsvc", name).get("status", {}).get("model", {})


def test_a_running_jobs_progress_and_checkpoints_show_live_and_are_served_as_it_trains(
    operator_release: str, real_cluster: Cluster, real_kubectl: Kubectl, real_namespace: str
) -> None:
    ns = real_namespace
    started = time.monotonic()
    real_kubectl("apply", "-n", ns, "-f", "-", input=training_job("live", steps=STEPS, every=EVERY))

    def live_status(after_step: int) -> dict[str, Any] | None:
        current = status(real_kubectl, ns, "live")
        step = current.get("progress", {}).get("step", 0)
        running = workers_running(real_kubectl, ns, "live")
        return current if step > after_step and current.get("checkpoint") and running else None

    first = wait_for(lambda: live_status(0), "live progress and a checkpoint", 240, interval=1)
    assert isinstance(first, dict)
    print(f"live status after {time.monotonic() - started:.0f}s: {first['progress']}")
    assert first["phase"] == "Running", first
    assert first["progress"]["totalSteps"] == STEPS, first
    assert first["checkpoint"]["step"] % EVERY == 0, first
    # The step moves on while the pods run (one status write per 30 s per job).
    later = wait_for(
        lambda: live_status(first["progress"]["step"]), "the live step to advance", 90, interval=1
    )
    assert isinstance(later, dict)
    columns = printed_columns(real_kubectl, ns, "trainingjob", "live")
    assert columns["PHASE"] == "Running", columns
    assert int(columns["STEP"]) >= later["progress"]["step"], columns
    assert int(columns["CHECKPOINT"]) >= first["checkpoint"]["step"], columns
    assert workers_running(real_kubectl, ns, "live")
    print(f"kubectl get tj after {time.monotonic() - started:.0f}s: {columns}")

    # Serving the job while it trains: the newest committed checkpoint, then newer ones.
    real_kubectl("apply", "-n", ns, "-f", "-", input=inference_service("serve", "live"))

    def serving() -> dict[str, Any] | None:
        model = model_status(real_kubectl, ns, "serve")
        ready = condition(get(real_kubectl, ns, "infsvc", "serve"), "Ready").get("status")
        return model if ready == "True" and model.get("servedStep") is not None else None

    try:
        served = wait_for(serving, "the InferenceService to serve a checkpoint", 240, interval=1)
    except AssertionError as e:
        raise AssertionError(
            f"{e}\n{json.dumps(get(real_kubectl, ns, 'infsvc', 'serve').get('status'))}\n"
            f"{describe_pods(real_kubectl, ns)}"
        ) from None
    assert isinstance(served, dict)
    print(f"serving after {time.monotonic() - started:.0f}s: {served}")
    assert status(real_kubectl, ns, "live")["phase"] == "Running"
    assert workers_running(real_kubectl, ns, "live"), "the job ended before it was served"
    first_served = served["servedStep"]
    assert first_served >= first["checkpoint"]["step"] and first_served % EVERY == 0, served
    pods = json.loads(
        real_kubectl("get", "pods", "-n", ns, "-l", "!trainforge.io/job-name", "-o", "json").stdout
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    server = pods[0]
    mounts = server["spec"]["containers"][0]["volumeMounts"]
    assert any(m.get("readOnly") for m in mounts if "checkpoint" in m["name"]), mounts

    with port_forward(real_cluster.kubeconfig, ns, "service/serve", 80) as port:
        code, meta = http(port, "/v2/models/mlp")
        assert code == 200
        assert int(meta["versions"][0]) >= first_served, meta
        rows = [[0.1 * i for i in range(32)], [0.0] * 32]
        code, answer = http(
            port,
            "/v2/models/mlp/infer",
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 32],
                        "datatype": "FP32",
                        "data": [x for row in rows for x in row],
                    }
                ]
            },
        )
        assert code == 200
        assert answer["outputs"][0]["shape"] == [2, 4], answer

    # The job keeps committing checkpoints: the server loads them by itself, and status
    # says which step it serves.
    def follows() -> dict[str, Any] | None:
        model = model_status(real_kubectl, ns, "serve")
        return model if model.get("servedStep", 0) > first_served else None

    newer = wait_for(follows, "the server to serve a newer checkpoint", 180, interval=2)
    assert isinstance(newer, dict)
    print(f"followed after {time.monotonic() - started:.0f}s: {newer}")
    # A committed periodic checkpoint (servedStep may run ahead of step, the one the
    # operator last wrote: a server loads the newest checkpoint on the claim by itself).
    assert newer["servedStep"] % EVERY == 0, newer
    columns = printed_columns(real_kubectl, ns, "infsvc", "serve")
    assert int(columns["SERVED"]) >= newer["servedStep"], columns
    after = get(real_kubectl, ns, "pod", server["metadata"]["name"])
    assert after["metadata"]["uid"] == server["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
