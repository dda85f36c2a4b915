"""Fixtures of the chart tests. The helm binary comes from the control-plane build cache
(hack/cluster/build.sh), like the cluster binaries; tests that only render the chart do not
start a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetest import Cluster


@pytest.fixture(scope="session")
def helm() -> Path:
    # bin_dir only reads the build cache; no control plane is started for it.
    path = Cluster(kubeconfig=Path(), state_dir=None).bin_dir / "helm"
    assert path.exists(), f"{path} is missing: run `bash hack/cluster/build.sh`"
    return path
