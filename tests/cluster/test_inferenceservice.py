"""The InferenceService operator against the real control plane: KWOK runs the server pods
(Running and Ready), the real controller-manager runs the Deployments, the HPA and the garbage
collector; PVCs bind from the local cluster's pool of volumes."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetest import Cluster, Kubectl, Operator, start_operator, wait_for

pytestmark = pytest.mark.cluster

CHECKPOINT = {"step": 5, "path": "/checkpoints/step-00000005", "time": "2026-11-23T00:00:00Z"}


def apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def inference_service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"image": "example.com/trainer:1", **spec},
    }


def claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    result = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def get_service(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    found = get(kubectl, namespace, "inferenceservice", name)
    assert found is not None, f"InferenceService {name} is gone"
    return found


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def wait_condition(
    kubectl: Kubectl, namespace: str, name: str, type_: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    wait_for(
        lambda: condition(get_service(kubectl, namespace, name), type_).get("status") == status,
        f"InferenceService {name} to have {type_}={status}",
        timeout=timeout,
    )
    return get_service(kubectl, namespace, name)


def wait_ready(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    kubectl(
        "wait", "--for=condition=Ready", f"infsvc/{name}", "-n", namespace, "--timeout=60s",
        timeout=70,
    )  # fmt: skip
    return get_service(kubectl, namespace, name)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    return server


def server_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var.get("value", "") for var in container(deployment)["env"]}


def test_service_from_a_pvc_becomes_ready(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, claim("ckpt"))
    apply(
        kubectl,
        namespace,
        inference_service(
            "chat",
            model={"claimName": "ckpt", "path": "runs/gpt", "name": "gpt"},
            replicas=2,
            resources={"gpus": 1, "requests": {"cpu": "1", "memory": "1Gi"}},
        ),
    )
    svc = wait_ready(kubectl, namespace, "chat")

    status = svc["status"]
    assert status["url"] == f"http://chat.{namespace}.svc.cluster.local"
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["observedGeneration"] == svc["metadata"]["generation"]
    assert status["model"] == {"claimName": "ckpt", "path": "/checkpoints/runs/gpt"}
    assert condition(svc, "ModelLoaded")["status"] == "True"
    assert condition(svc, "Stalled")["status"] == "False"
    assert condition(svc, "Ready")["message"] == "2/2 replicas available"

    deployment = get(kubectl, namespace, "deployment", "chat")
    assert deployment is not None
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("InferenceService", "chat", True)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    server = container(deployment)
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "startupProbe" in server
    assert server["volumeMounts"][0]["readOnly"] is True
    assert str(server["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    env = server_env(deployment)
    assert (env["TRAINFORGE_CHECKPOINT_DIR"], env["TRAINFORGE_SERVE_MODEL_NAME"]) == (
        "/checkpoints/runs/gpt",
        "gpt",
    )
    pods = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", status["selector"], "-o", "json").stdout
    )["items"]
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"].startswith("kwok-gpu-") for p in pods)

    service = get(kubectl, namespace, "service", "chat")
    assert service is not None
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 80
    assert get(kubectl, namespace, "pdb", "chat") is not None
    assert get(kubectl, namespace, "hpa", "chat") is None

    # The printer columns show what a user looks for first.
    row = kubectl("get", "infsvc", "chat", "-n", namespace, "--no-headers").stdout.split()
    assert row[:3] == ["chat", "True", "2"]
    events = json.loads(
        kubectl(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=chat",
            "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    reasons = [event["reason"] for event in events]
    assert reasons.count("Created") == 1, reasons
    assert "ModelLoaded" in reasons


def test_a_vllm_runtime_service_runs_vllm_over_the_export_and_becomes_ready(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, claim("llm-ckpt"))
    apply(
        kubectl,
        namespace,
        inference_service(
            "llm",
            image="vllm/vllm-openai:v0.11.0",
            model={"claimName": "llm-ckpt", "path": "runs/llama", "name": "llama-ft"},
            resources={"gpus": 1},
            server={"runtime": "vllm", "vllmArgs": ["--max-model-len", "4096"]},
        ),
    )
    svc = wait_ready(kubectl, namespace, "llm")
    assert condition(svc, "Ready")["message"] == "1/1 replicas available"
    assert svc["status"]["url"] == f"http://llm.{namespace}.svc.cluster.local"

    deployment = get(kubectl, namespace, "deployment", "llm")
    assert deployment is not None
    server = container(deployment)
    assert server["image"] == "vllm/vllm-openai:v0.11.0"
    assert server["command"][:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = server["command"][3:]
    assert args[args.index("--model") + 1] == "/checkpoints/runs/llama/hf"
    assert args[args.index("--served-model-name") + 1] == "llama-ft"
    assert args[-2:] == ["--max-model-len", "4096"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"
    assert server_env(deployment) == {"HF_HUB_OFFLINE": "1"}
    assert str(server["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert server["volumeMounts"][0]["readOnly"] is True


def test_kubectl_scale_changes_the_deployment(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, claim("ckpt"))
    apply(kubectl, namespace, inference_service("scaled", model={"claimName": "ckpt"}))
    wait_ready(kubectl, namespace, "scaled")
    assert get(kubectl, namespace, "pdb", "scaled") is None  # one replica: nothing to protect

    kubectl("scale", "infsvc/scaled", "-n", namespace, "--replicas=3")
    wait_for(
        lambda: (get(kubectl, namespace, "deployment", "scaled") or {})["spec"]["replicas"] == 3,
        "the Deployment to be scaled to 3",
    )
    wait_for(
        lambda: get_service(kubectl, namespace, "scaled")["status"]["readyReplicas"] == 3,
        "3 ready replicas in the status",
    )
    svc = wait_ready(kubectl, namespace, "scaled")
    assert svc["status"]["replicas"] == 3
    assert get(kubectl, namespace, "pdb", "scaled") is not None
    scale = json.loads(
        kubectl(
            "get", "infsvc", "scaled", "-n", namespace, "--subresource=scale", "-o", "json"
        ).stdout
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == svc["status"]["selector"]

    # Scaling to zero stops every server and is not an error.
    kubectl("scale", "infsvc/scaled", "-n", namespace, "--replicas=0")
    wait_for(
        lambda: (
            condition(get_service(kubectl, namespace, "scaled"), "Ready").get("reason")
            == "ScaledToZero"
        ),
        "Ready with reason ScaledToZero",
    )
    assert (get(kubectl, namespace, "deployment", "scaled") or {})["spec"]["replicas"] == 0


def test_the_autoscaler_drives_spec_replicas_through_the_scale_subresource(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, claim("ckpt"))
    apply(
        kubectl,
        namespace,
        inference_service(
            "auto",
            model={"claimName": "ckpt"},
            autoscaling={"minReplicas": 2, "maxReplicas": 4},
            resources={"requests": {"cpu": "500m"}},
        ),
    )
    wait_for(lambda: get(kubectl, namespace, "hpa", "auto"), "the HorizontalPodAutoscaler")
    hpa = get(kubectl, namespace, "hpa", "auto")
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "InferenceService"
    # spec.replicas defaults to 1; the HPA controller raises it to minReplicas through the
    # scale subresource (no metrics server is needed for that).
    wait_for(
        lambda: get_service(kubectl, namespace, "auto")["spec"]["replicas"] == 2,
        "the HPA to set spec.replicas to minReplicas",
        timeout=90,
    )
    wait_for(
        lambda: get_service(kubectl, namespace, "auto")["status"]["readyReplicas"] == 2,
        "2 ready replicas",
    )

    kubectl("patch", "infsvc", "auto", "-n", namespace, "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/autoscaling"}]')  # fmt: skip
    wait_for(lambda: get(kubectl, namespace, "hpa", "auto") is None, "the HPA to be deleted")


def test_a_spec_change_updates_the_deployment_in_place(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, claim("ckpt"))
    spec: dict[str, Any] = {
        "model": {"claimName": "ckpt"},
        "podTemplate": {"spec": {"nodeSelector": {"type": "kwok"}}},
    }
    apply(kubectl, namespace, inference_service("rolling", **spec))
    wait_ready(kubectl, namespace, "rolling")
    before = get(kubectl, namespace, "deployment", "rolling")
    assert before is not None

    # A new batch size and no more nodeSelector: fields the operator stops rendering go too.
    apply(
        kubectl,
        namespace,
        inference_service("rolling", model={"claimName": "ckpt"}, server={"maxBatchSize": 4}),
    )

    def updated() -> dict[str, Any] | None:
        deployment = get(kubectl, namespace, "deployment", "rolling")
        env = server_env(deployment) if deployment else {}
        return deployment if env.get("TRAINFORGE_SERVE_MAX_BATCH_SIZE") == "4" else None

    after: dict[str, Any] = wait_for(updated, "the Deployment to be updated")  # type: ignore[assignment]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # updated, not recreated
    assert "nodeSelector" not in after["spec"]["template"]["spec"]
    wait_for(
        lambda: (
            condition(get_service(kubectl, namespace, "rolling"), "Ready").get("status") == "True"
            and get_service(kubectl, namespace, "rolling")["status"]["observedGeneration"] == 2
        ),
        "Ready at generation 2",
    )


@contextlib.contextmanager
def without_resync(cluster: Cluster, operator: Operator, log: Path) -> Iterator[Operator]:
    """Swap the module's operator for one whose periodic resync never comes during the test,
    so only watch events can make it act."""
    operator.stop()
    quiet = start_operator(cluster.kubeconfig, log, "--resync-seconds=3600")
    try:
        yield quiet
    finally:
        quiet.stop()
        assert "Traceback" not in quiet.logs(), quiet.logs()[-5000:]
        restarted = start_operator(cluster.kubeconfig, operator.log)
        operator.process = restarted.process
        operator.metrics_port = restarted.metrics_port


def test_from_training_job_waits_for_a_checkpoint_then_deploys(
    cluster: Cluster, operator: Operator, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    with without_resync(cluster, operator, tmp_path / "operator.log"):
        _serve_from_training_job(kubectl, namespace)


def _serve_from_training_job(kubectl: Kubectl, namespace: str) -> None:
    apply(
        kubectl,
        namespace,
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "llm"},
            "spec": {
                "workers": 1,
                "image": "example.com/trainer:1",
                "checkpoint": {"volumeClaimTemplate": {"size": "1Gi"}},
            },
        },
    )
    apply(
        kubectl,
        namespace,
        inference_service("llm-serve", model={"fromTrainingJob": "llm", "name": "llm"}),
    )
    svc = wait_condition(kubectl, namespace, "llm-serve", "Reconciling", "True")
    loaded = condition(svc, "ModelLoaded")
    assert (loaded["status"], loaded["reason"]) == ("False", "WaitingForCheckpoint")
    assert "TrainingJob llm has not committed a checkpoint yet" in loaded["message"]
    assert condition(svc, "Stalled")["status"] == "False"
    assert condition(svc, "Ready")["status"] == "False"

    wait_for(
        lambda: (
            (get(kubectl, namespace, "pod", "llm-worker-0") or {}).get("status", {}).get("phase")
            == "Running"
        ),
        "the training worker to run",
    )
    time.sleep(3)  # a few reconciles later there is still nothing deployed
    assert get(kubectl, namespace, "deployment", "llm-serve") is None

    kubectl(
        "annotate", "pod", "llm-worker-0", "-n", namespace, "trainforge.test/exit-code=0",
        f"trainforge.test/termination-message={json.dumps({'step': 5, 'checkpoint': CHECKPOINT})}",
    )  # fmt: skip
    svc = wait_ready(kubectl, namespace, "llm-serve")
    assert svc["status"]["model"] == {
        "trainingJob": "llm",
        "claimName": "llm-checkpoints",
        "path": "/checkpoints/step-00000005",
        "step": 5,
    }
    assert condition(svc, "ModelLoaded")["status"] == "True"
    deployment = get(kubectl, namespace, "deployment", "llm-serve")
    assert deployment is not None
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert volume["persistentVolumeClaim"] == {"claimName": "llm-checkpoints", "readOnly": True}
    assert server_env(deployment)["TRAINFORGE_CHECKPOINT_DIR"] == "/checkpoints"
    row = kubectl("get", "infsvc", "llm-serve", "-n", namespace, "--no-headers").stdout.split()
    assert row[4] == "5"  # the Model step column
    events = kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=llm-serve",
        "-o", "json",
    ).stdout  # fmt: skip
    assert "NewCheckpoint" in events


def test_missing_references_stall_with_the_fix_and_recover(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, inference_service("orphan", model={"claimName": "later"}))
    apply(kubectl, namespace, inference_service("nojob", model={"fromTrainingJob": "nope"}))
    svc = wait_condition(kubectl, namespace, "orphan", "Stalled", "True")
    assert condition(svc, "Stalled")["message"] == (
        f"spec.model.claimName: PersistentVolumeClaim {namespace}/later does not exist; "
        "create it or fix the name"
    )
    assert condition(svc, "ModelLoaded")["reason"] == "ClaimNotFound"
    svc = wait_condition(kubectl, namespace, "nojob", "Stalled", "True")
    assert condition(svc, "Stalled")["message"].startswith(
        f"spec.model.fromTrainingJob: TrainingJob {namespace}/nope does not exist"
    )
    assert get(kubectl, namespace, "deployment", "orphan") is None

    apply(kubectl, namespace, claim("later"))
    svc = wait_ready(kubectl, namespace, "orphan")
    assert condition(svc, "Stalled")["status"] == "False"


def test_a_name_taken_by_another_deployment_is_reported_not_adopted(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "deployment", "taken", "--image=example.com/other:1", "-n", namespace)
    apply(kubectl, namespace, claim("ckpt"))
    apply(kubectl, namespace, inference_service("taken", model={"claimName": "ckpt"}))
    svc = wait_condition(kubectl, namespace, "taken", "Stalled", "True")
    assert condition(svc, "Stalled")["reason"] == "NameConflict"
    assert f"Deployment {namespace}/taken already exists" in condition(svc, "Stalled")["message"]
    other = get(kubectl, namespace, "deployment", "taken")
    assert other is not None
    assert "ownerReferences" not in other["metadata"]
    assert container(other)["image"] == "example.com/other:1"

    kubectl("delete", "deployment", "taken", "-n", namespace)
    wait_ready(kubectl, namespace, "taken")


def test_deleting_the_service_deletes_its_children(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, claim("ckpt"))
    apply(kubectl, namespace, inference_service("brief", model={"claimName": "ckpt"}, replicas=2))
    wait_ready(kubectl, namespace, "brief")
    kubectl("delete", "infsvc", "brief", "-n", namespace)
    wait_for(
        lambda: all(
            get(kubectl, namespace, kind, "brief") is None
            for kind in ("deployment", "service", "pdb")
        ),
        "the garbage collector to delete the children",
    )


def test_a_child_the_api_server_rejects_stalls_with_its_message(
    operator: Operator, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, claim("ckpt"))
    overlay = {"spec": {"containers": [{"name": "server", "imagePullPolicy": "Sometimes"}]}}
    apply(
        kubectl,
        namespace,
        inference_service("rejected", model={"claimName": "ckpt"}, podTemplate=overlay),
    )
    svc = wait_condition(kubectl, namespace, "rejected", "Stalled", "True")
    stalled = condition(svc, "Stalled")
    assert stalled["reason"] == "ChildRejected"
    assert "imagePullPolicy" in stalled["message"]
    assert "fix spec.podTemplate" in stalled["message"]
    assert get(kubectl, namespace, "deployment", "rejected") is None

    kubectl("patch", "infsvc", "rejected", "-n", namespace, "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/podTemplate"}]')  # fmt: skip
    svc = wait_ready(kubectl, namespace, "rejected")
    assert condition(svc, "Stalled")["status"] == "False"
