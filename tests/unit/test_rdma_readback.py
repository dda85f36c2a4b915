"""RDMA readback: Multus's network-status per worker, and the conditions (and requireRDMA
failure) from attachments and the transport the trainer reported."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trainforge.api import parse_training_job_spec
from trainforge.reconcile.rdma import parse_network_status, rdma_readback

STATUS = json.dumps(
    [
        {"name": "cbr0", "interface": "eth0", "ips": ["10.244.0.7"], "default": True},
        {"name": "ml/rail-0", "interface": "net1", "ips": ["192.168.1.7"], "mac": "aa:bb"},
    ]
)


def spec(require: bool = False) -> Any:
    return parse_training_job_spec(
        {
            "workers": 2,
            "image": "t:1",
            "network": {
                "rdma": {
                    "networks": [{"name": "rail-0"}, {"name": "rail-1", "namespace": "fabric"}],
                    "requireRDMA": require,
                }
            },
        }
    )


def test_network_status_keeps_the_non_default_networks() -> None:
    assert parse_network_status(STATUS) == (("ml/rail-0", "net1"),)
    assert parse_network_status(None) is None
    assert parse_network_status("not json") is None
    assert parse_network_status('{"name": "x"}') is None


def test_a_missing_attachment_names_the_worker_and_the_network() -> None:
    both = (("ml/rail-0", "net1"), ("fabric/rail-1", "net2"))
    out = rdma_readback(
        spec(), "ml", [("llm-worker-0", both), ("llm-worker-1", (("rail-0", "net1"),))], None
    )
    assert out.networks[0] == {
        "worker": "llm-worker-0",
        "attachments": [
            {"network": "ml/rail-0", "interface": "net1"},
            {"network": "fabric/rail-1", "interface": "net2"},
        ],
    }
    [attached] = out.conditions
    assert (attached.type, attached.status, attached.reason) == (
        "RDMAAttached",
        False,
        "AttachmentMissing",
    )
    assert "llm-worker-1: network fabric/rail-1 is not attached" in attached.message
    assert "llm-worker-0" not in attached.message
    assert out.failure == ""


@pytest.mark.parametrize(
    ("transport", "active", "reason"),
    [
        ("Socket", False, "FellBackToTCP"),
        ("RoCE", True, "RoCE"),
        ("InfiniBand", True, "InfiniBand"),
    ],
)
def test_the_reported_transport_says_whether_rdma_is_active(
    transport: str, active: bool, reason: str
) -> None:
    both = (("ml/rail-0", "net1"), ("fabric/rail-1", "net2"))
    out = rdma_readback(spec(), "ml", [("llm-worker-0", both)], transport)
    cond = next(c for c in out.conditions if c.type == "RDMAActive")
    assert (cond.status, cond.reason) == (active, reason)


def test_require_rdma_turns_a_fallback_into_a_failure_and_no_rdma_means_no_conditions() -> None:
    both = (("ml/rail-0", "net1"), ("fabric/rail-1", "net2"))
    out = rdma_readback(spec(require=True), "ml", [("llm-worker-0", both)], "Socket")
    assert out.failure.startswith("spec.network.rdma.requireRDMA is true: ")
    assert "TCP sockets" in out.failure
    plain = parse_training_job_spec({"workers": 1, "image": "t:1"})
    assert rdma_readback(plain, "ml", [("w", None)], "Socket").conditions == []
