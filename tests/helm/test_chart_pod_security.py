"""The chart's operator pod is admitted where the namespace enforces the `restricted` Pod
Security Standard, with the default values and with HA (docs/install.md, "Pod Security")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helmtest import find, render

from kubetest import Kubectl

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("values", [{}, {"replicaCount": 2}], ids=["default", "ha"])
def test_operator_pod_passes_restricted(
    kubectl: Kubectl, helm: Path, namespace: str, tmp_path: Path, values: dict[str, Any]
) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    docs = render(helm, values, tmp_path, namespace=namespace)
    [account] = find(docs, "ServiceAccount")
    kubectl("create", "serviceaccount", account["metadata"]["name"], "-n", namespace)
    [deployment] = find(docs, "Deployment")
    template = deployment["spec"]["template"]
    # Pod Security is enforced on pods (a Deployment only gets a warning): the pod its
    # ReplicaSet would create.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator", "namespace": namespace, **template["metadata"]},
        "spec": template["spec"],
    }
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr
