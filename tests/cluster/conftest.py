"""The operator most cluster test modules run against: one per module, started with the
defaults (modules that need other flags define their own `operator`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubetest import Cluster, Kubectl, Operator, start_operator


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = start_operator(cluster.kubeconfig, log)
    yield op
    op.stop()
    assert "Traceback" not in op.logs(), op.logs()[-5000:]
