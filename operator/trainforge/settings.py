"""Operator settings, from `trainforge run` flags (the Helm chart sets them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainforge.render.common import RenderSettings


@dataclass(frozen=True)
class Settings:
    # Namespaces to watch; empty means all (cluster-wide).
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 8000
    liveness_port: int = 8080
    # In a pod: all interfaces, so kubelet and Prometheus reach the endpoints.
    listen_address: str = "0.0.0.0"
    # Reconcile workers (threads) and API connections: jobs reconciled in parallel.
    workers: int = 8
    # Every job is reconciled at least this often, events or not.
    resync_seconds: float = 60.0
    # HA: replicas elect a leader on this Lease (namespace, name); only the leader reconciles.
    # Empty name: no election (a single replica).
    lease_namespace: str = "default"
    lease_name: str = ""
    lease_duration_seconds: int = 15
    identity: str = ""
    # Live progress endpoint (operator/trainforge/progress/), on listen_address; 0 disables.
    # Workers learn its URL from render.progress_url.
    progress_port: int = 0
    # Gang policy Kueue: Workloads are created and watched (needs Kueue's CRDs and RBAC).
    kueue: bool = False
    render: RenderSettings = field(default_factory=RenderSettings)
