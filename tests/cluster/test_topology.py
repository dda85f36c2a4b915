"""scheduling.topology on KWOK nodes in two racks (2 nodes of 8 GPUs each): a gang lands
inside one rack, or stays Pending with the scheduler's (or Kueue's) reason in its status.

Without Kueue the operator renders pod affinity on the rack label; with gang policy Kueue it
is the Workload's topology request, and Kueue's Topology-Aware Scheduling picks the domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_kueue import (
    apply_objects,
    condition,
    create,
    get,
    kueue as kueue,  # module fixture: a real Kueue manager
    make_queue,
    operator as operator,  # module fixture: the operator run with --kueue
    pods,
    status,
    wait_queued,
    wait_running,
)

from kubetest import Kubectl, Operator, wait_for

RACK = "topology.trainforge.test/rack"
POOL = "trainforge.test/pool"
TAINT = "trainforge.test/racks"
NODES = {f"{rack}-{i}": rack for rack in ("rack-a", "rack-b") for i in range(2)}


@pytest.fixture(scope="module")
def racks(kubectl: Kubectl) -> Iterator[dict[str, str]]:
    """Four KWOK GPU nodes labelled with their rack, tainted so only these tests use them."""
    nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": name, RACK: rack, POOL: "racks"},
            },
            "spec": {"taints": [{"key": TAINT, "value": "only", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"},
                "capacity": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"},
            },
        }
        for name, rack in NODES.items()
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
    wait_for(
        lambda: all(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in get(kubectl, "node", name).get("status", {}).get("conditions", [])
            )
            for name in NODES
        ),
        "the rack nodes to be Ready (KWOK)",
    )
    yield NODES
    kubectl("delete", "node", *NODES, check=False)


def rack_job(name: str, workers: int, mode: str = "Required", **scheduling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "workers": workers,
            "image": "example.com/trainer:1",
            "resources": {"gpusPerWorker": 8, "requests": {"cpu": "1", "memory": "1Gi"}},
            "scheduling": {
                "nodeSelector": {POOL: "racks"},
                "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                "topology": {"key": RACK, "mode": mode},
                **scheduling,
            },
        },
    }


def racks_of(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    return sorted(NODES[p["spec"]["nodeName"]] for p in pods(kubectl, namespace, name))


def finish(kubectl: Kubectl, namespace: str, name: str) -> None:
    """Delete the job and wait for its workers, so the next test has the racks to itself."""
    kubectl("delete", "trainingjob", name, "-n", namespace)
    wait_for(lambda: not pods(kubectl, namespace, name), f"the workers of {name} to go")


def test_required_rack_keeps_the_gang_in_one_rack(
    operator: Operator, racks: dict[str, str], kubectl: Kubectl, namespace: str
) -> None:
    create(kubectl, namespace, rack_job("fits", workers=2))
    wait_running(kubectl, namespace, "fits")
    placed = racks_of(kubectl, namespace, "fits")
    assert len(set(placed)) == 1, placed
    finish(kubectl, namespace, "fits")


def test_gang_larger_than_a_rack_stays_pending_with_the_reason(
    operator: Operator, racks: dict[str, str], kubectl: Kubectl, namespace: str
) -> None:
    create(kubectl, namespace, rack_job("toobig", workers=3))
    wait_for(
        lambda: condition(kubectl, namespace, "toobig", "Unschedulable").get("status") == "True",
        "the job to report an unschedulable worker",
    )
    message = condition(kubectl, namespace, "toobig", "Unschedulable")["message"]
    assert "affinity" in message, message
    assert status(kubectl, namespace, "toobig")["phase"] == "Pending"
    scheduled = [p for p in pods(kubectl, namespace, "toobig") if p["spec"].get("nodeName")]
    assert len({NODES[p["spec"]["nodeName"]] for p in scheduled}) == 1
    finish(kubectl, namespace, "toobig")


def test_preferred_rack_spreads_when_one_rack_is_too_small(
    operator: Operator, racks: dict[str, str], kubectl: Kubectl, namespace: str
) -> None:
    create(kubectl, namespace, rack_job("spills", workers=3, mode="Preferred"))
    wait_running(kubectl, namespace, "spills", workers=3)
    assert len(set(racks_of(kubectl, namespace, "spills"))) == 2
    finish(kubectl, namespace, "spills")


def kueue_topology(kubectl: Kubectl, namespace: str) -> str:
    """A Kueue Topology of racks and hosts over the rack nodes, and a queue whose flavor uses
    it (Topology-Aware Scheduling); the flavor's toleration reaches the pods on admission."""
    topology = f"{namespace}-racks"
    apply_objects(
        kubectl,
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "Topology",
            "metadata": {"name": topology},
            "spec": {"levels": [{"nodeLabel": RACK}, {"nodeLabel": "kubernetes.io/hostname"}]},
        },
    )
    make_queue(
        kubectl,
        namespace,
        gpus=32,
        flavor_spec={
            "nodeLabels": {POOL: "racks"},
            "topologyName": topology,
            "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
    return topology


def kueue_rack_job(name: str, workers: int) -> dict[str, Any]:
    manifest = rack_job(name, workers)
    scheduling = manifest["spec"]["scheduling"]
    del scheduling["nodeSelector"], scheduling["tolerations"]  # the flavor brings both
    scheduling.update({"gang": {"policy": "Kueue"}, "queueName": "team"})
    return manifest


def test_kueue_places_the_gang_in_one_rack(
    operator: Operator, racks: dict[str, str], kubectl: Kubectl, namespace: str
) -> None:
    topology = kueue_topology(kubectl, namespace)
    try:
        create(kubectl, namespace, kueue_rack_job("tas", workers=2))
        wait_running(kubectl, namespace, "tas")
        placed = racks_of(kubectl, namespace, "tas")
        assert len(set(placed)) == 1, placed
        workload = get(kubectl, "workloads.kueue.x-k8s.io", "tas", namespace)
        assert workload["spec"]["podSets"][0]["topologyRequest"] == {"required": RACK}
        finish(kubectl, namespace, "tas")

        # Three workers of 8 GPUs fit no rack: Kueue does not admit the job, which says why.
        create(kubectl, namespace, kueue_rack_job("tas-big", workers=3))
        wait_queued(kubectl, namespace, "tas-big", "WaitingForKueue")
        wait_for(
            lambda: (
                "topology"
                in condition(kubectl, namespace, "tas-big", "Suspended").get("message", "").lower()
            ),
            "Kueue's topology reason in the job's Suspended condition",
        )
    finally:
        kubectl("delete", "trainingjob", "--all", "-n", namespace, check=False)
        kubectl("delete", "topologies.kueue.x-k8s.io", topology, "--wait=false", check=False)
