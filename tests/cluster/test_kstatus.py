"""How the real kstatus library (sigs.k8s.io/cli-utils, what Flux's `wait: true`, kpt and
`kubectl apply --prune` tooling use) reads every state of both kinds, as docs/gitops.md says:
InProgress while work is under way, Current once the object is where the user asked (Running,
Succeeded, Suspended, serving), Failed when Stalled.

hack/kstatus/build.sh builds a tiny Go helper against the library, cached outside the repo.
The states come from the operator's own plan (every phase, deterministically) and from live
objects the operator took there on the local control plane."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

import trainforge_contract as contract
from kubetest import REPO, Kubectl, Operator, wait_for
from trainforge.reconcile import inferenceservice as isvc, trainingjob as tj
from trainforge.render.trainingjob import RenderSettings

pytestmark = pytest.mark.cluster

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SETTINGS = RenderSettings()


@pytest.fixture(scope="session")
def kstatus() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "hack/kstatus/build.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return Path(out.stdout.strip().splitlines()[-1])


def read(kstatus: Path, objects: list[dict[str, Any]]) -> list[str]:
    out = subprocess.run(
        [str(kstatus)], input=json.dumps(objects), capture_output=True, text=True, check=True
    )
    return [json.loads(line)["status"] for line in out.stdout.splitlines()]


# --- every phase, from the plan ------------------------------------------------------------


def job(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "TrainingJob",
        "metadata": {
            "name": "llm",
            "namespace": "ml",
            "uid": "uid-1",
            "generation": 2,
            "creationTimestamp": "2026-11-23T11:00:00Z",
        },
        "spec": {"workers": 2, "image": "trainer:1", **spec},
        "status": status or {},
    }


def pod(index: int, phase: str = "Running", **kw: Any) -> tj.PodView:
    return tj.PodView(
        name=f"llm-worker-{index}", uid=f"p{index}", index=index, attempt=0, phase=phase, **kw
    )


def planned(body: dict[str, Any], pods: list[tj.PodView], **kw: Any) -> dict[str, Any]:
    """The job as it reads after the operator wrote the plan's status."""
    kw.setdefault("children_present", tj.OTHER_CHILD_KINDS)
    result = tj.plan(tj.Observed(job=body, pods=pods, now=NOW, **kw), SETTINGS)
    return {**body, "status": result.status}


RUNNING = {
    "phase": "Running",
    "restartAttempt": 0,
    "restarts": 0,
    "startTime": "2026-11-23T11:00:00Z",
}
FAILED = {**RUNNING, "phase": "Failed", "completionTime": "2026-11-23T11:30:00Z"}

TRAINING_JOB_STATES = [
    ("pending", lambda: planned(job(), [], children_present=frozenset()), "InProgress"),
    ("workers-pending", lambda: planned(job(RUNNING), [pod(0, "Pending"), pod(1)]), "InProgress"),
    ("running", lambda: planned(job(RUNNING), [pod(0), pod(1)]), "Current"),
    (
        "restarting",
        lambda: planned(job(RUNNING), [pod(0, "Failed", exit_code=1), pod(1)]),
        "InProgress",
    ),
    ("suspended", lambda: planned(job(RUNNING, suspend=True), [pod(0), pod(1)]), "Current"),
    (
        "succeeded",
        lambda: planned(job(RUNNING), [pod(0, "Succeeded"), pod(1, "Succeeded")]),
        "Current",
    ),
    (
        "failed",
        lambda: planned(
            job(RUNNING, failurePolicy={"maxRestarts": 0}), [pod(0, "Failed", exit_code=1)]
        ),
        "Failed",
    ),
    ("failed-stays-failed", lambda: planned(job(FAILED), []), "Failed"),
    ("invalid-spec", lambda: planned(job(workers=0), []), "Failed"),
    (
        "missing-reference",
        lambda: planned(job(), [], missing_references=["spec.checkpoint.claimName: gone"]),
        "Failed",
    ),
    (
        "child-refused",
        lambda: planned(job(), [], rejected=[("AdmissionRejected", "PodSecurity refused")]),
        "Failed",
    ),
    (
        "container-cannot-start",
        lambda: planned(
            job(RUNNING), [pod(0), pod(1, "Pending", cannot_start=("ImagePullBackOff", "…"))]
        ),
        "Failed",
    ),
    (
        "checkpoint-claim-lost",
        lambda: planned(
            job(
                {**RUNNING, "checkpoint": {"step": 4, "path": "/c"}},
                checkpoint={"volumeClaimTemplate": {"size": "1Gi"}},
            ),
            [pod(0), pod(1)],
            children_present=frozenset({"Service"}),
        ),
        "Failed",
    ),
    (
        "unschedulable",
        lambda: planned(job(RUNNING), [pod(0, "Pending", unschedulable="0/4 nodes"), pod(1)]),
        "InProgress",
    ),
    # The user changed the spec and the operator has not acted on it yet.
    (
        "generation-ahead",
        lambda: {
            **planned(job(RUNNING), [pod(0), pod(1)]),
            "metadata": {"name": "llm", "generation": 3},
        },
        "InProgress",
    ),
]


def service(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "svc", "generation": 1},
        "spec": {"image": "trainer:1", **spec},
    }


PVC = {"model": {"claimName": "ckpt"}}


def served(spec: dict[str, Any], rollout: isvc.Rollout | None, **kw: Any) -> dict[str, Any]:
    body = service(spec)
    children = []
    if rollout is not None:
        # The Deployment the plan would apply, observed with `rollout`.
        first = isvc.plan(isvc.Observed(body, NOW, claim_exists=True), SETTINGS)
        deployment = next(m for m in first.apply if m["kind"] == "Deployment")
        children.append(
            isvc.ChildView(
                "Deployment",
                "chat",
                "d",
                "svc",
                deployment["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH],
                rollout,
            )
        )
    result = isvc.plan(isvc.Observed(body, NOW, children=children, **kw), SETTINGS)
    return {**body, "status": result.status}


DONE = isvc.Rollout(1, 1, replicas=1, ready_replicas=1, available_replicas=1, updated_replicas=1)
STARTING = isvc.Rollout(1, 1, replicas=1, updated_replicas=1)

INFERENCE_SERVICE_STATES = [
    ("deploying", lambda: served(PVC, None, claim_exists=True), "InProgress"),
    ("starting", lambda: served(PVC, STARTING, claim_exists=True), "InProgress"),
    ("ready", lambda: served(PVC, DONE, claim_exists=True), "Current"),
    (
        "scaled-to-zero",
        lambda: served({**PVC, "replicas": 0}, isvc.Rollout(1, 1), claim_exists=True),
        "Current",
    ),
    (
        "waiting-for-checkpoint",
        lambda: served(
            {"model": {"fromTrainingJob": "llm"}},
            None,
            job={"spec": {"checkpoint": {"claimName": "c"}}, "status": {"phase": "Running"}},
        ),
        "InProgress",
    ),
    ("claim-missing", lambda: served(PVC, None, claim_exists=False), "Failed"),
    ("invalid-spec", lambda: served({"model": {}}, None), "Failed"),
    (
        "pods-refused",
        lambda: served(
            PVC, isvc.Rollout(1, 1, replica_failure="violates PodSecurity"), claim_exists=True
        ),
        "Failed",
    ),
    (
        "name-taken",
        lambda: served(PVC, None, claim_exists=True, blocked=[("NameConflict", "taken")]),
        "Failed",
    ),
]


def test_every_training_job_phase_reads_as_docs_gitops_says(kstatus: Path) -> None:
    objects = [make() for _, make, _ in TRAINING_JOB_STATES]
    got = dict(
        zip([name for name, _, _ in TRAINING_JOB_STATES], read(kstatus, objects), strict=True)
    )
    assert got == {name: want for name, _, want in TRAINING_JOB_STATES}


def test_every_inference_service_state_reads_as_docs_gitops_says(kstatus: Path) -> None:
    objects = [make() for _, make, _ in INFERENCE_SERVICE_STATES]
    names = [name for name, _, _ in INFERENCE_SERVICE_STATES]
    got = dict(zip(names, read(kstatus, objects), strict=True))
    assert got == {name: want for name, _, want in INFERENCE_SERVICE_STATES}


# --- live objects ----------------------------------------------------------------------------


def live(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


def test_live_training_jobs_read_as_docs_gitops_says(
    operator: Operator, kubectl: Kubectl, namespace: str, kstatus: Path
) -> None:
    def manifest(name: str, **spec: Any) -> str:
        body = {"workers": 1, "image": "example.com/trainer:1", **spec}
        return yaml.safe_dump(
            {
                "apiVersion": contract.API_VERSION,
                "kind": "TrainingJob",
                "metadata": {"name": name},
                "spec": body,
            }
        )

    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("paused", suspend=True))
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=manifest("stalled", checkpoint={"claimName": "nope"}),
    )

    def settled() -> list[dict[str, Any]] | None:
        jobs = [live(kubectl, namespace, "trainingjob", n) for n in ("paused", "stalled")]
        phases = [j.get("status", {}).get("phase") for j in jobs]
        # A status-less object reads Current too: wait for the operator's word first.
        return jobs if phases == ["Suspended", "Pending"] else None

    jobs: list[dict[str, Any]] = wait_for(settled, "the operator to write both statuses")  # type: ignore[assignment]
    assert read(kstatus, jobs) == ["Current", "Failed"]

    kubectl(
        "patch",
        "trainingjob",
        "paused",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"suspend": false}}',
    )
    # Resuming: InProgress until the worker runs, then Current again.
    wait_for(
        lambda: live(kubectl, namespace, "trainingjob", "paused")["status"]["phase"] == "Running",
        "the resumed job to run",
    )
    assert read(kstatus, [live(kubectl, namespace, "trainingjob", "paused")]) == ["Current"]
