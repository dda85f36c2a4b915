"""TrainingJob renderers: the worker pod contract, gang policies, children, hashes, golden."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

import trainforge_contract as contract
from trainforge.api import parse_training_job_spec
from trainforge.render.trainingjob import (
    JobRef,
    RenderSettings,
    desired_children,
    expand_env_references,
    worker_pod,
)

JOB = JobRef(name="llm", namespace="ml", uid="0b5c6a4e-uid")
SETTINGS = RenderSettings(default_image="registry.example/trainer:1")
GOLDEN = Path(__file__).parent / "golden" / "trainingjob-rdma-2workers.yaml"
RDMA_SPEC = {
    "workers": 2,
    "trainer": {"recipe": "gpt", "maxSteps": 1000, "precision": "bf16"},
    "resources": {
        "gpusPerWorker": 8,
        "requests": {"cpu": 32, "memory": "256Gi"},
        "limits": {"memory": "256Gi"},
        "sharedMemory": "64Gi",
    },
    "network": {
        "rdma": {
            "networks": [
                {"name": "rdma-rail-0", "interface": "net1"},
                {"name": "rdma-rail-1", "namespace": "net", "interface": "net2"},
            ],
            "resources": {"rdma/rdma_shared_device_a": 1},
            "nccl": {
                "socketIfName": "eth0",
                "ibHCA": "mlx5_0:1,mlx5_1:1",
                "gidIndex": 3,
                "gdrLevel": "PHB",
                "debug": "WARN",
            },
        }
    },
    "checkpoint": {"volumeClaimTemplate": {"size": "500Gi"}, "everySteps": 100},
    "scheduling": {"spreadWorkers": True},
}


def pod(spec: dict[str, Any], index: int = 0, attempt: int = 0) -> dict[str, Any]:
    return worker_pod(JOB, parse_training_job_spec(spec), index, attempt, SETTINGS)


def container(spec: dict[str, Any], index: int = 0, attempt: int = 0) -> dict[str, Any]:
    containers = pod(spec, index, attempt)["spec"]["containers"]
    return next(c for c in containers if c["name"] == contract.CONTAINER_NAME)


def env(spec: dict[str, Any], index: int = 0, attempt: int = 0) -> dict[str, str]:
    return {var["name"]: var.get("value", "") for var in container(spec, index, attempt)["env"]}


# --- worker pod contract ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "index", "expected"),
    [
        (
            {"workers": 2},
            1,
            {
                "MASTER_ADDR": "llm-worker-0.llm",
                "MASTER_PORT": "29500",
                "WORLD_SIZE": "2",
                "NNODES": "2",
                "NODE_RANK": "1",
                "NPROC_PER_NODE": "1",
                "RANK": "1",
                "LOCAL_RANK": "0",
                "PET_NNODES": "2",
                "PET_NODE_RANK": "1",
                "PET_NPROC_PER_NODE": "1",
                "PET_MASTER_ADDR": "llm-worker-0.llm",
                "PET_MASTER_PORT": "29500",
                "TRAINFORGE_JOB_NAME": "llm",
                "TRAINFORGE_RESTART_ATTEMPT": "0",
                "TRAINFORGE_METRICS_PORT": "9400",
            },
        ),
        (
            {"workers": 4, "resources": {"gpusPerWorker": 8}},
            3,
            {
                "WORLD_SIZE": "32",
                "NPROC_PER_NODE": "8",
                "NODE_RANK": "3",
                "PET_NPROC_PER_NODE": "8",
            },
        ),
        (
            {"workers": 2, "procsPerWorker": 2, "resources": {"gpusPerWorker": 4}},
            0,
            {"WORLD_SIZE": "4", "NPROC_PER_NODE": "2"},
        ),
    ],
)
def test_distributed_environment(
    spec: dict[str, Any], index: int, expected: dict[str, str]
) -> None:
    assert env(spec, index).items() >= expected.items()


def test_rank_is_only_set_with_one_process_per_worker() -> None:
    """With several processes per pod, torchrun assigns RANK per process; a pod-wide RANK
    would be wrong for all but one of them."""
    assert "RANK" in env({"workers": 2})
    assert "RANK" not in env({"workers": 2, "resources": {"gpusPerWorker": 2}})
    assert "LOCAL_RANK" not in env({"workers": 2, "resources": {"gpusPerWorker": 2}})


def test_restart_attempt_is_in_labels_and_env() -> None:
    rendered = pod({"workers": 2}, index=1, attempt=3)
    assert rendered["metadata"]["labels"][contract.LABEL_RESTART_ATTEMPT] == "3"
    assert rendered["metadata"]["labels"][contract.LABEL_WORKER_INDEX] == "1"
    assert env({"workers": 2}, index=1, attempt=3)["TRAINFORGE_RESTART_ATTEMPT"] == "3"


def test_pod_identity_and_lifecycle() -> None:
    spec = pod({"workers": 2}, index=1)["spec"]
    assert spec["hostname"] == "llm-worker-1"
    assert spec["subdomain"] == "llm"
    assert spec["restartPolicy"] == "Never"
    trainer = spec["containers"][0]
    assert trainer["terminationMessagePath"] == contract.TERMINATION_MESSAGE_PATH
    assert trainer["image"] == SETTINGS.default_image


def test_default_command_is_torchrun_with_static_rendezvous_at_worker_0() -> None:
    trainer = container({"workers": 2, "resources": {"gpusPerWorker": 4}}, index=1)
    values = {var["name"]: var["value"] for var in trainer["env"]}
    command = [expand_env_references(part, values) for part in trainer["command"]]
    assert command == [
        "torchrun",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--node-rank=1",
        "--rdzv-backend=static",
        "--master-addr=llm-worker-0.llm",
        "--master-port=29500",
        "-m",
        "trainforge_trainer",
        "train",
    ]
    assert "args" not in trainer


def test_one_process_per_worker_runs_the_trainer_without_torchrun() -> None:
    """SIGTERM must reach the trainer (it checkpoints, exits 143); env:// has what it needs."""
    trainer = container({"workers": 3}, index=2)
    values = {var["name"]: var["value"] for var in trainer["env"]}
    assert trainer["command"] == ["python", "-m", "trainforge_trainer", "train"]
    assert (values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"]) == ("2", "0", "3")


@pytest.mark.parametrize(
    ("spec", "command", "args"),
    [
        ({"command": ["python", "train.py"]}, ["python", "train.py"], None),
        (
            {"command": ["python", "train.py"], "args": ["--lr", "3e-4"]},
            ["python", "train.py"],
            ["--lr", "3e-4"],
        ),
        ({"args": ["--dry-run"]}, None, ["--dry-run"]),  # appended to the bundled trainer
    ],
)
def test_user_command_and_args(
    spec: dict[str, Any], command: list[str] | None, args: list[str] | None
) -> None:
    trainer = container(spec)
    if command is None:
        assert trainer["command"][-3:] == ["-m", "trainforge_trainer", "train"]
    else:
        assert trainer["command"] == command
    assert trainer.get("args") == args


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--nnodes=$(NNODES)", "--nnodes=2"),
        ("$(UNSET) stays", "$(UNSET) stays"),
        ("$$(NNODES) is escaped", "$(NNODES) is escaped"),
        ("$(NNODES)$(NNODES)", "22"),
    ],
)
def test_env_references_expand_like_the_kubelet(text: str, expected: str) -> None:
    assert expand_env_references(text, {"NNODES": "2"}) == expected


def test_gpus_are_requested_equal_to_limits_and_tolerated() -> None:
    rendered = pod({"resources": {"gpusPerWorker": 8, "requests": {"cpu": 4}}})
    resources = rendered["spec"]["containers"][0]["resources"]
    assert resources == {
        "requests": {"cpu": "4", "nvidia.com/gpu": "8"},
        "limits": {"nvidia.com/gpu": "8"},
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in rendered[
        "spec"
    ]["tolerations"]


def test_mig_resource_replaces_the_whole_gpu() -> None:
    resources = container(
        {"resources": {"gpusPerWorker": 2, "gpuResource": "nvidia.com/mig-1g.10gb"}}
    )["resources"]
    assert resources["limits"] == {"nvidia.com/mig-1g.10gb": "2"}


def test_cpu_job_has_no_gpu_resources_tolerations_or_rdma() -> None:
    rendered = pod({"workers": 2})
    assert "tolerations" not in rendered["spec"]
    assert "resources" not in rendered["spec"]["containers"][0]
    assert "add" not in rendered["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert "k8s.v1.cni.cncf.io/networks" not in rendered["metadata"]["annotations"]


def test_rdma_attachments_devices_capability_and_nccl() -> None:
    rendered = pod(RDMA_SPEC)
    networks = json.loads(rendered["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert networks == [
        {"name": "rdma-rail-0", "interface": "net1"},
        {"name": "rdma-rail-1", "namespace": "net", "interface": "net2"},
    ]
    trainer = rendered["spec"]["containers"][0]
    assert trainer["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert trainer["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
    assert trainer["resources"]["requests"]["rdma/rdma_shared_device_a"] == "1"
    assert (
        env(RDMA_SPEC).items()
        >= {
            "NCCL_SOCKET_IFNAME": "eth0",
            "NCCL_IB_HCA": "mlx5_0:1,mlx5_1:1",
            "NCCL_IB_GID_INDEX": "3",
            "NCCL_NET_GDR_LEVEL": "PHB",
            "NCCL_DEBUG": "WARN",
        }.items()
    )


def test_shared_memory_is_a_memory_backed_emptydir_with_a_size_limit() -> None:
    rendered = pod({"resources": {"sharedMemory": "8Gi"}})
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in rendered[
        "spec"
    ]["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in rendered["spec"]["containers"][0][
        "volumeMounts"
    ]


@pytest.mark.parametrize(
    ("checkpoint", "claim"),
    [
        ({"claimName": "shared-ckpt", "mountPath": "/data/ckpt"}, "shared-ckpt"),
        ({"volumeClaimTemplate": {"size": "10Gi"}, "mountPath": "/data/ckpt"}, "llm-checkpoints"),
    ],
)
def test_checkpoint_volume_mount_and_env(checkpoint: dict[str, Any], claim: str) -> None:
    rendered = pod({"checkpoint": checkpoint})
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}} in rendered[
        "spec"
    ]["volumes"]
    assert {"name": "checkpoints", "mountPath": "/data/ckpt"} in rendered["spec"]["containers"][0][
        "volumeMounts"
    ]
    assert env({"checkpoint": checkpoint})["TRAINFORGE_CHECKPOINT_DIR"] == "/data/ckpt"


def test_no_checkpoint_means_no_volume_and_no_checkpoint_dir() -> None:
    rendered = pod({})
    assert [volume["name"] for volume in rendered["spec"]["volumes"]] == ["dshm", "scratch"]
    assert "TRAINFORGE_CHECKPOINT_DIR" not in env({})
    assert "TRAINFORGE_CONFIG" not in env({})


def test_trainer_config_carries_the_checkpoint_cadence_of_the_spec() -> None:
    spec = {
        "trainer": {"recipe": "gpt", "checkpoint": {"everySteps": 5, "async": True}},
        "checkpoint": {"claimName": "c", "everySteps": 50, "keepLast": 2},
    }
    assert json.loads(env(spec)["TRAINFORGE_CONFIG"]) == {
        "recipe": "gpt",
        "checkpoint": {"everySteps": 50, "keepLast": 2, "async": True},
    }


def test_user_env_comes_last_and_may_override_nccl_settings() -> None:
    spec = {
        "network": {"rdma": {"nccl": {"debug": "WARN"}}},
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "HF_HOME", "value": "/cache"}],
    }
    names = [var["name"] for var in container(spec)["env"]]
    assert names.count("NCCL_DEBUG") == 1
    assert names[-2:] == ["NCCL_DEBUG", "HF_HOME"]
    assert env(spec)["NCCL_DEBUG"] == "INFO"


# --- scheduling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheduling", "labels", "annotations", "scheduler"),
    [
        ({}, {}, {}, None),
        (
            {"gang": {"policy": "Volcano"}, "queueName": "research"},
            {},
            {"scheduling.k8s.io/group-name": "llm"},
            "volcano",
        ),
        (
            {"gang": {"policy": "Coscheduling"}, "schedulerName": "scheduler-plugins-scheduler"},
            {"scheduling.x-k8s.io/pod-group": "llm"},
            {},
            "scheduler-plugins-scheduler",
        ),
        # Kueue admits the job's Workload (render/kueue.py): its pods must not look like a
        # Kueue pod group, which Kueue's pod integration would queue a second time.
        ({"gang": {"policy": "Kueue"}, "queueName": "team-a"}, {}, {}, None),
    ],
)
def test_gang_policy_pod_metadata(
    scheduling: dict[str, Any],
    labels: dict[str, str],
    annotations: dict[str, str],
    scheduler: str | None,
) -> None:
    rendered = pod({"workers": 3, "scheduling": scheduling})
    assert rendered["metadata"]["labels"].items() >= labels.items()
    assert {k for k in rendered["metadata"]["labels"] if "kueue" in k or "scheduling" in k} == set(
        labels
    )
    gang_annotations = {
        k: v
        for k, v in rendered["metadata"]["annotations"].items()
        if not k.startswith("trainforge.io/")
    }
    assert gang_annotations == annotations
    assert rendered["spec"].get("schedulerName") == scheduler


@pytest.mark.parametrize(
    ("scheduling", "api_version", "group_spec"),
    [
        ({}, None, None),
        ({"gang": {"policy": "Kueue"}, "queueName": "q"}, None, None),
        (
            {"gang": {"policy": "Volcano"}, "queueName": "research", "priorityClassName": "high"},
            "scheduling.volcano.sh/v1beta1",
            {
                "minMember": 3,
                "queue": "research",
                "priorityClassName": "high",
                "minResources": {"nvidia.com/gpu": "24"},
            },
        ),
        (
            {"gang": {"policy": "Coscheduling", "scheduleTimeoutSeconds": 120}},
            "scheduling.x-k8s.io/v1alpha1",
            {"minMember": 3, "scheduleTimeoutSeconds": 120},
        ),
    ],
)
def test_pod_group_per_gang_policy(
    scheduling: dict[str, Any], api_version: str | None, group_spec: dict[str, Any] | None
) -> None:
    spec = parse_training_job_spec(
        {"workers": 3, "resources": {"gpusPerWorker": 8}, "scheduling": scheduling}
    )
    group = desired_children(JOB, spec, 0, SETTINGS).pod_group
    if api_version is None:
        assert group is None
        return
    assert group is not None
    assert (group["apiVersion"], group["kind"], group["metadata"]["name"]) == (
        api_version,
        "PodGroup",
        "llm",
    )
    assert group["spec"] == group_spec


def test_spread_workers_adds_required_anti_affinity_to_the_users_affinity() -> None:
    user_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]
            }
        }
    }
    rendered = pod({"scheduling": {"spreadWorkers": True, "affinity": user_affinity}}, attempt=2)
    affinity = rendered["spec"]["affinity"]
    assert affinity["nodeAffinity"] == user_affinity["nodeAffinity"]
    assert affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == [
        {
            "labelSelector": {
                "matchLabels": {
                    "trainforge.io/job-name": "llm",
                    "trainforge.io/restart-attempt": "2",
                }
            },
            "topologyKey": "kubernetes.io/hostname",
        }
    ]
    assert "affinity" not in pod({})["spec"]


@pytest.mark.parametrize(
    ("mode", "field"),
    [
        ("Required", "requiredDuringSchedulingIgnoredDuringExecution"),
        ("Preferred", "preferredDuringSchedulingIgnoredDuringExecution"),
    ],
)
def test_topology_keeps_this_attempts_workers_together_by_the_node_label(
    mode: str, field: str
) -> None:
    topology = {"key": "example.com/rack", "mode": mode}
    rendered = pod({"scheduling": {"spreadWorkers": True, "topology": topology}}, attempt=1)
    [term] = rendered["spec"]["affinity"]["podAffinity"][field]
    term = term.get("podAffinityTerm", term)
    assert term["topologyKey"] == "example.com/rack"
    assert term["labelSelector"]["matchLabels"]["trainforge.io/restart-attempt"] == "1"
    assert "podAntiAffinity" in rendered["spec"]["affinity"]  # spreadWorkers still applies


def test_scheduling_fields_pass_through() -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    rendered = pod(
        {
            "scheduling": {
                "schedulerName": "my-scheduler",
                "priorityClassName": "high",
                "nodeSelector": {"pool": "a100"},
                "tolerations": [toleration],
            }
        }
    )["spec"]
    assert rendered["schedulerName"] == "my-scheduler"
    assert rendered["priorityClassName"] == "high"
    assert rendered["nodeSelector"] == {"pool": "a100"}
    assert rendered["tolerations"] == [toleration]


# --- pod template ----------------------------------------------------------------------------


def test_pod_template_is_merged_and_operator_labels_win() -> None:
    rendered = pod(
        {
            "podTemplate": {
                "metadata": {
                    "labels": {"team": "nlp", "app.kubernetes.io/managed-by": "someone-else"},
                    "annotations": {"sidecar.istio.io/inject": "false"},
                },
                "spec": {
                    "serviceAccountName": "trainer",
                    "tolerations": [{"key": "spot", "operator": "Exists"}],
                    "containers": [
                        {"name": "trainer", "env": [{"name": "HF_HOME", "value": "/cache"}]},
                        {"name": "sidecar", "image": "busybox"},
                    ],
                },
            },
            "resources": {"gpusPerWorker": 1},
        }
    )
    assert rendered["metadata"]["labels"]["team"] == "nlp"
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "trainforge"
    assert rendered["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert rendered["spec"]["serviceAccountName"] == "trainer"
    assert [t["key"] for t in rendered["spec"]["tolerations"]] == ["nvidia.com/gpu", "spot"]
    assert [c["name"] for c in rendered["spec"]["containers"]] == ["trainer", "sidecar"]
    trainer_env = rendered["spec"]["containers"][0]["env"]
    assert trainer_env[-1] == {"name": "HF_HOME", "value": "/cache"}
    assert trainer_env[0]["name"] == "MASTER_ADDR"


# --- children, ownership, hashes -------------------------------------------------------------


def test_children_names_labels_and_owner() -> None:
    spec = parse_training_job_spec({**RDMA_SPEC, "scheduling": {"gang": {"policy": "Volcano"}}})
    children = desired_children(JOB, spec, 0, SETTINGS)
    assert [(c["kind"], c["metadata"]["name"]) for c in children.in_creation_order()] == [
        ("PersistentVolumeClaim", "llm-checkpoints"),
        ("PodGroup", "llm"),
        ("Service", "llm"),
        ("Pod", "llm-worker-0"),
        ("Pod", "llm-worker-1"),
    ]
    for child in children.in_creation_order():
        metadata = child["metadata"]
        assert metadata["namespace"] == "ml"
        assert metadata["labels"][contract.LABEL_MANAGED_BY] == contract.MANAGED_BY
        assert metadata["labels"][contract.LABEL_JOB_NAME] == "llm"
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "trainforge.io/v1alpha1",
                "kind": "TrainingJob",
                "name": "llm",
                "uid": JOB.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert len(metadata["annotations"][contract.ANNOTATION_SPEC_HASH]) == 16


def test_headless_service_selects_the_jobs_pods_and_publishes_not_ready_ones() -> None:
    children = desired_children(JOB, parse_training_job_spec({"workers": 2}), 0, SETTINGS)
    service = children.service["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    for worker in children.pods:
        assert worker["metadata"]["labels"].items() >= service["selector"].items()
    assert children.checkpoint_pvc is None
    assert children.others == [children.service]


def test_checkpoint_pvc_from_the_template() -> None:
    spec = parse_training_job_spec(
        {"checkpoint": {"volumeClaimTemplate": {"size": "50Gi", "storageClassName": "nfs"}}}
    )
    pvc = desired_children(JOB, spec, 0, SETTINGS).checkpoint_pvc
    assert pvc is not None
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "nfs",
    }


def _hash(manifest: dict[str, Any]) -> str:
    return str(manifest["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH])


def test_rendering_is_deterministic() -> None:
    spec = parse_training_job_spec(RDMA_SPEC)
    assert desired_children(JOB, spec, 1, SETTINGS) == desired_children(JOB, spec, 1, SETTINGS)


@pytest.mark.parametrize(
    ("change", "pod_changes", "service_changes"),
    [
        ({"attempt": 1}, True, False),
        ({"spec": {**RDMA_SPEC, "image": "other:2"}}, True, False),
        ({"spec": {**RDMA_SPEC, "env": [{"name": "A", "value": "1"}]}}, True, False),
        ({"spec": {**RDMA_SPEC, "failurePolicy": {"maxRestarts": 9}}}, False, False),
        ({"spec": {**RDMA_SPEC, "suspend": True}}, False, False),
    ],
)
def test_spec_hash_changes_exactly_when_the_child_does(
    change: dict[str, Any], pod_changes: bool, service_changes: bool
) -> None:
    before = desired_children(JOB, parse_training_job_spec(RDMA_SPEC), 0, SETTINGS)
    after = desired_children(
        JOB,
        parse_training_job_spec(change.get("spec", RDMA_SPEC)),
        change.get("attempt", 0),
        SETTINGS,
    )
    assert (_hash(before.pods[0]) != _hash(after.pods[0])) == pod_changes
    assert (_hash(before.service) != _hash(after.service)) == service_changes


def test_worker_index_must_be_in_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        pod({"workers": 2}, index=2)


def test_golden_two_worker_rdma_job() -> None:
    """The whole rendered gang; refresh with UPDATE_GOLDEN=1 after an intended change."""
    children = desired_children(JOB, parse_training_job_spec(RDMA_SPEC), 0, SETTINGS)
    rendered = yaml.safe_dump_all(children.in_creation_order(), sort_keys=False, width=100)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(rendered)
    assert GOLDEN.read_text() == rendered, (
        "rendering changed; rerun with UPDATE_GOLDEN=1 if intended"
    )
