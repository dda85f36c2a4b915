"""How a refusal by the API server is named in a condition (reconcile/children.py)."""

from __future__ import annotations

import pytest

from trainforge.reconcile.children import admission_step, refusal

# Messages as the API server writes them (k8s 1.33), shortened where they repeat.
POD_SECURITY = (
    'pods "llm-worker-0" is forbidden: violates PodSecurity "baseline:latest": host '
    "namespaces (hostNetwork=true)"
)
QUOTA = (
    'pods "llm-worker-1" is forbidden: exceeded quota: gpus, requested: requests.cpu=1, '
    "used: requests.cpu=1, limited: requests.cpu=1"
)


@pytest.mark.parametrize(
    ("message", "step"),
    [
        (POD_SECURITY, "the PodSecurity admission plugin"),
        (QUOTA, "the ResourceQuota admission plugin"),
        (
            'pods "x" is forbidden: failed quota: q: must specify limits.cpu for: trainer',
            "the ResourceQuota admission plugin",
        ),
        (
            'pods "x" is forbidden: maximum cpu usage per Container is 1, but limit is 2',
            "the LimitRanger admission plugin",
        ),
        (
            'pods "x" is forbidden: no PriorityClass with name urgent was found',
            "the Priority admission plugin",
        ),
        (
            'pods "x" is forbidden: error looking up service account ml/trainer: '
            'serviceaccount "trainer" not found',
            "the ServiceAccount admission plugin",
        ),
        (
            'admission webhook "policy.example.com" denied the request: no GPUs on Fridays',
            'admission webhook "policy.example.com"',
        ),
        (
            "pods \"x\" is forbidden: ValidatingAdmissionPolicy 'no-host' with binding 'b' "
            "denied request: failed expression: ...",
            "ValidatingAdmissionPolicy 'no-host'",
        ),
        (
            'pods is forbidden: User "system:serviceaccount:ops:trainforge" cannot create '
            'resource "pods" in API group "" in the namespace "ml"',
            "authorization (RBAC of the operator's account)",
        ),
        ('Pod "x" is invalid: spec.containers[0].image: Required value', ""),
    ],
)
def test_the_admission_step_is_named(message: str, step: str) -> None:
    assert admission_step(message) == step


def test_a_refusal_carries_the_plugin_the_server_message_and_the_fix() -> None:
    reason, message = refusal("Pod ml/llm-worker-0", POD_SECURITY, "fix the spec")
    assert reason == "AdmissionRejected"
    assert message == (
        f"the PodSecurity admission plugin refused Pod ml/llm-worker-0: {POD_SECURITY}; "
        "fix the spec"
    )
    reason, message = refusal("Pod ml/x", 'Pod "x" is invalid: spec: bad', "fix the spec")
    assert (reason, message) == (
        "ChildRejected",
        'the API server rejected Pod ml/x: Pod "x" is invalid: spec: bad; fix the spec',
    )
