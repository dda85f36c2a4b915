"""Fixtures of the real-node tests: a second local control plane, started once per session
with `cluster.py up --real-node` (a kubelet + containerd node named `localhost`, CoreDNS, the
project's images built from its Dockerfiles and loaded into the node), where pods really run.

It is separate from the KWOK control plane of tests/conftest.py (whose fake nodes would take
pods that must run) and uses its own fixture names, so the two never share cached state.
Only one real node may run per machine; TRAINFORGE_REAL_KUBECONFIG reuses a running one
(`make cluster-up REAL_NODE=1` prints it) while iterating.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from realnode_helpers import Images, built_images, describe_pods

from kubetest import REPO, Cluster, Kubectl, fresh_namespace, make_kubectl

CLUSTER_SCRIPT = REPO / "hack" / "cluster" / "cluster.py"


@pytest.fixture(scope="session")
def images() -> Images:
    return built_images()


@pytest.fixture(scope="session")
def real_cluster(images: Images) -> Iterator[Cluster]:
    reused = os.environ.get("TRAINFORGE_REAL_KUBECONFIG")
    if reused:
        yield Cluster(Path(reused), None)
        return
    assert os.geteuid() == 0, "the real node needs root (kubelet, containerd, mounts)"
    host_before = host_state()
    state_dir = Path(tempfile.mkdtemp(prefix="trainforge-test-realnode-"))
    up = subprocess.run(
        [sys.executable, str(CLUSTER_SCRIPT), "up", "--real-node", "--dir", str(state_dir)],
        capture_output=True,
        text=True,
    )
    if up.returncode != 0:
        pytest.fail(f"the real node did not start:\n{up.stderr[-6000:]}")
    try:
        yield Cluster(state_dir / "kubeconfig", state_dir)
    finally:
        down = subprocess.run(
            [sys.executable, str(CLUSTER_SCRIPT), "down", "--dir", str(state_dir)],
            capture_output=True,
            text=True,
        )
        assert down.returncode == 0, down.stderr[-4000:]
        assert host_state() == host_before, "cluster.py down left the host changed"


def host_state() -> dict[str, object]:
    """What the kubelet, kube-proxy and the CNI plugins change on the host
    (docs/real-node.md)."""
    sysctls = (
        "vm/overcommit_memory",
        "kernel/panic",
        "kernel/panic_on_oops",
        "net/ipv4/ip_forward",
        "net/ipv4/conf/all/route_localnet",
        "net/netfilter/nf_conntrack_max",
        "net/netfilter/nf_conntrack_tcp_timeout_established",
        "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    )
    rules = {
        tool: subprocess.run([f"{tool}-save"], capture_output=True, text=True).stdout
        for tool in ("iptables", "ip6tables")
    }
    return {
        "sysctls": {k: Path("/proc/sys", k).read_text().strip() for k in sysctls},
        # Chains and rules; an empty table and no table at all behave the same.
        "iptables": {
            tool: sorted(
                line for line in dump.splitlines() if line.startswith("-A") or "KUBE-" in line
            )
            for tool, dump in rules.items()
        },
        "loopback": subprocess.run(
            ["ip", "-brief", "addr", "show", "lo"], capture_output=True, text=True
        ).stdout,
        "paths": [p for p in ("/var/lib/kubelet", "/run/containerd") if Path(p).exists()],
        "netns": sorted(str(p) for p in Path("/var/run/netns").glob("cni-*")),
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods")),
        "mounts": [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if any(word in line.split()[4] for word in ("kubelet", "containerd", "netns/cni-"))
        ],
    }


@pytest.fixture(scope="session")
def real_kubectl(real_cluster: Cluster) -> Kubectl:
    """kubectl against the real-node cluster with admin rights."""
    return make_kubectl(real_cluster.kubeconfig)


@pytest.fixture
def real_namespace(real_kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (its pods stop on the node)."""
    with fresh_namespace(real_kubectl, request.node.name) as name:
        yield name


CHART = REPO / "helm" / "trainforge"
SYSTEM_NAMESPACE = "trainforge-system"


def helm_binary() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "hack/cluster/build.sh")], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / "helm"


@pytest.fixture(scope="session")
def operator_release(
    real_cluster: Cluster, real_kubectl: Kubectl, images: Images, tmp_path_factory
) -> Iterator[str]:
    """`helm install` of the chart with the locally built images: the operator runs in-cluster
    as the chart's ServiceAccount, exactly as shipped."""
    repository, tag = images.operator.rsplit(":", 1)
    trainer_repository, trainer_tag = images.trainer.rsplit(":", 1)
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                "trainerImage": {"repository": trainer_repository, "tag": trainer_tag},
                "operator": {"resyncSeconds": 10, "logFormat": "plain"},
            }
        )
    )
    helm = [str(helm_binary()), f"--kubeconfig={real_cluster.kubeconfig}"]
    install = subprocess.run(
        [
            *helm,
            "install",
            "tf",
            str(CHART),
            f"--namespace={SYSTEM_NAMESPACE}",
            "--create-namespace",
            f"--values={values}",
            "--wait",
            "--timeout=180s",
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, (
        f"{install.stderr}\n{describe_pods(real_kubectl, SYSTEM_NAMESPACE)}"
    )
    yield SYSTEM_NAMESPACE
    logs = real_kubectl("logs", "-n", SYSTEM_NAMESPACE, "deploy/tf-trainforge", check=False)
    subprocess.run(
        [*helm, "uninstall", "tf", f"--namespace={SYSTEM_NAMESPACE}", "--wait"], capture_output=True
    )
    assert "Traceback" not in logs.stdout, logs.stdout[-5000:]
