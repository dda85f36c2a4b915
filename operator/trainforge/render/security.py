"""The security settings every rendered pod carries: the `restricted` Pod Security Standard.

Pure data shared by the worker and server renderers. The podTemplate overlay is merged after
them, so a user can still change any of them (docs/install.md, "Pod Security").
"""

from __future__ import annotations

from typing import Any

import trainforge_contract as contract

SCRATCH_VOLUME = "scratch"


def pod_security_context() -> dict[str, Any]:
    """Non-root as the images' user, the runtime's default seccomp profile, and the
    checkpoint volume's group set to the images' group so the non-root trainer can write it."""
    return {
        "runAsNonRoot": True,
        "runAsUser": contract.IMAGE_UID,
        "runAsGroup": contract.IMAGE_GID,
        "fsGroup": contract.IMAGE_GID,
        # A checkpoint volume holds many large files: the kubelet skips the recursive chown
        # when the volume's root already has the group.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(ipc_lock: bool = False) -> dict[str, Any]:
    """No capabilities, no privilege escalation, a read-only root filesystem; with `ipc_lock`
    (RDMA) the one capability IPC_LOCK, which takes the pod out of `restricted` and
    `baseline` (it needs a `privileged` namespace)."""
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    if ipc_lock:
        # RDMA registers (pins) memory beyond RLIMIT_MEMLOCK. A capability added for a
        # non-root user never becomes effective (the runtime sets no ambient capabilities,
        # kubernetes/kubernetes#56374), so this container runs as uid 0 holding IPC_LOCK and
        # nothing else; network.rdma.ipcLock: false keeps it non-root.
        context["capabilities"] = {"drop": ["ALL"], "add": ["IPC_LOCK"]}
        context["runAsNonRoot"] = False
        context["runAsUser"] = 0
    return context


def scratch_volume() -> dict[str, Any]:
    """The writable directory of a read-only root filesystem (contract.SCRATCH_MOUNT)."""
    return {"name": SCRATCH_VOLUME, "emptyDir": {}}


def scratch_mount() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "mountPath": contract.SCRATCH_MOUNT}


def scratch_env() -> list[dict[str, Any]]:
    """HOME on the scratch volume: the images' user has no home directory, and caches under
    ~ (triton's ~/.triton, ~/.cache) must land somewhere writable."""
    return [{"name": "HOME", "value": contract.SCRATCH_MOUNT}]
