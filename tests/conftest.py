"""Fixtures shared by the cluster and helm tests: a real local control plane.

The control plane (hack/cluster/cluster.py) starts once per test session, in its own state
directory, and stops at the end. Set TRAINFORGE_KUBECONFIG to the kubeconfig of a running one
(`make cluster-up` prints it) to reuse it across runs while iterating.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetest import REPO, Cluster, Kubectl, make_kubectl, wait_for

CLUSTER_SCRIPT = REPO / "hack" / "cluster" / "cluster.py"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reused = os.environ.get("TRAINFORGE_KUBECONFIG")
    if reused:
        yield Cluster(Path(reused), None)
        return
    state_dir = Path(tempfile.mkdtemp(prefix="trainforge-test-cluster-"))
    up = subprocess.run(
        [sys.executable, str(CLUSTER_SCRIPT), "up", "--dir", str(state_dir)],
        capture_output=True,
        text=True,
    )
    if up.returncode != 0:
        pytest.fail(f"the local control plane did not start:\n{up.stderr[-4000:]}")
    try:
        yield Cluster(state_dir / "kubeconfig", state_dir)
    finally:
        subprocess.run(
            [sys.executable, str(CLUSTER_SCRIPT), "down", "--dir", str(state_dir)],
            capture_output=True,
        )


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Kubectl:
    """kubectl against the test cluster with admin rights; the project's CRDs installed."""
    run = make_kubectl(cluster.kubeconfig)
    crds = sorted((REPO / "crds").glob("*.yaml"))
    if crds:
        run("apply", "--server-side", "--force-conflicts", *(f"-f={c}" for c in crds))
        run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return run


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    wait_for(
        lambda: kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        "the namespace's default ServiceAccount",
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)
