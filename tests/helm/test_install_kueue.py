"""The chart's kueue.enabled RBAC against a real Kueue: a release watching one namespace, the
operator run as its ServiceAccount with --kueue through a recording proxy, while Kueue jobs
are admitted, preempted, suspended, edited while queued and finished. Every Kueue permission
the chart grants is used, and none of the operator's calls is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmtest import Call, Permission, RecordingProxy, admin_server_and_ca, plain_kubeconfig
from test_install import SA, Release, install

from kubetest import Cluster, Kubectl, start_operator, wait_for
from kueuetest import Kueue, running_kueue

pytestmark = pytest.mark.cluster

KUEUE_GRANTS = {
    *(
        Permission("kueue.x-k8s.io", "workloads", verb)
        for verb in ("get", "list", "watch", "create", "patch", "delete")
    ),
    Permission("kueue.x-k8s.io", "workloads/status", "patch"),
    Permission("kueue.x-k8s.io", "resourceflavors", "get"),
    Permission("scheduling.k8s.io", "priorityclasses", "get"),
}


@pytest.fixture(scope="module")
def kueue(
    cluster: Cluster, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kueue]:
    with running_kueue(cluster.kubeconfig, kubectl, tmp_path_factory.mktemp("kueue")) as manager:
        yield manager


@pytest.fixture(scope="module")
def release(
    cluster: Cluster, kubectl: Kubectl, helm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    yield from install(
        cluster, kubectl, helm, tmp_path_factory.mktemp("values"), kueue={"enabled": True}
    )


def job(name: str, workers: int, priority: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "trainforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": {
                "workers": workers,
                "image": "example.com/trainer:1",
                "resources": {"gpusPerWorker": 4, "requests": {"cpu": "1", "memory": "1Gi"}},
                "scheduling": {
                    "gang": {"policy": "Kueue"},
                    "queueName": "team",
                    "priorityClassName": priority,
                },
            },
        }
    )


def status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "trainingjob", name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def reason(kubectl: Kubectl, ns: str, name: str) -> str:
    conditions = status(kubectl, ns, name).get("conditions", [])
    return next((c["reason"] for c in conditions if c["type"] == "Suspended"), "")


@pytest.fixture(scope="module")
def kueue_calls(
    cluster: Cluster,
    kubectl: Kubectl,
    kueue: Kueue,
    release: Release,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Call]]:
    ns = release.watched
    low, high, flavor = f"{ns}-low", f"{ns}-high", f"{ns}-flavor"
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [
                *(
                    {
                        "apiVersion": "scheduling.k8s.io/v1",
                        "kind": "PriorityClass",
                        "metadata": {"name": name},
                        "value": value,
                    }
                    for name, value in ((low, 100), (high, 1000))
                ),
                {
                    "apiVersion": "kueue.x-k8s.io/v1beta2",
                    "kind": "ResourceFlavor",
                    "metadata": {"name": flavor},
                    "spec": {"nodeLabels": {"type": "kwok"}},
                },
                {
                    "apiVersion": "kueue.x-k8s.io/v1beta2",
                    "kind": "ClusterQueue",
                    "metadata": {"name": ns},
                    "spec": {
                        "namespaceSelector": {},
                        "preemption": {"withinClusterQueue": "LowerPriority"},
                        "resourceGroups": [
                            {
                                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                "flavors": [
                                    {
                                        "name": flavor,
                                        "resources": [
                                            {"name": "cpu", "nominalQuota": "100"},
                                            {"name": "memory", "nominalQuota": "100Gi"},
                                            {"name": "nvidia.com/gpu", "nominalQuota": "8"},
                                        ],
                                    }
                                ],
                            }
                        ],
                    },
                },
                {
                    "apiVersion": "kueue.x-k8s.io/v1beta2",
                    "kind": "LocalQueue",
                    "metadata": {"name": "team", "namespace": ns},
                    "spec": {"clusterQueue": ns},
                },
            ]
        ),
    )
    token = kubectl("create", "token", SA, "-n", release.namespace, "--duration=1h").stdout
    server, ca = admin_server_and_ca(cluster.kubeconfig)
    tmp = tmp_path_factory.mktemp("chart-rbac-kueue")
    apply = lambda manifest: kubectl("apply", "-n", ns, "-f", "-", input=manifest)  # noqa: E731
    with RecordingProxy(server, ca, token.strip()) as proxy:
        operator = start_operator(
            plain_kubeconfig(tmp / "kubeconfig", proxy.url),
            tmp / "operator.log",
            f"--namespace={ns}",
            "--log-format=plain",
            "--kueue",
        )
        try:
            apply(job("research", 2, low))  # admitted: flavor get, priority class get
            wait_for(lambda: status(kubectl, ns, "research").get("phase") == "Running", "research")
            apply(job("urgent", 2, high))  # preempts research: workload status patch
            wait_for(lambda: reason(kubectl, ns, "research") == "EvictedByKueue", "preemption")
            wait_for(lambda: status(kubectl, ns, "urgent").get("phase") == "Running", "urgent")
            apply(job("research", 1, low))  # edited while queued: its Workload is replaced
            wait_for(
                lambda: any(
                    c.method == "DELETE" and "/workloads/research" in c.path for c in proxy.calls
                ),
                "the queued Workload of the edited job to be replaced",
            )
            kubectl("patch", "trainingjob", "urgent", "-n", ns, "--type=merge",
                    "-p", '{"spec":{"suspend":true}}')  # fmt: skip
            wait_for(lambda: status(kubectl, ns, "research").get("phase") == "Running", "resume")
        except AssertionError as e:
            operator.stop()
            raise AssertionError(f"{e}\noperator log (end):\n{operator.logs()[-4000:]}") from None
        finally:
            operator.stop()
            kubectl("delete", "trainingjob", "--all", "-n", ns, "--wait=false", check=False)
            kubectl("delete", "clusterqueue", ns, "--wait=false", check=False)
            kubectl("delete", "resourceflavor", flavor, "--wait=false", check=False)
            kubectl("delete", "priorityclass", low, high, check=False)
        assert "Traceback" not in operator.logs(), operator.logs()[-5000:]
        yield list(proxy.calls)


def test_kueue_jobs_run_with_only_the_chart_rbac_and_use_every_kueue_grant(
    kueue_calls: list[Call],
) -> None:
    denied = sorted({f"{c.method} {c.path}" for c in kueue_calls if c.status == 403})
    assert not denied, f"forbidden: {denied}"
    used = {p for c in kueue_calls if c.status != 403 for p in c.permissions()}
    unused = KUEUE_GRANTS - used
    assert not unused, f"granted but never used: {sorted(map(str, unused))}"
