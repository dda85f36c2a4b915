"""InferenceService reconcile plan: model resolution, children to apply/delete, status."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

import trainforge_contract as contract
from trainforge.api import parse_inference_service_spec
from trainforge.reconcile.inferenceservice import (
    ChildView,
    Observed,
    Plan,
    Rollout,
    child_view,
    plan,
    resolve_model,
)
from trainforge.render.inferenceservice import InferenceRef, ModelMount, desired_children
from trainforge.render.trainingjob import RenderSettings

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SETTINGS = RenderSettings()
UID = "svc-uid"
PVC = {"model": {"claimName": "ckpt"}}
FROM_JOB = {"model": {"fromTrainingJob": "llm"}}


def service(spec: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1):
    body: dict[str, Any] = {
        "apiVersion": "trainforge.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "ml", "uid": UID, "generation": generation},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def job(
    checkpoint: dict[str, Any] | None = None,
    step: int | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if step is not None:
        status["checkpoint"] = {"step": step, "path": f"/checkpoints/step-{step:08d}"}
    return {
        "metadata": {"name": "llm", "namespace": "ml"},
        "spec": {"workers": 1, **({"checkpoint": checkpoint} if checkpoint else {})},
        "status": status,
    }


TEMPLATE = {"volumeClaimTemplate": {"size": "1Gi"}}


def conditions(result: Plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in result.status["conditions"]}


def children_for(spec: dict[str, Any], mount: ModelMount, rollout: Rollout) -> list[ChildView]:
    """The children as the indexes show them once everything was applied."""
    desired = desired_children(
        InferenceRef("chat", "ml", UID), parse_inference_service_spec(spec), mount, SETTINGS
    )
    views = []
    for kind, manifest in desired.by_kind().items():
        if manifest is None:
            continue
        views.append(
            ChildView(
                kind=kind,
                name="chat",
                uid=f"{kind}-uid",
                owner_uid=UID,
                spec_hash=manifest["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH],
                rollout=rollout if kind == "Deployment" else None,
            )
        )
    return views


def job_on_runtime(checkpoint: dict[str, Any], step: int) -> dict[str, Any]:
    """A job whose checkpoint volume comes from its TrainingRuntime: only its effective spec
    (status.effectiveSpec) has it."""
    with_runtime = job(step=step)
    with_runtime["spec"]["runtimeRef"] = {"name": "rdma"}
    with_runtime["status"]["effectiveSpec"] = {"workers": 1, "checkpoint": checkpoint}
    return with_runtime


PVC_MOUNT = ModelMount("ckpt", "/checkpoints", "/checkpoints")
DONE = Rollout(2, 2, replicas=1, ready_replicas=1, available_replicas=1, updated_replicas=1)


# --- model resolution --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "the_job", "mount", "reason", "stalled", "model"),
    [
        (PVC, None, PVC_MOUNT, "", False, {"claimName": "ckpt", "path": "/checkpoints"}),
        (
            {"model": {"claimName": "ckpt", "path": "runs/gpt"}},
            None,
            ModelMount("ckpt", "/checkpoints", "/checkpoints/runs/gpt"),
            "",
            False,
            {"claimName": "ckpt", "path": "/checkpoints/runs/gpt"},
        ),
        (FROM_JOB, None, None, "TrainingJobNotFound", True, {"trainingJob": "llm"}),
        (FROM_JOB, job(), None, "NoCheckpointVolume", True, {"trainingJob": "llm"}),
        (
            FROM_JOB,
            job(TEMPLATE),
            None,
            "WaitingForCheckpoint",
            False,
            {"trainingJob": "llm", "claimName": "llm-checkpoints"},
        ),
        (
            FROM_JOB,
            job(TEMPLATE, phase="Failed"),
            None,
            "NoCheckpoint",
            True,
            {"trainingJob": "llm", "claimName": "llm-checkpoints"},
        ),
        (
            FROM_JOB,
            job(TEMPLATE, step=5),
            ModelMount("llm-checkpoints", "/checkpoints", "/checkpoints"),
            "",
            False,
            {
                "trainingJob": "llm",
                "claimName": "llm-checkpoints",
                "path": "/checkpoints/step-00000005",
                "step": 5,
            },
        ),
        (
            FROM_JOB,
            job({"claimName": "shared", "mountPath": "/ckpt"}, step=7),
            ModelMount("shared", "/ckpt", "/ckpt"),
            "",
            False,
            {
                "trainingJob": "llm",
                "claimName": "shared",
                "path": "/checkpoints/step-00000007",
                "step": 7,
            },
        ),
        (
            FROM_JOB,
            job_on_runtime({"claimName": "platform-ckpt", "mountPath": "/ckpt"}, step=3),
            ModelMount("platform-ckpt", "/ckpt", "/ckpt"),
            "",
            False,
            {
                "trainingJob": "llm",
                "claimName": "platform-ckpt",
                "path": "/checkpoints/step-00000003",
                "step": 3,
            },
        ),
    ],
    ids=[
        "claim",
        "claim-path",
        "job-missing",
        "job-without-checkpoint-volume",
        "job-without-checkpoint-yet",
        "job-failed-without-checkpoint",
        "job-with-checkpoint",
        "job-with-own-claim",
        "job-with-the-claim-of-its-runtime",
    ],
)
def test_resolve_model(
    spec: dict[str, Any],
    the_job: dict[str, Any] | None,
    mount: ModelMount | None,
    reason: str,
    stalled: bool,
    model: dict[str, Any],
) -> None:
    resolution = resolve_model("ml", parse_inference_service_spec(spec), the_job)
    assert resolution.mount == mount
    assert (resolution.reason, resolution.stalled) == (reason, stalled)
    assert resolution.model == model
    if reason:
        assert "llm" in resolution.message


# --- plan ----------------------------------------------------------------------------------------


def test_a_new_service_from_a_pvc_creates_its_children() -> None:
    result = plan(Observed(service({**PVC, "replicas": 2}), NOW, claim_exists=True), SETTINGS)
    assert [m["kind"] for m in result.apply] == ["Deployment", "Service", "PodDisruptionBudget"]
    assert result.delete == []
    assert conditions(result) == {
        "Ready": ("False", "Deploying"),
        "ModelLoaded": ("False", "Loading"),
        "Reconciling": ("True", "Deploying"),
        "Stalled": ("False", "NotStalled"),
    }
    status = result.status
    assert status["url"] == "http://chat.ml.svc.cluster.local"
    assert status["selector"] == (
        "app.kubernetes.io/managed-by=trainforge,trainforge.io/inference-service=chat"
    )
    assert (status["replicas"], status["readyReplicas"], status["observedGeneration"]) == (0, 0, 1)


def test_ready_when_the_current_deployment_has_the_desired_available_replicas() -> None:
    obs = Observed(
        service(PVC), NOW, claim_exists=True, children=children_for(PVC, PVC_MOUNT, DONE)
    )
    result = plan(obs, SETTINGS)
    assert result.apply == [] and result.delete == []
    assert conditions(result) == {
        "Ready": ("True", "Available"),
        "ModelLoaded": ("True", "Loaded"),
        "Reconciling": ("False", "Reconciled"),
        "Stalled": ("False", "NotStalled"),
    }
    assert (result.status["replicas"], result.status["readyReplicas"]) == (1, 1)
    assert result.status["model"] == {"claimName": "ckpt", "path": "/checkpoints"}


def test_status_is_stable_once_reached() -> None:
    obs = Observed(
        service(PVC), NOW, claim_exists=True, children=children_for(PVC, PVC_MOUNT, DONE)
    )
    first = plan(obs, SETTINGS)
    later = replace(obs, service=service(PVC, first.status), now=NOW.replace(hour=13))
    second = plan(later, SETTINGS)
    assert second.status == first.status
    assert second.events == []


@pytest.mark.parametrize(
    ("rollout", "reason"),
    [
        (replace(DONE, generation=3), "Updating"),
        (replace(DONE, updated_replicas=0), "RollingOut"),
        (replace(DONE, available_replicas=0, ready_replicas=0), "ReplicasUnavailable"),
    ],
)
def test_not_ready_while_the_rollout_is_incomplete(rollout: Rollout, reason: str) -> None:
    obs = Observed(
        service(PVC), NOW, claim_exists=True, children=children_for(PVC, PVC_MOUNT, rollout)
    )
    result = plan(obs, SETTINGS)
    assert conditions(result)["Ready"] == ("False", reason)
    assert conditions(result)["Reconciling"] == ("True", reason)


def test_a_changed_spec_updates_the_deployment_in_place() -> None:
    children = children_for(PVC, PVC_MOUNT, DONE)
    result = plan(
        Observed(
            service({**PVC, "server": {"maxBatchSize": 4}}, generation=2),
            NOW,
            claim_exists=True,
            children=children,
        ),
        SETTINGS,
    )
    assert [m["kind"] for m in result.apply] == ["Deployment"]
    assert conditions(result)["Ready"] == ("False", "Updating")
    assert result.status["observedGeneration"] == 2


def test_children_applied_but_not_yet_watched_are_not_applied_again() -> None:
    first = plan(Observed(service(PVC), NOW, claim_exists=True), SETTINGS)
    in_flight = {
        m["kind"]: m["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH] for m in first.apply
    }
    again = plan(
        Observed(service(PVC, first.status), NOW, claim_exists=True, in_flight=in_flight), SETTINGS
    )
    assert again.apply == []
    assert again.events == []


def test_unwanted_children_are_deleted() -> None:
    spec = {**PVC, "replicas": 3, "autoscaling": {"maxReplicas": 4, "metrics": [{"type": "Pods"}]}}
    children = children_for(spec, PVC_MOUNT, DONE)
    result = plan(Observed(service(PVC), NOW, claim_exists=True, children=children), SETTINGS)
    assert sorted(child.kind for child in result.delete) == [
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    assert [m["kind"] for m in result.apply] == ["Deployment"]  # replicas 3 -> 1


def test_scaled_to_zero_is_ready_with_no_model_loaded() -> None:
    spec = {**PVC, "replicas": 0}
    rollout = Rollout(1, 1)
    obs = Observed(
        service(spec), NOW, claim_exists=True, children=children_for(spec, PVC_MOUNT, rollout)
    )
    result = plan(obs, SETTINGS)
    assert conditions(result)["Ready"] == ("True", "ScaledToZero")
    assert conditions(result)["ModelLoaded"] == ("False", "ScaledToZero")


def test_waiting_for_the_jobs_first_checkpoint_deploys_nothing() -> None:
    result = plan(Observed(service(FROM_JOB), NOW, job=job(TEMPLATE)), SETTINGS)
    assert result.apply == []
    assert conditions(result) == {
        "Ready": ("False", "ModelNotLoaded"),
        "ModelLoaded": ("False", "WaitingForCheckpoint"),
        "Reconciling": ("True", "ModelNotLoaded"),
        "Stalled": ("False", "NotStalled"),
    }
    assert result.status["model"] == {"trainingJob": "llm", "claimName": "llm-checkpoints"}


def test_the_jobs_checkpoint_deploys_and_a_newer_one_only_updates_status() -> None:
    mount = ModelMount("llm-checkpoints", "/checkpoints", "/checkpoints")
    first = plan(
        Observed(service(FROM_JOB), NOW, job=job(TEMPLATE, step=5), claim_exists=True), SETTINGS
    )
    assert [m["kind"] for m in first.apply] == ["Deployment", "Service"]
    assert first.status["model"]["step"] == 5
    assert ("Normal", "NewCheckpoint", "TrainingJob llm committed the checkpoint of step 5") in (
        first.events
    )

    children = children_for(FROM_JOB, mount, DONE)
    newer = plan(
        Observed(
            service(FROM_JOB, first.status),
            NOW,
            job=job(TEMPLATE, step=10),
            claim_exists=True,
            children=children,
        ),
        SETTINGS,
    )
    # The servers hot-reload: the Deployment does not roll for a new checkpoint.
    assert newer.apply == []
    assert newer.status["model"]["step"] == 10
    assert [e[1] for e in newer.events] == ["ModelLoaded", "NewCheckpoint"]
    assert "without a restart" in newer.events[-1][2]


def test_a_missing_claim_stalls_naming_the_field() -> None:
    result = plan(Observed(service(PVC), NOW, claim_exists=False), SETTINGS)
    assert result.apply == []
    assert conditions(result)["Stalled"] == ("True", "MissingReference")
    assert conditions(result)["ModelLoaded"] == ("False", "ClaimNotFound")
    stalled = next(c for c in result.status["conditions"] if c["type"] == "Stalled")
    assert stalled["message"] == (
        "spec.model.claimName: PersistentVolumeClaim ml/ckpt does not exist; create it or fix the "
        "name"
    )
    assert ("Warning", "MissingReference", stalled["message"]) in result.events


def test_a_vanished_job_leaves_the_running_servers_alone() -> None:
    mount = ModelMount("llm-checkpoints", "/checkpoints", "/checkpoints")
    children = children_for(FROM_JOB, mount, DONE)
    result = plan(Observed(service(FROM_JOB), NOW, job=None, children=children), SETTINGS)
    assert result.apply == [] and result.delete == []
    assert conditions(result)["Stalled"] == ("True", "MissingReference")
    assert result.status["readyReplicas"] == 1


def test_an_invalid_spec_stalls() -> None:
    result = plan(Observed(service({"model": {}}), NOW), SETTINGS)
    assert result.apply == []
    assert conditions(result)["Stalled"] == ("True", "InvalidSpec")
    assert "spec.model" in result.status["conditions"][0]["message"]


def test_a_stuck_rollout_and_a_taken_name_stall() -> None:
    stuck = replace(DONE, available_replicas=0, stuck_message='ReplicaSet "chat-1" has timed out')
    obs = Observed(
        service(PVC), NOW, claim_exists=True, children=children_for(PVC, PVC_MOUNT, stuck)
    )
    assert conditions(plan(obs, SETTINGS))["Stalled"] == ("True", "ProgressDeadlineExceeded")

    taken = plan(
        Observed(
            service(PVC),
            NOW,
            claim_exists=True,
            blocked=[("NameConflict", "Deployment ml/chat exists")],
        ),
        SETTINGS,
    )
    assert conditions(taken)["Stalled"] == ("True", "NameConflict")
    assert taken.requeue_after is not None


def test_child_view_reads_a_deployment() -> None:
    view = child_view(
        {
            "kind": "Deployment",
            "metadata": {
                "name": "chat",
                "uid": "d",
                "generation": 4,
                "annotations": {contract.ANNOTATION_SPEC_HASH: "abc"},
                "ownerReferences": [{"uid": UID, "controller": True}],
            },
            "status": {
                "observedGeneration": 4,
                "replicas": 3,
                "readyReplicas": 2,
                "availableReplicas": 2,
                "updatedReplicas": 3,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "timed out",
                    }
                ],
            },
        }
    )
    assert (view.owner_uid, view.spec_hash) == (UID, "abc")
    assert view.rollout == Rollout(4, 4, 3, 2, 2, 3, "timed out")


def test_pods_the_api_server_refuses_stall_with_the_plugin_and_its_message() -> None:
    refused = replace(
        DONE,
        ready_replicas=0,
        available_replicas=0,
        replica_failure='pods "chat-7d9-x" is forbidden: violates PodSecurity "baseline:latest": '
        "host namespaces (hostNetwork=true)",
    )
    obs = Observed(
        service(PVC), NOW, claim_exists=True, children=children_for(PVC, PVC_MOUNT, refused)
    )
    result = plan(obs, SETTINGS)
    assert conditions(result)["Stalled"] == ("True", "AdmissionRejected")
    assert conditions(result)["ModelLoaded"] == ("False", "AdmissionRejected")
    stalled = next(c for c in result.status["conditions"] if c["type"] == "Stalled")
    assert stalled["message"].startswith(
        "the PodSecurity admission plugin refused the pods of Deployment ml/chat: pods "
    )
    assert ("Warning", "AdmissionRejected", stalled["message"]) in result.events


def test_child_view_reads_a_replica_failure() -> None:
    view = child_view(
        {
            "kind": "Deployment",
            "metadata": {"name": "chat", "uid": "d"},
            "status": {
                "conditions": [
                    {
                        "type": "ReplicaFailure",
                        "status": "True",
                        "reason": "FailedCreate",
                        "message": 'pods "chat-1" is forbidden: exceeded quota: q',
                    }
                ]
            },
        }
    )
    assert view.rollout is not None
    assert view.rollout.replica_failure == 'pods "chat-1" is forbidden: exceeded quota: q'


def test_server_pods_that_cannot_start_stall_the_service() -> None:
    starting = replace(DONE, ready_replicas=0, available_replicas=0)
    problem = ("CrashLoopBackOff", "pod chat-1 cannot start container server: CrashLoopBackOff: …")
    obs = Observed(
        service(PVC),
        NOW,
        claim_exists=True,
        children=children_for(PVC, PVC_MOUNT, starting),
        pods_cannot_start=[problem],
    )
    result = plan(obs, SETTINGS)
    assert conditions(result)["Stalled"] == ("True", "CrashLoopBackOff")
    assert conditions(result)["ModelLoaded"] == ("False", "CrashLoopBackOff")
    assert ("Warning", "CrashLoopBackOff", problem[1]) in result.events
