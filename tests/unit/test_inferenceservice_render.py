"""InferenceService renderers: the server pod contract, children, hashes, golden Deployment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

import trainforge_contract as contract
from trainforge.api import parse_inference_service_spec
from trainforge.render.inferenceservice import (
    InferenceRef,
    ModelMount,
    autoscaler,
    deployment,
    desired_children,
    disruption_budget,
    selector_string,
    service,
    url,
)
from trainforge.render.trainingjob import RenderSettings

REF = InferenceRef(name="chat", namespace="ml", uid="5f0c-uid")
MOUNT = ModelMount("ckpt", "/checkpoints", "/checkpoints/runs/gpt")
SETTINGS = RenderSettings(default_image="registry.example/trainer:1")
GOLDEN = Path(__file__).parent / "golden" / "inferenceservice-gpu-autoscaled.yaml"
GPU_SPEC: dict[str, Any] = {
    "model": {"claimName": "ckpt", "path": "runs/gpt", "name": "gpt"},
    "replicas": 2,
    "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 60},
    "resources": {
        "gpus": 1,
        "requests": {"cpu": 4, "memory": "16Gi"},
        "limits": {"memory": "16Gi"},
    },
    "server": {"maxBatchSize": 64, "maxBatchDelayMs": 10},
    "env": [{"name": "TRAINFORGE_SERVE_RELOAD_INTERVAL_SECONDS", "value": "30"}],
    "podTemplate": {
        "metadata": {"labels": {"team": "search"}, "annotations": {"prometheus.io/scrape": "true"}},
        "spec": {"nodeSelector": {"gpu": "a100"}},
    },
}
PVC = {"model": {"claimName": "ckpt"}}


def render(spec: dict[str, Any], mount: ModelMount = MOUNT) -> dict[str, Any]:
    return deployment(REF, parse_inference_service_spec(spec), mount, SETTINGS)


def container(spec: dict[str, Any]) -> dict[str, Any]:
    (server,) = render(spec)["spec"]["template"]["spec"]["containers"]
    return server


def env(spec: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var.get("value", "") for var in container(spec)["env"]}


def test_golden_children() -> None:
    """The whole rendered service; refresh with UPDATE_GOLDEN=1 after an intended change."""
    children = desired_children(REF, parse_inference_service_spec(GPU_SPEC), MOUNT, SETTINGS)
    rendered = yaml.safe_dump_all(
        [child for child in children.by_kind().values() if child], sort_keys=False, width=100
    )
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(rendered)
    assert GOLDEN.read_text() == rendered, (
        "rendering changed; rerun with UPDATE_GOLDEN=1 if intended"
    )


def test_server_settings_come_from_the_spec() -> None:
    assert env(GPU_SPEC) == {
        contract.ENV_CHECKPOINT_DIR: "/checkpoints/runs/gpt",
        contract.ENV_SERVE_MODEL_NAME: "gpt",
        contract.ENV_SERVE_PORT: str(contract.SERVE_DEFAULT_PORT),
        contract.ENV_SERVE_MAX_BATCH_SIZE: "64",
        contract.ENV_SERVE_MAX_BATCH_DELAY_MS: "10",
        contract.ENV_SERVE_QUANTIZE: "none",
        "HOME": "/tmp",
        "TRAINFORGE_SERVE_RELOAD_INTERVAL_SECONDS": "30",
    }
    # Without a model name the service's own name is served.
    assert env(PVC)[contract.ENV_SERVE_MODEL_NAME] == "chat"


def test_a_reload_policy_reaches_the_server() -> None:
    policy = {"reloadPolicy": {"metric": "val_accuracy", "mode": "max"}}
    rendered = env({**PVC, "model": {**PVC["model"], **policy}})
    assert rendered[contract.ENV_SERVE_RELOAD_METRIC] == "val_accuracy"
    assert rendered[contract.ENV_SERVE_RELOAD_MODE] == "max"
    assert contract.ENV_SERVE_RELOAD_METRIC not in env(PVC)


def test_servers_get_the_progress_url_and_a_projected_token_only_when_configured() -> None:
    spec = parse_inference_service_spec(PVC)
    url = "http://tf-progress.tf.svc:8090/v1/progress"
    pod = deployment(REF, spec, MOUNT, RenderSettings(progress_url=url))["spec"]["template"]
    [server] = pod["spec"]["containers"]
    assert {"name": contract.ENV_PROGRESS_URL, "value": url} in server["env"]
    [token] = [v for v in pod["spec"]["volumes"] if "projected" in v]
    source = token["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == contract.PROGRESS_AUDIENCE
    assert contract.ENV_PROGRESS_URL not in env(PVC)


def test_the_server_container_runs_the_bundled_server() -> None:
    server = container(PVC)
    assert server["name"] == contract.SERVE_CONTAINER_NAME
    assert server["image"] == "registry.example/trainer:1"
    assert server["command"] == ["python", "-m", "trainforge_trainer", "serve"]
    assert container({**PVC, "image": "mine:2"})["image"] == "mine:2"
    assert server["ports"] == [
        {"name": "http", "containerPort": contract.SERVE_DEFAULT_PORT, "protocol": "TCP"}
    ]


def test_probes_ready_after_load_live_while_serving_and_patient_at_startup() -> None:
    server = container({**PVC, "server": {"startupTimeoutSeconds": 900}})
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = server["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900


def test_the_checkpoint_claim_is_mounted_read_only() -> None:
    pod = render(PVC)["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {
        "name": "checkpoints",
        "persistentVolumeClaim": {"claimName": "ckpt", "readOnly": True},
    }
    assert container(PVC)["volumeMounts"][0] == {
        "name": "checkpoints",
        "mountPath": "/checkpoints",
        "readOnly": True,
    }


def test_gpus_are_requested_and_tolerated() -> None:
    server = container(GPU_SPEC)
    assert server["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"},
    }
    pod = render(GPU_SPEC)["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "tolerations" not in render(PVC)["spec"]["template"]["spec"]
    assert "resources" not in container(PVC)


def test_rolling_update_never_goes_below_the_desired_replicas() -> None:
    spec = render(GPU_SPEC)["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert spec["replicas"] == 2


def test_selector_labels_win_over_the_pod_template() -> None:
    spec = {**PVC, "podTemplate": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}}}
    manifest = render(spec)
    selector = manifest["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/managed-by": "trainforge",
        "trainforge.io/inference-service": "chat",
    }
    assert manifest["spec"]["template"]["metadata"]["labels"] == selector
    assert selector_string("chat") == (
        "app.kubernetes.io/managed-by=trainforge,trainforge.io/inference-service=chat"
    )


def test_pod_template_merges_onto_the_server_container() -> None:
    spec = {
        **PVC,
        "podTemplate": {
            "spec": {
                "containers": [{"name": "server", "imagePullPolicy": "Always"}],
                "serviceAccountName": "reader",
            }
        },
    }
    pod = render(spec)["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["imagePullPolicy"] == "Always"
    assert server["command"] == ["python", "-m", "trainforge_trainer", "serve"]
    assert pod["serviceAccountName"] == "reader"


def test_every_child_is_owned_labelled_and_hashed() -> None:
    children = desired_children(REF, parse_inference_service_spec(GPU_SPEC), MOUNT, SETTINGS)
    for kind, child in children.by_kind().items():
        assert child is not None, kind
        meta = child["metadata"]
        assert (meta["name"], meta["namespace"]) == ("chat", "ml")
        assert meta["labels"]["trainforge.io/inference-service"] == "chat"
        owner = meta["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "InferenceService",
            "5f0c-uid",
            True,
        )
        assert len(meta["annotations"][contract.ANNOTATION_SPEC_HASH]) == 16


def _hash(manifest: dict[str, Any]) -> str:
    return str(manifest["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH])


def test_the_deployment_hash_follows_what_the_deployment_runs() -> None:
    base = _hash(render(PVC))
    assert _hash(render(PVC)) == base
    assert _hash(render({**PVC, "replicas": 3})) != base
    assert _hash(render({**PVC, "server": {"maxBatchSize": 8}})) != base
    assert _hash(render(PVC, ModelMount("other", "/checkpoints", "/checkpoints"))) != base


def test_service_is_cluster_ip_on_port_80() -> None:
    manifest = service(REF)
    assert manifest["spec"]["type"] == "ClusterIP"
    assert manifest["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert url("chat", "ml") == "http://chat.ml.svc.cluster.local"


@pytest.mark.parametrize(
    ("autoscaling", "metrics"),
    [
        (
            {"maxReplicas": 3},
            [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        ),
        (
            {"maxReplicas": 3, "metrics": [{"type": "Pods", "pods": {"metric": {"name": "rps"}}}]},
            [{"type": "Pods", "pods": {"metric": {"name": "rps"}}}],
        ),
    ],
    ids=["default-cpu", "metrics-only"],
)
def test_the_autoscaler_drives_the_inference_service(
    autoscaling: dict[str, Any], metrics: list[dict[str, Any]]
) -> None:
    spec = {**PVC, "autoscaling": autoscaling, "resources": {"requests": {"cpu": 1}}}
    hpa = autoscaler(REF, parse_inference_service_spec(spec))
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "InferenceService",
        "name": "chat",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["spec"]["metrics"] == metrics
    assert autoscaler(REF, parse_inference_service_spec(PVC)) is None


@pytest.mark.parametrize(
    ("spec", "wanted"),
    [
        (PVC, False),
        ({**PVC, "replicas": 2}, True),
        ({**PVC, "autoscaling": {"maxReplicas": 2, "metrics": [{"type": "Pods"}]}}, True),
    ],
)
def test_disruption_budget_only_when_several_replicas_may_run(
    spec: dict[str, Any], wanted: bool
) -> None:
    pdb = disruption_budget(REF, parse_inference_service_spec(spec))
    assert (pdb is not None) is wanted
    if pdb is not None:
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"]["trainforge.io/inference-service"] == "chat"
