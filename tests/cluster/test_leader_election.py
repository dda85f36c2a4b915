"""HA: two operator replicas, one Lease. Only the leader reconciles; when it dies, the other
takes over and carries on."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from test_trainingjob import job_manifest, running_workers

from kubetest import Cluster, Kubectl, Operator, start_operator, wait_for


def holder(kubectl: Kubectl, namespace: str) -> str:
    out = kubectl("get", "lease", "trainforge", "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout)["spec"]["holderIdentity"] if out.returncode == 0 else ""


def reconciles(operator: Operator) -> float:
    """trainforge_reconcile_total{kind="TrainingJob"} from the replica's /metrics."""
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('trainforge_reconcile_total{kind="TrainingJob"}')
    )


def test_standby_takes_over_when_the_leader_dies(
    cluster: Cluster, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    args = (
        f"--leader-election-lease={namespace}/trainforge",
        "--lease-duration-seconds=4",
        f"--namespace={namespace}",
    )
    replicas = {
        name: start_operator(
            cluster.kubeconfig, tmp_path / f"{name}.log", *args, env={"POD_NAME": name}
        )
        for name in ("replica-a", "replica-b")
    }
    try:
        leader_name = str(wait_for(lambda: holder(kubectl, namespace), "a leader"))
        standby_name = next(n for n in replicas if n != leader_name)

        kubectl("apply", "-n", namespace, "-f", "-", input=job_manifest("first", workers=1))
        running_workers(kubectl, namespace, "first", 1)
        assert reconciles(replicas[leader_name]) > 0
        assert reconciles(replicas[standby_name]) == 0  # it watches, but does not act

        replicas[leader_name].kill()
        wait_for(
            lambda: holder(kubectl, namespace) == standby_name,
            "the standby to take the lease",
            timeout=30,
        )
        kubectl("apply", "-n", namespace, "-f", "-", input=job_manifest("second", workers=1))
        running_workers(kubectl, namespace, "second", 1)
        for replica in replicas.values():
            assert "Traceback" not in replica.logs()
    finally:
        for replica in replicas.values():
            replica.stop()
