"""The Argo CD health checks in docs/ run by a real Lua interpreter (Debian's lua5.4; Argo CD
embeds a Lua 5.1 one, so the scripts stick to the common subset) against status objects as the
operator writes them (reconcile/trainingjob.py: phase, the job's own conditions, and kstatus'
Ready/Reconciling/Stalled)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from kubetest import REPO

LUA = shutil.which("lua5.4")
pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.4 missing: apt-get install lua5.4")


def to_lua(value: Any) -> str:
    """A Python value (parsed JSON) as a Lua expression, as Argo CD hands objects to Lua."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{to_lua(k)}] = {to_lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "nil"
    # Lua's \ddd escapes (always three digits, so a following digit is not swallowed).
    escaped = "".join(
        c if c.isprintable() and c not in '"\\' else "".join(f"\\{b:03d}" for b in c.encode())
        for c in str(value)
    )
    return f'"{escaped}"'


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health script as Argo CD does: `obj` global, the script's return value read."""
    program = (
        f"obj = {to_lua(obj)}\n"
        f"local hs = (function()\n{(REPO / 'docs' / script).read_text()}\nend)()\n"
        'io.write(hs.status, "\\n", hs.message or "")\n'
    )
    result = subprocess.run(
        [str(LUA), "-"], input=program, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    status, _, message = result.stdout.partition("\n")
    return status, message


def cond(type_: str, status: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-23T10:00:00Z",
        "observedGeneration": 1,
    }


def job(
    phase: str | None, *conditions: dict[str, Any], generation: int = 1, observed: int | None = 1
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "llm", "namespace": "ml", "generation": generation},
    }
    if phase is not None:
        obj["status"] = {
            "phase": phase,
            "conditions": list(conditions),
            "workers": {"total": 2, "running": 2},
            "restarts": 0,
        }
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


def kstatus(
    ready: bool, reconciling: bool, stalled: bool, phase: str, message: str = ""
) -> list[dict[str, Any]]:
    return [
        cond("Ready", ready, phase, message),
        cond("Reconciling", reconciling, phase, message if reconciling else ""),
        cond("Stalled", stalled, "Failed" if stalled else "NotStalled", message if stalled else ""),
    ]


TRAININGJOBS = {
    "new, no status yet": (job(None), "Progressing", "Waiting for the trainforge operator"),
    "spec changed, not observed yet": (
        job("Running", *kstatus(True, False, False, "Running"), generation=2, observed=1),
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
    "pending, unschedulable": (
        job(
            "Pending",
            cond(
                "Running",
                False,
                "Unschedulable",
                "llm-worker-0: 0/5 nodes are available: 4 Insufficient nvidia.com/gpu",
            ),
            *kstatus(False, True, False, "Pending", "0/2 workers running"),
        ),
        "Progressing",
        "Pending: llm-worker-0: 0/5 nodes are available: 4 Insufficient nvidia.com/gpu",
    ),
    "running": (
        job(
            "Running",
            cond("Running", True, "AllWorkersRunning", "all 2 workers are running"),
            *kstatus(True, False, False, "Running"),
        ),
        "Progressing",
        "Running: all 2 workers are running",
    ),
    "restarting": (
        job(
            "Restarting",
            cond(
                "Restarting",
                True,
                "WorkerFailed",
                "llm-worker-1 exited with 1; restarting the gang (1/3)",
            ),
            *kstatus(False, True, False, "Restarting"),
        ),
        "Progressing",
        "Restarting: llm-worker-1 exited with 1; restarting the gang (1/3)",
    ),
    "suspended": (
        job(
            "Suspended",
            cond("Suspended", True, "Suspended", "spec.suspend is true"),
            *kstatus(True, False, False, "Suspended"),
        ),
        "Suspended",
        "spec.suspend is true",
    ),
    "succeeded": (
        job(
            "Succeeded",
            cond("Succeeded", True, "AllWorkersSucceeded", "all 2 workers succeeded"),
            *kstatus(True, False, False, "Succeeded"),
        ),
        "Healthy",
        "All workers succeeded",
    ),
    "failed": (
        job(
            "Failed",
            cond(
                "Failed",
                True,
                "MaxRestartsReached",
                "llm-worker-0 exited with 1 after 3 restarts (maxRestarts 3)",
            ),
            *kstatus(False, False, True, "Failed", "llm-worker-0 exited with 1"),
        ),
        "Degraded",
        "llm-worker-0 exited with 1 after 3 restarts (maxRestarts 3)",
    ),
    "stalled on a missing network": (
        job(
            "Pending",
            cond(
                "Stalled",
                True,
                "MissingReference",
                "spec.network.rdma.networks[0]: NetworkAttachmentDefinition "
                "ml/rail-0 does not exist",
            ),
            cond("Ready", False, "Pending"),
            cond("Reconciling", False, "Pending"),
        ),
        "Degraded",
        "spec.network.rdma.networks[0]: NetworkAttachmentDefinition ml/rail-0 does not exist",
    ),
}


@pytest.mark.parametrize("case", TRAININGJOBS)
def test_trainingjob_health(case: str) -> None:
    obj, status, message = TRAININGJOBS[case]
    assert health("argocd-health-trainingjob.lua", obj) == (status, message)


def service(*conditions: dict[str, Any], generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "ml", "generation": generation},
        "status": {
            "observedGeneration": observed,
            "conditions": list(conditions),
            "replicas": 2,
            "readyReplicas": 2,
            "url": "http://chat.ml.svc.cluster.local",
        },
    }


INFERENCESERVICES = {
    "not observed yet": (
        service(cond("Ready", True, "Available"), generation=3, observed=2),
        "Progressing",
        "Waiting for the operator to observe generation 3",
    ),
    "waiting for a checkpoint": (
        service(
            cond(
                "ModelLoaded",
                False,
                "NoCheckpoint",
                "TrainingJob llm has not committed a checkpoint yet",
            ),
            cond("Ready", False, "ModelNotLoaded"),
            cond("Stalled", False, "NotStalled"),
        ),
        "Progressing",
        "Model not loaded: TrainingJob llm has not committed a checkpoint yet",
    ),
    "replicas starting": (
        service(
            cond("ModelLoaded", True, "Loaded"),
            cond("Ready", False, "ReplicasUnavailable", "1/2 replicas available"),
        ),
        "Progressing",
        "Not ready: 1/2 replicas available",
    ),
    "ready": (
        service(
            cond("ModelLoaded", True, "Loaded"),
            cond("Ready", True, "Available", "2/2 replicas available"),
            cond("Stalled", False, "NotStalled"),
        ),
        "Healthy",
        "2/2 replicas available",
    ),
    "stalled": (
        service(
            cond("Ready", False, "InvalidSpec"),
            cond(
                "Stalled",
                True,
                "MissingReference",
                "spec.model.claimName: PersistentVolumeClaim ml/ckpt does not exist",
            ),
        ),
        "Degraded",
        "spec.model.claimName: PersistentVolumeClaim ml/ckpt does not exist",
    ),
}


@pytest.mark.parametrize("case", INFERENCESERVICES)
def test_inferenceservice_health(case: str) -> None:
    obj, status, message = INFERENCESERVICES[case]
    assert health("argocd-health-inferenceservice.lua", obj) == (status, message)


def test_lua_escaping_survives_quotes_and_newlines() -> None:
    message = 'exit "1"\nsee C:\\logs'
    obj = job("Failed", cond("Failed", True, "ExitCode", message))
    assert health("argocd-health-trainingjob.lua", obj) == ("Degraded", message)
