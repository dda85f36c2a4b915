"""RDMA readback (pure): which requested networks Multus attached to each worker, and whether
NCCL actually runs over them.

Multus writes what it attached into the pod's k8s.v1.cni.cncf.io/network-status annotation;
the trainer reports the transport NCCL chose in its live progress. Both are compared with
spec.network.rdma: a missing attachment is RDMAAttached=False naming the worker and network,
sockets where RDMA was requested is RDMAActive=False/FellBackToTCP, and with
spec.network.rdma.requireRDMA either one fails the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import trainforge_contract as contract
from trainforge.api.trainingjob import TrainingJobSpec
from trainforge.reconcile.conditions import Cond

NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
MAX_ATTACHMENTS = 32
Attachments = tuple[tuple[str, str], ...]  # (network name as Multus wrote it, interface)


def parse_network_status(value: str | None) -> Attachments | None:
    """The non-default networks of a network-status annotation; None when there is none (or
    it is not the JSON list Multus writes)."""
    if not value:
        return None
    try:
        entries = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entries, list):
        return None
    out = []
    for entry in entries[:MAX_ATTACHMENTS]:
        if not isinstance(entry, dict) or entry.get("default") is True:
            continue
        name, interface = entry.get("name"), entry.get("interface", "")
        if isinstance(name, str) and isinstance(interface, str):
            out.append((name[:253], interface[:64]))
    return tuple(out)


@dataclass
class Readback:
    networks: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[Cond] = field(default_factory=list)
    failure: str = ""  # with requireRDMA: why the job fails


def rdma_readback(
    spec: TrainingJobSpec,
    namespace: str,
    workers: list[tuple[str, Attachments | None]],
    transport: str | None,
) -> Readback:
    """For the running workers (pod name, attachments): status.networks and the conditions."""
    rdma = spec.network.rdma if spec.network else None
    if rdma is None or not rdma.networks:
        return Readback()
    wanted = [f"{net.namespace or namespace}/{net.name}" for net in rdma.networks]
    out = Readback()
    missing = []
    for pod, attached in sorted(workers):
        names = {_qualified(name, namespace) for name, _ in attached or ()}
        out.networks.append(
            {
                "worker": pod,
                "attachments": [
                    {"network": _qualified(name, namespace), "interface": interface}
                    for name, interface in attached or ()
                ],
            }
        )
        missing += [f"{pod}: network {net} is not attached" for net in wanted if net not in names]
    if missing:
        message = (
            "; ".join(missing) + " (k8s.v1.cni.cncf.io/network-status); check that Multus runs on "
            "the node and the NetworkAttachmentDefinition's CNI config"
        )
        out.conditions.append(Cond("RDMAAttached", False, "AttachmentMissing", message))
    else:
        out.conditions.append(
            Cond(
                "RDMAAttached", True, "AllAttached", f"{', '.join(wanted)} attached to every worker"
            )
        )
    if transport == contract.TRANSPORT_SOCKET:
        message = (
            "RDMA networks were requested, but NCCL runs over TCP sockets: check "
            "spec.network.rdma.resources (the RDMA device plugin), nccl.ibHCA and the "
            "attachments (docs/rdma.md)"
        )
        out.conditions.append(Cond("RDMAActive", False, "FellBackToTCP", message))
    elif transport in (contract.TRANSPORT_INFINIBAND, contract.TRANSPORT_ROCE):
        out.conditions.append(Cond("RDMAActive", True, transport, f"NCCL runs over {transport}"))
    if rdma.require_rdma:
        failing = [c.message for c in out.conditions if not c.status]
        if failing:
            out.failure = "spec.network.rdma.requireRDMA is true: " + "; ".join(failing)
    return out


def _qualified(name: str, namespace: str) -> str:
    return name if "/" in name else f"{namespace}/{name}"
