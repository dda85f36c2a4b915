"""An InferenceService serving a TrainingJob's checkpoints on the real node: the trainer image
as the server, the job's claim mounted read-only, Ready once the model is loaded, an Open
Inference Protocol V2 infer request through `kubectl port-forward` to its Service, and a
newer checkpoint picked up without a restart."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import yaml
from realnode_helpers import describe_pods, get, port_forward, training_job, wait_phase

from kubetest import Cluster, Kubectl, wait_for

# The session's first test also waits for the real node and any image rebuild.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


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


def test_serves_the_jobs_checkpoint_and_hot_reloads_a_newer_one(
    operator_release: str, real_cluster: Cluster, real_kubectl: Kubectl, real_namespace: str
) -> None:
    ns = real_namespace
    real_kubectl("apply", "-n", ns, "-f", "-", input=training_job("src", steps=200, every=100))
    # The operator learns a job's committed checkpoint from its workers' termination
    # messages, so a fromTrainingJob service deploys once the job has ended (see the report
    # in docs/real-node.md); the newer checkpoint then comes from a job that continues it.
    wait_phase(real_kubectl, ns, "src", "Succeeded", timeout=300)
    real_kubectl("apply", "-n", ns, "-f", "-", input=inference_service("serve", "src"))
    try:
        wait_for(
            lambda: (
                condition(get(real_kubectl, ns, "infsvc", "serve"), "Ready").get("status") == "True"
            ),
            "the InferenceService to be Ready",
            timeout=300,
            interval=1,
        )
    except AssertionError as e:
        raise AssertionError(
            f"{e}\n{json.dumps(get(real_kubectl, ns, 'infsvc', 'serve').get('status'))}\n"
            f"{describe_pods(real_kubectl, ns)}"
        ) from None
    pods = json.loads(
        real_kubectl("get", "pods", "-n", ns, "-l", "!trainforge.io/job-name", "-o", "json").stdout
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    server = pods[0]
    mounts = server["spec"]["containers"][0]["volumeMounts"]
    assert any(m.get("readOnly") for m in mounts if "checkpoint" in m["name"]), mounts

    with port_forward(real_cluster.kubeconfig, ns, "service/serve", 80) as port:
        status, meta = http(port, "/v2/models/mlp")
        assert status == 200
        first = int(meta["versions"][0])
        assert first == 200, meta
        rows = [[0.1 * i for i in range(32)], [0.0] * 32]
        status, answer = http(
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
        assert status == 200
        assert answer["outputs"][0]["shape"] == [2, 4], answer

        # Training continues on the same claim (resumes at 200): the server must pick up
        # the newer checkpoints by itself.
        more = yaml.safe_load(training_job("more", steps=400, every=100))
        more["spec"]["checkpoint"] = {"claimName": "src-checkpoints", "everySteps": 100}
        real_kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(more))

        def newer() -> int:
            return max(0, int(http(port, "/v2/models/mlp")[1]["versions"][0]) - first)

        wait_for(newer, "the server to load a newer checkpoint", timeout=240, interval=2)
    after = json.loads(
        real_kubectl("get", "pod", "-n", ns, server["metadata"]["name"], "-o", "json").stdout
    )
    assert after["metadata"]["uid"] == server["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
