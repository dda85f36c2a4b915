"""TrainingJob models: defaults, the rules they share with the CRD, and error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from trainforge.api import InvalidSpec, TrainingJobSpec, parse_training_job, parse_training_job_spec
from trainforge.api.trainingjob import TrainingJobStatus, max_name_length

REPO = Path(__file__).resolve().parents[2]


def test_empty_spec_gets_the_documented_defaults() -> None:
    spec = parse_training_job_spec({})
    assert spec.workers == 1
    assert spec.effective_procs_per_worker == 1
    assert spec.resources.gpu_resource == "nvidia.com/gpu"
    assert spec.resources.shared_memory == "1Gi"
    assert spec.failure_policy.max_restarts == 3
    assert spec.scheduling.gang.policy == "None"
    assert spec.suspend is False


@pytest.mark.parametrize(
    ("spec", "procs", "world_size"),
    [
        ({"workers": 2}, 1, 2),
        ({"workers": 2, "resources": {"gpusPerWorker": 8}}, 8, 16),
        ({"workers": 3, "procsPerWorker": 2, "resources": {"gpusPerWorker": 4}}, 2, 6),
        ({"workers": 2, "procsPerWorker": 4}, 4, 8),  # CPU: any number of processes
    ],
)
def test_processes_per_worker_default_to_one_per_gpu(
    spec: dict[str, Any], procs: int, world_size: int
) -> None:
    parsed = parse_training_job_spec(spec)
    assert (parsed.effective_procs_per_worker, parsed.world_size) == (procs, world_size)


@pytest.mark.parametrize(
    ("value", "stored"),
    [(4, "4"), ("64Gi", "64Gi"), ("500m", "500m"), ("1.5", "1.5"), ("1e3", "1e3")],
)
def test_quantities_accept_ints_and_kubernetes_strings(value: object, stored: str) -> None:
    spec = parse_training_job_spec({"resources": {"requests": {"cpu": value}}})
    assert spec.resources.requests["cpu"] == stored


# (spec, field path in the message, fragment of the message)
INVALID_SPECS: list[tuple[dict[str, Any], str, str]] = [
    ({"workers": 0}, "spec.workers", "at least 1 (got 0)"),
    ({"workers": 5000}, "spec.workers", "at most 1024"),
    ({"workers": "two"}, "spec.workers", "two"),
    ({"resources": {"gpusPerWorker": -1}}, "spec.resources.gpusPerWorker", "at least 0"),
    (
        {"procsPerWorker": 8, "resources": {"gpusPerWorker": 4}},
        "spec",
        "procsPerWorker (8) must not exceed resources.gpusPerWorker (4)",
    ),
    (
        {"resources": {"sharedMemory": "lots"}},
        "spec.resources.sharedMemory",
        "'lots' is not a valid quantity",
    ),
    ({"resources": {"sharedMemory": -5}}, "spec.resources.sharedMemory", "must not be negative"),
    ({"resources": {"sharedMemory": True}}, "spec.resources.sharedMemory", "must be a quantity"),
    (
        {"resources": {"requests": {"memory": "1.5.5Gi"}}},
        "spec.resources.requests.memory",
        "not a valid quantity",
    ),
    (
        {"resources": {"gpusPerWorker": 1, "limits": {"nvidia.com/gpu": 2}}},
        "spec.resources",
        "set resources.gpusPerWorker instead",
    ),
    ({"scheduling": {"gang": {"policy": "Slurm"}}}, "spec.scheduling.gang.policy", "'Slurm'"),
    (
        {"scheduling": {"gang": {"policy": "Kueue"}}},
        "spec.scheduling",
        "needs scheduling.queueName",
    ),
    ({"scheduling": {"queueName": "q"}}, "spec.scheduling", "only to gang policy Volcano or Kueue"),
    (
        {"scheduling": {"schedulerName": "default-scheduler", "gang": {"policy": "Volcano"}}},
        "spec.scheduling",
        "schedulerName volcano",
    ),
    (
        {"scheduling": {"gang": {"policy": "Volcano", "scheduleTimeoutSeconds": 60}}},
        "spec.scheduling.gang",
        "only to policy Coscheduling",
    ),
    (
        {"checkpoint": {"claimName": "a", "volumeClaimTemplate": {"size": "1Gi"}}},
        "spec.checkpoint",
        "exactly one of checkpoint.claimName",
    ),
    ({"checkpoint": {"mountPath": "/ckpt"}}, "spec.checkpoint", "got neither"),
    (
        {"checkpoint": {"claimName": "a", "mountPath": "/dev/shm"}},
        "spec.checkpoint",
        "must not be /dev/shm",
    ),
    ({"checkpoint": {"claimName": "Bad_Name"}}, "spec.checkpoint.claimName", "does not match"),
    (
        {"checkpoint": {"volumeClaimTemplate": {}}},
        "spec.checkpoint.volumeClaimTemplate.size",
        "required",
    ),
    (
        {"env": [{"name": "WORLD_SIZE", "value": "3"}]},
        "spec.env[0]",
        "env WORLD_SIZE is set by trainforge",
    ),
    ({"env": [{"name": "PET_NNODES", "value": "3"}]}, "spec.env[0]", "PET_*"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {}}]}, "spec.env[0]", "not both"),
    (
        {"podTemplate": {"spec": {"restartPolicy": "Always"}}},
        "spec.podTemplate.spec",
        "restartPolicy",
    ),
    (
        {"podTemplate": {"metadata": {"labels": {"trainforge.io/job-name": "x"}}}},
        "spec.podTemplate.metadata.labels",
        "set by trainforge",
    ),
    ({"network": {"rdma": {"nccl": {"debug": "LOUD"}}}}, "spec.network.rdma.nccl.debug", "'LOUD'"),
    (
        {"network": {"rdma": {"networks": [{"name": "rail_0"}]}}},
        "spec.network.rdma.networks[0].name",
        "does not match",
    ),
    (
        {"failurePolicy": {"failOnExitCodes": [0]}},
        "spec.failurePolicy.failOnExitCodes[0]",
        "at least 1",
    ),
    ({"activeDeadlineSeconds": 0}, "spec.activeDeadlineSeconds", "at least 1"),
    ({"worker": 2}, "spec.worker", "unknown field"),
]


@pytest.mark.parametrize(("spec", "path", "fragment"), INVALID_SPECS, ids=lambda v: str(v)[:60])
def test_invalid_specs_are_rejected_naming_the_field(
    spec: dict[str, Any], path: str, fragment: str
) -> None:
    with pytest.raises(InvalidSpec) as raised:
        parse_training_job_spec(spec)
    assert any(
        line.startswith(f"{path}: ") and fragment in line for line in raised.value.messages
    ), raised.value.messages


def _manifest(name: str, workers: int) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": "u", "resourceVersion": "7"},
        "spec": {"workers": workers},
    }


@pytest.mark.parametrize(
    ("workers", "longest"), [(1, 54), (10, 54), (11, 53), (100, 53), (101, 52), (1024, 51)]
)
def test_job_name_leaves_room_for_the_worker_hostnames(workers: int, longest: int) -> None:
    assert max_name_length(workers) == longest
    last_hostname = f"{'a' * longest}-worker-{workers - 1}"
    assert len(last_hostname) == 63
    parse_training_job(_manifest("a" * longest, workers))
    with pytest.raises(InvalidSpec, match=f"must be at most {longest}"):
        parse_training_job(_manifest("a" * (longest + 1), workers))


@pytest.mark.parametrize("name", ["1job", "job.v2", "Job"])
def test_job_name_must_be_a_dns_1035_label(name: str) -> None:
    with pytest.raises(InvalidSpec, match="must start with a lowercase letter"):
        parse_training_job(_manifest(name, 2))


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("trainingjob-*.yaml")))
def test_examples_are_valid(path: Path) -> None:
    parse_training_job(yaml.safe_load(path.read_text()))


def test_a_spec_survives_the_round_trip_through_the_server() -> None:
    """What the operator writes back or re-reads must parse to the same spec."""
    spec = parse_training_job_spec(
        yaml.safe_load((REPO / "examples/trainingjob-gpu-rdma.yaml").read_text())["spec"]
    )
    assert parse_training_job_spec(spec.to_json()) == spec
    assert spec.to_json()["network"]["rdma"]["nccl"]["ibHCA"] == "mlx5_0:1,mlx5_1:1"


def test_status_serializes_in_camel_case_without_unset_fields() -> None:
    status = TrainingJobStatus.model_validate(
        {
            "phase": "Running",
            "restarts": 1,
            "workers": {"total": 2, "running": 2, "ready": 2},
            "progress": {"step": 10, "totalSteps": 100, "samplesPerSecond": 12.5},
        }
    )
    assert status.to_json() == {
        "phase": "Running",
        "conditions": [],
        "workers": {
            "total": 2,
            "pending": 0,
            "running": 2,
            "succeeded": 0,
            "failed": 0,
            "ready": 2,
        },
        "restarts": 1,
        "restartAttempt": 0,
        "progress": {"step": 10, "totalSteps": 100, "samplesPerSecond": 12.5},
    }


def test_spec_models_are_immutable() -> None:
    spec = TrainingJobSpec()
    with pytest.raises(ValueError, match="frozen"):
        spec.workers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("resources", "ok"),
    [
        ({"requests": {"cpu": "1500m"}, "limits": {"cpu": "2"}}, True),
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "2000m"}}, True),
        ({"requests": {"memory": "1Gi"}, "limits": {"memory": "1073741824"}}, True),
        ({"requests": {"memory": "1.5Gi"}, "limits": {"memory": "1G"}}, False),
        ({"requests": {"cpu": "2"}, "limits": {"memory": "1Gi"}}, True),
        ({"requests": {"cpu": 3}, "limits": {"cpu": "2.5"}}, False),
    ],
)
def test_requests_may_not_exceed_limits(resources: dict[str, Any], ok: bool) -> None:
    spec = {"workers": 1, "resources": resources}
    if ok:
        parse_training_job_spec(spec)
    else:
        with pytest.raises(InvalidSpec, match=r"must not exceed resources\.limits"):
            parse_training_job_spec(spec)
