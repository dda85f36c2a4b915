"""Who may hold the operator's Lease, decided without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from trainforge.leader import LeaseConfig, next_lease

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
ME = LeaseConfig(namespace="ops", name="trainforge", identity="pod-a", duration_seconds=15)


def lease(holder: str, renewed_seconds_ago: float, transitions: int = 0) -> dict:
    renewed = NOW - timedelta(seconds=renewed_seconds_ago)
    return {
        "metadata": {"name": "trainforge", "namespace": "ops", "resourceVersion": "42"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "acquireTime": "2026-11-23T11:00:00.000000Z",
            "leaseTransitions": transitions,
        },
    }


def test_no_lease_yet_is_acquired() -> None:
    body = next_lease(None, ME, NOW)
    assert body is not None
    assert body["spec"]["holderIdentity"] == "pod-a"
    assert "resourceVersion" not in body["metadata"]


def test_a_live_holder_keeps_it() -> None:
    assert next_lease(lease("pod-b", renewed_seconds_ago=5), ME, NOW) is None


def test_an_expired_holder_is_replaced_with_a_precondition() -> None:
    body = next_lease(lease("pod-b", renewed_seconds_ago=16, transitions=3), ME, NOW)
    assert body is not None
    assert body["spec"]["holderIdentity"] == "pod-a"
    assert body["spec"]["leaseTransitions"] == 4
    assert body["metadata"]["resourceVersion"] == "42"  # a racing replica gets a 409


def test_the_holder_renews_without_a_transition() -> None:
    body = next_lease(lease("pod-a", renewed_seconds_ago=2, transitions=3), ME, NOW)
    assert body is not None
    assert body["spec"]["leaseTransitions"] == 3
    assert body["spec"]["acquireTime"] == "2026-11-23T11:00:00.000000Z"
    assert body["spec"]["renewTime"] == "2026-11-23T12:00:00.000000Z"
