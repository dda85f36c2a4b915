"""What a pod's container statuses say about it, for every kind: a container that cannot
start is named with the kubelet's reason and message, never left as a silent Pending."""

from __future__ import annotations

from typing import Any

# Waiting reasons that do not go away by waiting: each needs a change by a person.
CANNOT_START = {
    "ErrImagePull": "check the image name and that the node may pull it "
    "(spec.podTemplate.spec.imagePullSecrets)",
    "ImagePullBackOff": "check the image name and that the node may pull it "
    "(spec.podTemplate.spec.imagePullSecrets)",
    "InvalidImageName": "fix the image name",
    "CreateContainerConfigError": "create the Secret or ConfigMap that env or volumes refer to, "
    "or fix the reference",
    "CreateContainerError": "check the command and the image's entrypoint",
    "RunContainerError": "check the command and the image's entrypoint",
    "CrashLoopBackOff": "the container keeps exiting; `kubectl logs --previous` shows why",
}


def cannot_start(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(kubelet reason, message naming the pod and container) when a container of `pod`
    waits for one of the CANNOT_START reasons; None otherwise."""
    status = pod.get("status") or {}
    name = pod.get("metadata", {}).get("name", "")
    for container in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in CANNOT_START:
            detail = waiting.get("message") or "no message from the kubelet"
            return reason, (
                f"pod {name} cannot start container {container.get('name')}: {reason}: "
                f"{detail}; {CANNOT_START[reason]}"
            )
    return None
