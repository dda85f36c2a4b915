"""Fixtures shared by the cluster and helm tests: a real local control plane.

The control plane (hack/cluster/cluster.py) starts once per test session, in its own state
directory, and stops at the end. Set TRAINFORGE_KUBECONFIG to the kubeconfig of a running one
(`make cluster-up` prints it) to reuse it across runs while iterating.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetest import REPO, Cluster, Kubectl, control_plane, fresh_namespace, make_kubectl


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reused = os.environ.get("TRAINFORGE_KUBECONFIG")
    if reused:
        yield Cluster(Path(reused), None)
        return
    with control_plane() as started:
        yield started


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
    with fresh_namespace(kubectl, request.node.name) as name:
        yield name
