"""The API server itself rejects invalid InferenceServices (schema, bounds, CEL), naming the
field; every rejected manifest is rejected by the pydantic models too."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainforge.api import InvalidSpec, parse_inference_service, parse_inference_service_spec
from trainforge.render.inferenceservice import InferenceRef, ModelMount, desired_children
from trainforge.render.trainingjob import RenderSettings

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
REPO = Path(__file__).resolve().parents[2]
PVC = {"model": {"claimName": "ckpt"}}


def manifest(name: str = "svc", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {**PVC, **spec},
    }


def apply(
    kubectl: Kubectl, namespace: str, obj: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False)


# (id, manifest, fragments that must all appear in the server's error)
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "no-model-source",
        manifest(model={"name": "gpt"}),
        ["spec.model", "set exactly one of model.fromTrainingJob"],
    ),
    (
        "two-model-sources",
        manifest(model={"claimName": "ckpt", "fromTrainingJob": "llm"}),
        ["spec.model", "set exactly one of model.fromTrainingJob"],
    ),
    (
        "path-with-training-job",
        manifest(model={"fromTrainingJob": "llm", "path": "runs"}),
        ["spec.model.path", "applies only with model.claimName"],
    ),
    (
        "path-escapes-the-volume",
        manifest(model={"claimName": "ckpt", "path": "../other"}),
        ["spec.model.path", "should match"],
    ),
    (
        "model-name-not-a-url-segment",
        manifest(model={"claimName": "ckpt", "name": "my/model"}),
        ["spec.model.name", "should match"],
    ),
    ("negative-replicas", manifest(replicas=-1), ["spec.replicas", "greater than or equal to 0"]),
    (
        "too-many-replicas",
        manifest(replicas=5000),
        ["spec.replicas", "less than or equal to 1000"],
    ),
    (
        "min-above-max",
        manifest(autoscaling={"minReplicas": 5, "maxReplicas": 2, "metrics": [{"type": "Pods"}]}),
        ["spec.autoscaling.minReplicas", "must not exceed autoscaling.maxReplicas"],
    ),
    (
        "autoscaling-without-max",
        manifest(autoscaling={"minReplicas": 1, "metrics": [{"type": "Pods"}]}),
        ["spec.autoscaling.maxReplicas", "Required value"],
    ),
    (
        "cpu-autoscaling-without-cpu-request",
        manifest(autoscaling={"maxReplicas": 3}),
        ["spec.resources.requests", "needs resources.requests.cpu"],
    ),
    (
        "unknown-quantize",
        manifest(server={"quantize": "fp4"}),
        ["spec.server.quantize", 'Unsupported value: "fp4"'],
    ),
    (
        "int8-on-gpu",
        manifest(server={"quantize": "int8"}, resources={"gpus": 1}),
        ["spec.server.quantize", "int8 runs on CPU only"],
    ),
    (
        "batch-size-zero",
        manifest(server={"maxBatchSize": 0}),
        ["spec.server.maxBatchSize", "greater than or equal to 1"],
    ),
    (
        "gpu-in-limits",
        manifest(resources={"gpus": 1, "limits": {"nvidia.com/gpu": 2}}),
        ["spec.resources", "set resources.gpus instead"],
    ),
    (
        "bad-quantity",
        manifest(resources={"requests": {"memory": "1.5.5Gi"}}),
        ["spec.resources.requests.memory", "should match"],
    ),
    (
        "env-shadows-the-port",
        manifest(env=[{"name": "TRAINFORGE_SERVE_PORT", "value": "9000"}]),
        ["spec.env[0].name", "env TRAINFORGE_SERVE_PORT is set by trainforge"],
    ),
    (
        "pod-template-restart-policy",
        manifest(podTemplate={"spec": {"restartPolicy": "Never"}}),
        ["spec.podTemplate.spec", "must not set restartPolicy"],
    ),
    (
        "name-not-a-service-name",
        manifest(name="svc.v2"),
        ["metadata.name", "it names the Service"],
    ),
    ("unknown-field", manifest(replica=3), ['unknown field "spec.replica"']),
    (
        "duplicate-env-name",
        manifest(
            model={"claimName": "ckpt"},
            env=[{"name": "SEED", "value": "1"}, {"name": "SEED", "value": "2"}],
        ),
        ["spec.env[1]", "Duplicate value", "SEED"],
    ),
    (
        "request-above-limit",
        manifest(resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
        ["spec.resources", "must not exceed resources.limits"],
    ),
    (
        "image-with-whitespace",
        manifest(model={"claimName": "ckpt"}, image="example.com/server :1"),
        ["spec.image", "should match"],
    ),
    (
        "vllm-without-image",
        manifest(server={"runtime": "vllm"}),
        ["spec.image", "server.runtime vllm needs spec.image"],
    ),
    (
        "vllm-args-without-vllm",
        manifest(server={"vllmArgs": ["--dtype", "bfloat16"]}),
        ["spec.server.vllmArgs", "applies only with server.runtime vllm"],
    ),
    (
        "vllm-with-int8",
        manifest(image="vllm/vllm-openai:v0", server={"runtime": "vllm", "quantize": "int8"}),
        ["spec.server.quantize", "with runtime vllm pass vLLM's own flags"],
    ),
    (
        "unknown-runtime",
        manifest(server={"runtime": "tgi"}),
        ["spec.server.runtime", 'Unsupported value: "tgi"'],
    ),
]


@pytest.mark.parametrize(
    ("obj", "fragments"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_manifest_is_rejected_naming_the_field(
    kubectl: Kubectl, namespace: str, obj: dict[str, Any], fragments: list[str]
) -> None:
    result = apply(kubectl, namespace, obj)
    assert result.returncode != 0, f"accepted: {yaml.safe_dump(obj)}"
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    with pytest.raises(InvalidSpec):
        parse_inference_service({**obj, "metadata": {**obj["metadata"], "namespace": namespace}})
    assert kubectl("get", "inferenceservices", "-n", namespace, "-o", "name").stdout == ""


@pytest.mark.parametrize(
    "path", sorted((REPO / "examples").glob("inferenceservice*.yaml")), ids=lambda p: p.name
)
def test_examples_are_accepted_and_stored_specs_parse(
    kubectl: Kubectl, namespace: str, path: Path
) -> None:
    result = apply(kubectl, namespace, yaml.safe_load(path.read_text()))
    assert result.returncode == 0, result.stderr
    stored = yaml.safe_load(kubectl("get", "infsvc", "-n", namespace, "-o", "yaml").stdout)
    for item in stored["items"]:
        parse_inference_service(item)


def test_server_applies_the_schema_defaults(kubectl: Kubectl, namespace: str) -> None:
    assert apply(kubectl, namespace, manifest()).returncode == 0
    spec = yaml.safe_load(kubectl("get", "infsvc", "svc", "-n", namespace, "-o", "yaml").stdout)[
        "spec"
    ]
    assert spec["replicas"] == 1
    assert spec["server"] == {
        "maxBatchSize": 32,
        "maxBatchDelayMs": 5,
        "quantize": "none",
        "startupTimeoutSeconds": 600,
        "runtime": "trainforge",
    }
    assert spec["resources"] == {"gpus": 0, "gpuResource": "nvidia.com/gpu"}


def test_scale_subresource_reads_and_writes_spec_replicas(kubectl: Kubectl, namespace: str) -> None:
    assert apply(kubectl, namespace, manifest(replicas=2)).returncode == 0
    kubectl("scale", "infsvc/svc", "-n", namespace, "--replicas=4")
    scale = yaml.safe_load(
        kubectl("get", "infsvc", "svc", "-n", namespace, "--subresource=scale", "-o", "yaml").stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 4


@pytest.mark.parametrize(
    "spec",
    [
        PVC,
        {
            **PVC,
            "replicas": 2,
            "autoscaling": {"maxReplicas": 4, "targetCPUUtilizationPercentage": 70},
            "resources": {"gpus": 1, "requests": {"cpu": 2, "memory": "8Gi"}},
            "env": [{"name": "TRAINFORGE_SERVE_DEVICE", "value": "cuda"}],
            "podTemplate": {
                "metadata": {"labels": {"team": "a"}},
                "spec": {"containers": [{"name": "server", "imagePullPolicy": "Always"}]},
            },
        },
        {
            **PVC,
            "image": "vllm/vllm-openai:v0.11.0",
            "resources": {"gpus": 1},
            "server": {"runtime": "vllm", "vllmArgs": ["--max-model-len", "4096"]},
        },
    ],
    ids=["minimal", "gpu-autoscaled", "vllm"],
)
def test_rendered_children_are_valid_kubernetes_objects(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any]
) -> None:
    """A server-side dry run of every child."""
    ref = InferenceRef(name="svc", namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    mount = ModelMount("ckpt", "/checkpoints", "/checkpoints")
    children = desired_children(ref, parse_inference_service_spec(spec), mount, RenderSettings())
    manifests = [child for child in children.by_kind().values() if child is not None]
    result = kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(manifests), check=False
    )
    assert result.returncode == 0, result.stderr
