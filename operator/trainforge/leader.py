"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does.

Every replica of an HA operator watches (so its indexes are warm when it takes over), but
only the Lease holder reconciles. The holder renews the Lease every `retry_seconds`; a
replica takes it over once it has not been renewed for `duration_seconds`. Writes carry the
Lease's resourceVersion, so two replicas racing for an expired Lease cannot both win.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from trainforge import kube
from trainforge.reconcile.common import parse_time

logger = logging.getLogger(__name__)

LEASE_API = "coordination.k8s.io/v1"


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    duration_seconds: int = 15
    retry_seconds: float = 2.0


def next_lease(
    lease: dict[str, Any] | None, config: LeaseConfig, now: datetime
) -> dict[str, Any] | None:
    """The Lease body to write to hold leadership, or None when another live holder has it.
    Pure: the decision is table-tested without a cluster."""
    spec = (lease or {}).get("spec", {})
    holder = spec.get("holderIdentity")
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    duration = int(spec.get("leaseDurationSeconds") or config.duration_seconds)
    expired = renewed is None or now >= parse_time(renewed) + timedelta(seconds=duration)
    if holder and holder != config.identity and not expired:
        return None
    taking_over = holder != config.identity
    body: dict[str, Any] = {
        "apiVersion": LEASE_API,
        "kind": "Lease",
        "metadata": {"name": config.name, "namespace": config.namespace},
        "spec": {
            "holderIdentity": config.identity,
            "leaseDurationSeconds": config.duration_seconds,
            "renewTime": _micro_time(now),
            "acquireTime": _micro_time(now) if taking_over else spec.get("acquireTime"),
            "leaseTransitions": int(spec.get("leaseTransitions", 0))
            + (1 if taking_over and holder else 0),
        },
    }
    if lease:
        body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return body


class LeaderElector:
    def __init__(self, config: LeaseConfig, on_elected: Callable[[], None]) -> None:
        self.config = config
        self._on_elected = on_elected
        self._leader = False
        self._renewed_at = datetime.min.replace(tzinfo=UTC)

    def is_leader(self) -> bool:
        """True while our last renewal is younger than the lease: a replica cut off from the
        API server stops reconciling before anyone else may take over."""
        age = datetime.now(UTC) - self._renewed_at
        return self._leader and age < timedelta(seconds=self.config.duration_seconds * 2 / 3)

    def _try(self) -> bool:
        ref = kube.Ref(LEASE_API, "Lease", self.config.namespace, self.config.name)
        now = datetime.now(UTC)
        lease = kube.get(ref)
        body = next_lease(lease, self.config, now)
        if body is None:
            return False
        try:
            if lease is None:
                kube.request("POST", kube.path(LEASE_API, "Lease", self.config.namespace), body)
            else:
                kube.request(
                    "PUT",
                    kube.path(LEASE_API, "Lease", self.config.namespace, self.config.name),
                    body,
                )
        except kube.KubeError as e:
            if e.status == 409:  # another replica wrote first
                return False
            raise
        self._renewed_at = now
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                holding = await loop.run_in_executor(None, self._try)
            except kube.KubeError as e:
                logger.warning("leader election: %s", e)
                holding = False
            if holding and not self._leader:
                logger.info(
                    "leader election: %s now leads %s/%s",
                    self.config.identity,
                    self.config.namespace,
                    self.config.name,
                )
                self._leader = True
                self._on_elected()
            elif not holding and self._leader:
                logger.warning(
                    "leader election: %s lost %s/%s; reconciling stops",
                    self.config.identity,
                    self.config.namespace,
                    self.config.name,
                )
                self._leader = False
            await asyncio.sleep(self.config.retry_seconds)
