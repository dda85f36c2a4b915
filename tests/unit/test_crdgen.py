"""The generated CRD: current, structural, bounded, documented, and defaulting like the models."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainforge.api import TrainingJobSpec
from trainforge.api.crdgen import (
    CLUSTER_TRAINING_RUNTIME,
    REPO_ROOT,
    TRAINING_JOB,
    TRAINING_RUNTIME,
    CrdDefinition,
    crd_manifest,
    main,
    stale_files,
)
from trainforge.reconcile.runtime import strip_defaults

SCHEMA = crd_manifest(TRAINING_JOB)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_and_reference_are_current() -> None:
    stale = stale_files(REPO_ROOT)
    assert not stale, "run `python -m trainforge.api.crdgen`:\n" + "\n".join(stale.values())


def test_check_mode_fails_with_a_diff_when_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(tmp_path)]) == 0
    crd = tmp_path / "crds" / "trainingjobs.trainforge.io.yaml"
    assert main(["--root", str(tmp_path), "--check"]) == 0
    crd.write_text(crd.read_text().replace("maximum: 1024", "maximum: 9999"))
    capsys.readouterr()
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert "+                maximum: 1024" in capsys.readouterr().out


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _nodes(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


SPEC_NODES = list(_nodes(SCHEMA["properties"]["spec"], ".spec"))
ALL_NODES = list(_nodes(SCHEMA))


def test_schema_is_structural() -> None:
    for path, node in ALL_NODES:
        assert "$ref" not in node and "nullable" not in node and "title" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"
        else:
            assert "type" in node, f"{path}: every node needs a type"
        assert node.get("additionalProperties") is not False, path


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    undocumented = [
        f"{path}.{name}"
        for path, node in ALL_NODES
        for name, prop in node.get("properties", {}).items()
        if not prop.get("description") and path != ".metadata" and name != "metadata"
    ]
    assert not undocumented


def test_every_spec_value_is_bounded() -> None:
    unbounded = []
    for path, node in SPEC_NODES:
        kind = node.get("type")
        if kind == "integer" and not {"minimum", "maximum"} <= node.keys():
            unbounded.append(path)
        if kind == "string" and "enum" not in node and "maxLength" not in node:
            unbounded.append(path)
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(path)
        if node.get("x-kubernetes-int-or-string"):
            assert "pattern" in node, path
    assert not unbounded


def test_names_categories_printer_columns_and_status_subresource() -> None:
    crd = crd_manifest(TRAINING_JOB)
    names = crd["spec"]["names"]
    assert (names["shortNames"], names["categories"]) == (["tj"], ["trainforge", "ml"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Ready"] == ".status.workers.ready"
    assert columns["Workers"] == ".spec.workers"
    assert columns["Restarts"] == ".status.restarts"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_conditions_are_a_map_keyed_by_type() -> None:
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def _apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server's structural defaulting does: absent fields with a default get it,
    then defaults apply inside objects and list items."""
    if isinstance(value, dict):
        value = copy.deepcopy(value)
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = _apply_defaults(value[name], prop)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_apply_defaults(item, schema["items"]) for item in value]
    return value


SPEC_SCHEMA = SCHEMA["properties"]["spec"]


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"workers": 2, "checkpoint": {"volumeClaimTemplate": {"size": "1Gi"}}},
        {"network": {"rdma": {"networks": [{"name": "rail-0"}]}}},
        {"scheduling": {"gang": {"policy": "Coscheduling"}}},
    ],
)
def test_server_defaults_equal_model_defaults(spec: dict[str, Any]) -> None:
    stored = _apply_defaults(spec, SPEC_SCHEMA)
    assert TrainingJobSpec.model_validate(stored) == TrainingJobSpec.model_validate(spec)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"runtimeRef": {"name": "rdma"}, "checkpoint": {"everySteps": 10}},
        {"network": {"rdma": {"nccl": {"gidIndex": 3}}}, "resources": {"gpusPerWorker": 4}},
        {"scheduling": {"queueName": "team-a", "gang": {"policy": "Kueue"}}},
    ],
)
def test_what_the_server_defaults_never_overrides_a_runtime(spec: dict[str, Any]) -> None:
    """reconcile/runtime.py reads a job value equal to its schema default as "not set": what
    the server stores for a job is exactly what the job said plus such values."""
    assert strip_defaults(TrainingJobSpec, _apply_defaults(spec, SPEC_SCHEMA)) == spec


@pytest.mark.parametrize("crd", [TRAINING_RUNTIME, CLUSTER_TRAINING_RUNTIME], ids=lambda c: c.kind)
def test_runtime_crds_are_documented_bounded_and_scoped(crd: CrdDefinition) -> None:
    manifest = crd_manifest(crd)
    assert manifest["spec"]["scope"] == (
        "Cluster" if crd.kind.startswith("Cluster") else "Namespaced"
    )
    version = manifest["spec"]["versions"][0]
    assert version["subresources"] == {}  # no status: nothing but the platform team writes them
    schema = version["schema"]["openAPIV3Schema"]
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    nodes = list(_nodes(schema["properties"]["spec"], ".spec"))
    undocumented = [
        f"{path}.{name}"
        for path, node in nodes
        for name, prop in node.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert not undocumented
    unbounded = [
        path
        for path, node in nodes
        if (node.get("type") == "array" and "maxItems" not in node)
        or (node.get("type") == "string" and not ({"enum", "maxLength"} & node.keys()))
    ]
    assert not unbounded
    # The template is the TrainingJob spec's own sub-models: a field added there (and its
    # rules) reaches runtimes without touching them.
    template = schema["properties"]["spec"]["properties"]["template"]["properties"]
    for field in ("resources", "network", "checkpoint", "scheduling", "podTemplate"):
        assert template[field]["properties"] == SPEC_SCHEMA["properties"][field]["properties"]
