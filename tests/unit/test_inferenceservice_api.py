"""The InferenceService models and CRD: defaults, bounds, cross-field rules, scale subresource."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainforge.api import (
    InferenceServiceSpec,
    InvalidSpec,
    parse_inference_service,
    parse_inference_service_spec,
)
from trainforge.api.crdgen import CRDS, INFERENCE_SERVICE, crd_manifest

REPO = Path(__file__).resolve().parents[2]
CRD = crd_manifest(INFERENCE_SERVICE)
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
PVC = {"model": {"claimName": "ckpt"}}
JOB = {"model": {"fromTrainingJob": "llm"}}


def test_defaults() -> None:
    spec = parse_inference_service_spec(PVC)
    assert spec.replicas == 1
    assert spec.autoscaling is None
    assert (spec.server.max_batch_size, spec.server.max_batch_delay_ms) == (32, 5)
    assert spec.server.quantize == "none"
    assert (spec.resources.gpus, spec.resources.gpu_resource) == (0, "nvidia.com/gpu")
    assert spec.model.name is None and spec.model.path is None


INVALID_SPECS: list[tuple[dict[str, Any], str, str]] = [
    ({}, "spec.model", "required"),
    ({"model": {}}, "spec.model", "got neither"),
    ({"model": {"claimName": "c", "fromTrainingJob": "j"}}, "spec.model", "got both"),
    (
        {"model": {"fromTrainingJob": "j", "path": "runs"}},
        "spec.model",
        "only with model.claimName",
    ),
    ({"model": {"claimName": "c", "path": "../etc"}}, "spec.model.path", "does not match"),
    ({"model": {"claimName": "c", "path": "/abs"}}, "spec.model.path", "does not match"),
    ({"model": {"claimName": "c", "path": "runs/.tmp-x"}}, "spec.model.path", "does not match"),
    ({"model": {"claimName": "Bad_Claim"}}, "spec.model.claimName", "does not match"),
    ({"model": {"fromTrainingJob": "1job"}}, "spec.model.fromTrainingJob", "does not match"),
    ({"model": {"claimName": "c", "name": "a/b"}}, "spec.model.name", "does not match"),
    ({**PVC, "replicas": -1}, "spec.replicas", "at least 0"),
    ({**PVC, "replicas": 1001}, "spec.replicas", "at most 1000"),
    ({**PVC, "replicas": "2"}, "spec.replicas", "must be an integer"),
    (
        {**PVC, "autoscaling": {"minReplicas": 5, "maxReplicas": 2, "metrics": [{}]}},
        "spec.autoscaling",
        "minReplicas (5) must not exceed autoscaling.maxReplicas (2)",
    ),
    ({**PVC, "autoscaling": {"minReplicas": 1}}, "spec.autoscaling.maxReplicas", "required"),
    ({**PVC, "autoscaling": {"maxReplicas": 3}}, "spec", "needs resources.requests.cpu"),
    (
        {**PVC, "autoscaling": {"maxReplicas": 3, "targetCPUUtilizationPercentage": 0}},
        "spec.autoscaling.targetCPUUtilizationPercentage",
        "at least 1",
    ),
    ({**PVC, "server": {"maxBatchSize": 0}}, "spec.server.maxBatchSize", "at least 1"),
    ({**PVC, "server": {"maxBatchDelayMs": -1}}, "spec.server.maxBatchDelayMs", "at least 0"),
    ({**PVC, "server": {"quantize": "fp4"}}, "spec.server.quantize", "'fp4'"),
    (
        {**PVC, "server": {"quantize": "int8"}, "resources": {"gpus": 1}},
        "spec",
        "int8 runs on CPU only",
    ),
    ({**PVC, "resources": {"gpus": 17}}, "spec.resources.gpus", "at most 16"),
    (
        {**PVC, "resources": {"gpus": 1, "limits": {"nvidia.com/gpu": 2}}},
        "spec.resources",
        "set resources.gpus instead",
    ),
    ({**PVC, "resources": {"requests": {"cpu": "lots"}}}, "spec.resources.requests.cpu", "lots"),
    (
        {**PVC, "env": [{"name": "TRAINFORGE_SERVE_PORT", "value": "9"}]},
        "spec.env[0]",
        "set by trainforge from spec.model and spec.server",
    ),
    (
        {**PVC, "env": [{"name": "TRAINFORGE_CHECKPOINT_DIR", "value": "/x"}]},
        "spec.env[0]",
        "set by trainforge",
    ),
    (
        {**PVC, "podTemplate": {"spec": {"restartPolicy": "Never"}}},
        "spec.podTemplate.spec",
        "must not set restartPolicy",
    ),
    (
        {**PVC, "podTemplate": {"metadata": {"labels": {"trainforge.io/inference-service": "x"}}}},
        "spec.podTemplate.metadata.labels",
        "set by trainforge",
    ),
    ({**PVC, "replica": 2}, "spec.replica", "unknown field"),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), INVALID_SPECS, ids=lambda v: str(v)[:60])
def test_invalid_specs_are_rejected_naming_the_field(
    spec: dict[str, Any], path: str, fragment: str
) -> None:
    with pytest.raises(InvalidSpec) as raised:
        parse_inference_service_spec(spec)
    assert any(
        line.startswith(f"{path}: ") and fragment in line for line in raised.value.messages
    ), raised.value.messages


@pytest.mark.parametrize(
    "spec",
    [
        {**PVC, "autoscaling": {"maxReplicas": 3}, "resources": {"requests": {"cpu": 1}}},
        {**PVC, "autoscaling": {"maxReplicas": 3, "metrics": [{"type": "Pods"}]}},
        {**PVC, "server": {"quantize": "int8"}},
        {**PVC, "env": [{"name": "TRAINFORGE_SERVE_DEVICE", "value": "cpu"}]},
        {**JOB, "replicas": 0},
        {"model": {"claimName": "c", "path": "runs/gpt-2.v1"}},
    ],
    ids=[
        "cpu-autoscaling",
        "metric-autoscaling",
        "int8-on-cpu",
        "other-server-env",
        "zero",
        "path",
    ],
)
def test_valid_specs(spec: dict[str, Any]) -> None:
    parse_inference_service_spec(spec)


@pytest.mark.parametrize(
    ("replicas", "autoscaling", "desired", "several"),
    [
        (1, None, 1, False),
        (3, None, 3, True),
        (0, None, 0, False),
        (1, {"minReplicas": 2, "maxReplicas": 4}, 2, True),  # before the HPA's first write
        (9, {"minReplicas": 2, "maxReplicas": 4}, 4, True),  # a manual scale beyond max
        (3, {"minReplicas": 2, "maxReplicas": 4}, 3, True),
        (5, {"minReplicas": 1, "maxReplicas": 1}, 1, False),
    ],
)
def test_desired_replicas_stay_within_the_autoscaler_bounds(
    replicas: int, autoscaling: dict[str, int] | None, desired: int, several: bool
) -> None:
    spec: dict[str, Any] = {**PVC, "replicas": replicas}
    if autoscaling:
        spec["autoscaling"] = {**autoscaling, "metrics": [{"type": "Pods"}]}
    parsed = parse_inference_service_spec(spec)
    assert parsed.desired_replicas == desired
    assert parsed.may_run_several is several


def _manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": PVC,
    }


@pytest.mark.parametrize("name", ["1svc", "svc.v2", "Svc", "a" * 64])
def test_name_must_be_a_service_name(name: str) -> None:
    with pytest.raises(InvalidSpec, match="it names the Service"):
        parse_inference_service(_manifest(name))
    parse_inference_service(_manifest("a" * 63))


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("inferenceservice*.yaml")))
def test_examples_are_valid(path: Path) -> None:
    parse_inference_service(yaml.safe_load(path.read_text()))


def test_from_job_example_serves_the_cpu_training_example() -> None:
    service = yaml.safe_load((REPO / "examples/inferenceservice-from-job.yaml").read_text())
    job = yaml.safe_load((REPO / "examples/trainingjob-cpu.yaml").read_text())
    assert service["spec"]["model"]["fromTrainingJob"] == job["metadata"]["name"]


# --- the CRD -----------------------------------------------------------------------------------


def test_crd_is_generated_next_to_the_trainingjob_one() -> None:
    assert [crd.kind for crd in CRDS] == [
        "TrainingJob",
        "InferenceService",
        "TrainingRuntime",
        "ClusterTrainingRuntime",
    ]


def test_names_scale_subresource_and_printer_columns() -> None:
    names = CRD["spec"]["names"]
    assert (names["shortNames"], names["categories"]) == (["infsvc"], ["trainforge", "ml"])
    version = CRD["spec"]["versions"][0]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Replicas", "URL", "Model step", "Served", "Age"]
    # The scale subresource needs the replica count to exist: it must have a default.
    assert SCHEMA["properties"]["spec"]["properties"]["replicas"]["default"] == 1


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _nodes(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_every_field_is_described_and_every_spec_value_bounded() -> None:
    undocumented = [
        f"{path}.{name}"
        for path, node in _nodes(SCHEMA)
        for name, prop in node.get("properties", {}).items()
        if not prop.get("description") and path != ".metadata" and name != "metadata"
    ]
    assert not undocumented
    unbounded = []
    for path, node in _nodes(SCHEMA["properties"]["spec"], ".spec"):
        kind = node.get("type")
        if kind == "integer" and not {"minimum", "maximum"} <= node.keys():
            unbounded.append(path)
        if kind == "string" and "enum" not in node and "maxLength" not in node:
            unbounded.append(path)
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(path)
    assert not unbounded


def _apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """The API server's structural defaulting, as in test_crdgen."""
    if isinstance(value, dict):
        value = copy.deepcopy(value)
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = _apply_defaults(value[name], prop)
    return value


@pytest.mark.parametrize(
    "spec",
    [PVC, JOB, {**PVC, "autoscaling": {"maxReplicas": 2}, "resources": {"requests": {"cpu": 1}}}],
)
def test_server_defaults_equal_model_defaults(spec: dict[str, Any]) -> None:
    stored = _apply_defaults(spec, SCHEMA["properties"]["spec"])
    assert InferenceServiceSpec.model_validate(stored) == InferenceServiceSpec.model_validate(spec)
