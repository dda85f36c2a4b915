"""The TrainingJob lifecycle rules, table-driven on the pure plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import trainforge_contract as contract
from trainforge.reconcile.trainingjob import (
    OTHER_CHILD_KINDS as ALL,
    Observed,
    Plan,
    PodView,
    plan,
    pod_view,
)
from trainforge.render.trainingjob import RenderSettings

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
SETTINGS = RenderSettings()


def job(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "TrainingJob",
        "metadata": {
            "name": "llm",
            "namespace": "ml",
            "uid": "uid-1",
            "generation": 3,
            "creationTimestamp": "2026-11-23T11:00:00Z",
        },
        "spec": {"workers": 2, "image": "trainer:1", **spec},
        "status": status or {},
    }


def pod(index: int, phase: str = "Running", attempt: int = 0, **kw: Any) -> PodView:
    return PodView(
        name=f"llm-worker-{index}",
        uid=f"p{attempt}-{index}",
        index=index,
        attempt=attempt,
        phase=phase,
        **kw,
    )


def run(job_: dict[str, Any], pods: list[PodView], now: datetime = NOW, **kw: Any) -> Plan:
    kw.setdefault("children_present", ALL)  # the service (etc.) exists unless a test says not
    return plan(Observed(job=job_, pods=pods, now=now, **kw), SETTINGS)


def cond(result: Plan, type_: str) -> dict[str, Any]:
    return next(c for c in result.status["conditions"] if c["type"] == type_)


def kinds(result: Plan) -> list[str]:
    return [m["kind"] for m in result.create]


RUNNING = {
    "phase": "Running",
    "restartAttempt": 0,
    "restarts": 0,
    "startTime": "2026-11-23T11:00:00Z",
}


def test_new_job_creates_children_then_pods() -> None:
    result = run(job(), [], children_present=frozenset())
    assert kinds(result) == ["Service", "Pod", "Pod"]
    assert result.status["phase"] == "Pending"
    assert result.status["startTime"] == "2026-11-23T12:00:00Z"
    assert result.status["observedGeneration"] == 3
    assert cond(result, "Reconciling")["status"] == "True"
    assert cond(result, "Ready")["status"] == "False"


def test_children_are_not_recreated_once_ensured() -> None:
    assert kinds(run(job(), [pod(0, "Pending")], children_present=frozenset({"Service"}))) == [
        "Pod"
    ]


def test_all_workers_running_is_ready() -> None:
    result = run(job(RUNNING), [pod(0), pod(1)])
    assert result.create == [] and result.delete_pods == []
    assert result.status["phase"] == "Running"
    assert cond(result, "Running")["status"] == "True"
    assert cond(result, "Ready")["status"] == "True"
    assert cond(result, "Reconciling")["status"] == "False"
    assert result.status["workers"] == {
        "total": 2,
        "pending": 0,
        "running": 2,
        "ready": 2,
        "succeeded": 0,
        "failed": 0,
    }


@pytest.mark.parametrize(
    ("failed", "policy", "restarts", "phase", "reason", "counted"),
    [
        (pod(1, "Failed", exit_code=1), {}, 0, "Restarting", "WorkerFailed", True),
        (
            pod(1, "Failed", exit_code=1),
            {"maxRestarts": 2},
            2,
            "Failed",
            "MaxRestartsExceeded",
            False,
        ),
        (
            pod(1, "Failed", exit_code=42),
            {"failOnExitCodes": [42]},
            0,
            "Failed",
            "FailOnExitCode",
            False,
        ),
        (
            pod(1, "Failed", exit_code=contract.EXIT_CONFIG_ERROR),
            {},
            0,
            "Failed",
            "FailOnExitCode",
            False,
        ),
        (
            pod(1, "Failed", disrupted=True),
            {"maxRestarts": 0},
            0,
            "Restarting",
            "WorkersDisrupted",
            False,
        ),
        (
            pod(1, "Failed", exit_code=contract.EXIT_PREEMPTED),
            {"maxRestarts": 0},
            0,
            "Restarting",
            "WorkersDisrupted",
            False,
        ),
    ],
)
def test_worker_failure(
    failed: PodView, policy: dict[str, Any], restarts: int, phase: str, reason: str, counted: bool
) -> None:
    status = {**RUNNING, "restarts": restarts}
    result = run(job(status, failurePolicy=policy), [pod(0), failed])
    assert result.status["phase"] == phase
    assert cond(result, phase)["reason"] == reason
    assert result.create == []
    assert result.counted_restart is counted
    if phase == "Restarting":
        assert result.status["restartAttempt"] == 1
        assert result.status["restarts"] == restarts + counted
        assert {p.name for p in result.delete_pods} == {"llm-worker-0", "llm-worker-1"}
        assert result.events[0][1] == "GangRestarted"
    else:
        assert cond(result, "Stalled")["status"] == "True"
        assert [p.name for p in result.delete_pods] == ["llm-worker-0"]  # the one still running
        assert result.status["completionTime"] == "2026-11-23T12:00:00Z"


def test_new_gang_waits_for_the_old_one_to_terminate() -> None:
    status = {**RUNNING, "phase": "Restarting", "restartAttempt": 1, "restarts": 1}
    result = run(job(status), [pod(0, "Running", attempt=0), pod(1, "Failed", attempt=0)])
    assert result.create == []
    assert {p.name for p in result.delete_pods} == {"llm-worker-0", "llm-worker-1"}
    assert result.status["phase"] == "Restarting"

    result = run(job(status), [])
    pods = [m for m in result.create if m["kind"] == "Pod"]
    assert [p["metadata"]["labels"][contract.LABEL_RESTART_ATTEMPT] for p in pods] == ["1", "1"]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_RESTART_ATTEMPT] == "1"


def test_all_workers_succeeded() -> None:
    result = run(job(RUNNING), [pod(0, "Succeeded"), pod(1, "Succeeded")])
    assert result.status["phase"] == "Succeeded"
    assert cond(result, "Succeeded")["status"] == "True"
    assert cond(result, "Ready")["status"] == "True"
    assert result.status["completionTime"] == "2026-11-23T12:00:00Z"


def test_one_worker_done_is_still_running() -> None:
    result = run(job(RUNNING), [pod(0, "Succeeded"), pod(1)])
    assert result.status["phase"] == "Pending"


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminal_phases_are_sticky(phase: str) -> None:
    status = {
        **RUNNING,
        "phase": phase,
        "completionTime": "2026-11-23T11:30:00Z",
        "conditions": [
            {
                "type": phase,
                "status": "True",
                "reason": "Because",
                "message": "it ended",
                "lastTransitionTime": "x",
            }
        ],
    }
    result = run(job(status), [pod(0, "Running")])
    assert result.create == []
    assert [p.name for p in result.delete_pods] == ["llm-worker-0"]
    assert result.status["phase"] == phase
    assert cond(result, phase)["reason"] == "Because"
    assert run(job(status), []).create == []


def test_suspend_deletes_workers_and_resets_the_clock() -> None:
    result = run(job(RUNNING, suspend=True), [pod(0), pod(1)])
    assert result.status["phase"] == "Suspended"
    assert len(result.delete_pods) == 2 and result.create == []
    assert "startTime" not in result.status
    assert cond(result, "Suspended")["status"] == "True"


def test_active_deadline() -> None:
    status = {**RUNNING, "startTime": "2026-11-23T11:59:00Z"}
    result = run(job(status, activeDeadlineSeconds=60), [pod(0), pod(1)])
    assert result.status["phase"] == "Failed"
    assert cond(result, "Failed")["reason"] == "DeadlineExceeded"
    assert len(result.delete_pods) == 2

    early = run(job(status, activeDeadlineSeconds=90), [pod(0), pod(1)])
    assert early.status["phase"] == "Running"
    assert early.requeue_after == pytest.approx(30)


def test_ttl_after_finished() -> None:
    done = {**RUNNING, "phase": "Succeeded", "completionTime": "2026-11-23T11:59:50Z"}
    assert run(job(done, ttlSecondsAfterFinished=10), []).delete_job
    later = run(job(done, ttlSecondsAfterFinished=30), [])
    assert not later.delete_job
    assert later.requeue_after == pytest.approx(20)


def test_unschedulable_carries_the_schedulers_message() -> None:
    message = "0/5 nodes are available: 4 Insufficient nvidia.com/gpu."
    result = run(job(RUNNING), [pod(0, "Pending", unschedulable=message), pod(1)])
    assert cond(result, "Unschedulable")["status"] == "True"
    assert message in cond(result, "Unschedulable")["message"]
    assert cond(result, "Running")["reason"] == "Unschedulable"


def test_missing_references_stall_without_creating() -> None:
    missing = ["spec.checkpoint.claimName: PersistentVolumeClaim ml/data does not exist"]
    result = run(job(), [], missing_references=missing)
    assert result.create == []
    assert cond(result, "Stalled")["status"] == "True"
    assert "ml/data" in cond(result, "Stalled")["message"]


def test_invalid_spec_stalls_with_the_field() -> None:
    result = run(job(workers=0), [])
    assert result.create == []
    assert cond(result, "Stalled")["reason"] == "InvalidSpec"
    assert "spec.workers" in cond(result, "Stalled")["message"]


def test_changed_pod_template_restarts_without_counting() -> None:
    outdated = [pod(0, spec_hash="old"), pod(1, spec_hash="old")]
    result = run(job(RUNNING), outdated)
    assert result.status["restartAttempt"] == 1
    assert result.status["restarts"] == 0
    assert cond(result, "Restarting")["reason"] == "SpecChanged"


def test_condition_transition_time_only_moves_on_change() -> None:
    first = run(job(RUNNING), [pod(0), pod(1)])
    later = run(
        job({**RUNNING, "conditions": first.status["conditions"]}),
        [pod(0), pod(1)],
        now=NOW + timedelta(minutes=5),
    )
    assert cond(later, "Running")["lastTransitionTime"] == "2026-11-23T12:00:00Z"


def test_progress_and_checkpoint_come_from_termination_messages() -> None:
    record = {
        "step": 40,
        "loss": 2.5,
        "checkpoint": {"step": 30, "path": "/checkpoints/step-00000030", "time": "t"},
    }
    status = {**RUNNING, "checkpoint": {"step": 20, "path": "/checkpoints/step-00000020"}}
    result = run(job(status), [pod(0, "Failed", exit_code=1, progress=record), pod(1)])
    assert result.status["checkpoint"]["step"] == 30
    # updatedAt: when the step changed (the progress deadline counts from it).
    assert result.status["progress"] == {
        "step": 40,
        "loss": 2.5,
        "updatedAt": "2026-11-23T12:00:00Z",
    }


def test_pod_view_reads_the_trainer_container() -> None:
    raw = {
        "metadata": {
            "name": "llm-worker-1",
            "uid": "u",
            "labels": {contract.LABEL_WORKER_INDEX: "1", contract.LABEL_RESTART_ATTEMPT: "2"},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": contract.CONTAINER_NAME,
                    "state": {"terminated": {"exitCode": 137, "message": "OOM at step 9"}},
                }
            ],
        },
    }
    view = pod_view(raw)
    assert (view.index, view.attempt, view.exit_code) == (1, 2, 137)
    assert view.progress is None  # a log tail, not the trainer's JSON record


def terminated(message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "llm-worker-0", "labels": {contract.LABEL_WORKER_INDEX: "0"}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": contract.CONTAINER_NAME,
                    "state": {"terminated": {"exitCode": 1, "message": message}},
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("message", "progress"),
    [
        # A diverged loss: json.loads reads NaN/Infinity, the API server refuses them.
        ('{"step": 7, "loss": NaN, "samplesPerSecond": Infinity}', {"step": 7}),
        ('{"step": 7, "loss": -Infinity, "totalSteps": 10}', {"step": 7, "totalSteps": 10}),
        ('{"step": 7, "loss": 1e300}', {"step": 7}),  # beyond the schema's bound
        ('{"step": 7, "loss": "low", "totalSteps": -1}', {"step": 7}),
        ('{"step": true, "loss": 1.0}', None),  # bool is not a step
        ('{"step": 7.5}', None),
        ('{"step": 9007199254740993}', None),  # beyond 2**53
        ('{"step": 7, "checkpoint": {"step": 5}}', {"step": 7}),  # no path: dropped whole
        ('{"step": 7, "checkpoint": {"path": "/c"}}', {"step": 7}),
        ('{"step": 7, "checkpoint": {"step": NaN, "path": "/c"}}', {"step": 7}),
        ('{"step": 7, "checkpoint": "/c"}', {"step": 7}),
        (
            '{"step": 7, "checkpoint": {"step": 5, "path": "/c", "time": 3, "extra": 1}}',
            {"step": 7, "checkpoint": {"step": 5, "path": "/c"}},
        ),
        ('{"step": 7, "checkpoint": {"step": 5, "path": "' + "x" * 4097 + '"}}', None),
        ("[1, 2]", None),
        ("[" * 100_000, None),  # over the kubelet's 4 KiB: not the trainer's record
        ("[" * 4000, None),
        ('{"step": 7, "unknown": {"nested": 1}}', {"step": 7}),
    ],
)
def test_untrusted_termination_messages_are_sanitised(
    message: str, progress: dict[str, Any] | None
) -> None:
    assert pod_view(terminated(message)).progress == progress


def test_a_non_finite_loss_never_reaches_status() -> None:
    view = pod_view(terminated('{"step": 40, "loss": NaN, "checkpoint": {"step": 30}}'))
    status = {**RUNNING, "checkpoint": {"step": 20, "path": "/checkpoints/step-00000020"}}
    result = run(job(status), [view, pod(1)])
    assert result.status["progress"] == {"step": 40, "updatedAt": "2026-11-23T12:00:00Z"}
    assert result.status["checkpoint"] == status["checkpoint"]
    assert result.status["phase"] == "Restarting"  # the failure is acted on as usual


def test_a_refused_child_stalls_the_job_with_one_event() -> None:
    refused = [("AdmissionRejected", "the ResourceQuota admission plugin refused Pod ml/x: …")]
    result = run(job(), [], rejected=refused, children_present=frozenset())
    assert kinds(result) == ["Service", "Pod", "Pod"]  # tried again (the runner backs off)
    assert result.status["phase"] == "Pending"
    assert cond(result, "Stalled")["status"] == "True"
    assert cond(result, "Stalled")["reason"] == "AdmissionRejected"
    assert cond(result, "Running")["message"] == refused[0][1]
    assert cond(result, "Reconciling")["status"] == "False"
    assert result.events == [("Warning", "AdmissionRejected", refused[0][1])]

    again = run(job(result.status), [], rejected=refused)
    assert again.events == []  # announced once, not on every retry


def test_a_refusal_no_longer_matters_once_nothing_is_created() -> None:
    refused = [("ChildRejected", "the API server rejected Pod ml/x: …")]
    result = run(job(RUNNING), [pod(0), pod(1)], rejected=refused)
    assert cond(result, "Stalled")["status"] == "False"
    assert result.status["phase"] == "Running"


@pytest.mark.parametrize("phase", ["Running", "Pending"])
def test_a_worker_deleted_under_the_gang_restarts_it_uncounted(phase: str) -> None:
    evicted = pod(1, deleting=True)
    result = run(job({**RUNNING, "phase": phase}), [pod(0), evicted])
    assert result.status["phase"] == "Restarting"
    assert result.status["restartAttempt"] == 1
    assert result.status["restarts"] == 0
    assert cond(result, "Restarting")["reason"] == "WorkersDisrupted"
    assert "llm-worker-1 is being deleted" in cond(result, "Restarting")["message"]
    assert [p.name for p in result.delete_pods] == ["llm-worker-0"]
    assert result.create == []


def test_a_worker_gone_from_a_running_gang_restarts_it_uncounted() -> None:
    result = run(job(RUNNING), [pod(0)])
    assert result.status["phase"] == "Restarting"
    assert result.status["restarts"] == 0
    assert "llm-worker-1 is gone" in cond(result, "Restarting")["message"]


def test_a_missing_worker_of_a_pending_gang_is_just_created() -> None:
    result = run(job({**RUNNING, "phase": "Pending"}), [pod(0)])
    assert result.status["phase"] == "Pending"
    assert [m["metadata"]["name"] for m in result.create] == ["llm-worker-1"]


def test_a_succeeded_worker_being_deleted_is_no_disruption() -> None:
    result = run(job(RUNNING), [pod(0, "Succeeded", deleting=True), pod(1)])
    assert result.status["phase"] != "Restarting"


def waiting_pod(reason: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "llm-worker-1", "labels": {contract.LABEL_WORKER_INDEX: "1"}},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": contract.CONTAINER_NAME,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("reason", "fix"),
    [
        ("ImagePullBackOff", "imagePullSecrets"),
        ("ErrImagePull", "imagePullSecrets"),
        ("InvalidImageName", "fix the image name"),
        ("CreateContainerConfigError", "Secret or ConfigMap"),
        ("CreateContainerError", "entrypoint"),
        ("RunContainerError", "entrypoint"),
        ("CrashLoopBackOff", "kubectl logs --previous"),
    ],
)
def test_a_container_that_cannot_start_stalls_the_job_with_the_kubelets_words(
    reason: str, fix: str
) -> None:
    view = pod_view(waiting_pod(reason, "the kubelet's own words"))
    result = run(job(RUNNING), [pod(0), view])
    assert result.status["phase"] == "Pending"
    stalled = cond(result, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", reason)
    assert stalled["message"].startswith(
        f"pod llm-worker-1 cannot start container trainer: {reason}: the kubelet's own words; "
    )
    assert fix in stalled["message"]
    assert cond(result, "Running")["reason"] == reason
    assert result.events == [("Warning", reason, stalled["message"])]


def test_a_container_still_being_created_is_no_problem() -> None:
    view = pod_view(waiting_pod("ContainerCreating", ""))
    result = run(job(RUNNING), [pod(0), view])
    assert cond(result, "Stalled")["status"] == "False"
    assert cond(result, "Reconciling")["status"] == "True"


def test_a_deleted_headless_service_of_a_running_job_is_created_again() -> None:
    present = frozenset({"PersistentVolumeClaim"})
    result = run(job(RUNNING, checkpoint=TEMPLATE), [pod(0), pod(1)], children_present=present)
    assert kinds(result) == ["Service"]
    assert result.status["phase"] == "Running"


TEMPLATE = {"volumeClaimTemplate": {"size": "1Gi"}}


def test_a_deleted_claim_with_committed_checkpoints_is_never_replaced_by_an_empty_one() -> None:
    status = {**RUNNING, "checkpoint": {"step": 40, "path": "/checkpoints/step-00000040"}}
    result = run(
        job(status, checkpoint=TEMPLATE), [pod(0), pod(1)], children_present=frozenset({"Service"})
    )
    assert result.create == []
    stalled = cond(result, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "CheckpointVolumeLost")
    assert "llm-checkpoints" in stalled["message"] and "step 40" in stalled["message"]
    assert result.events == [("Warning", "CheckpointVolumeLost", stalled["message"])]


def test_a_claim_without_checkpoints_yet_is_simply_created_again() -> None:
    result = run(
        job(RUNNING, checkpoint=TEMPLATE), [pod(0), pod(1)], children_present=frozenset({"Service"})
    )
    assert kinds(result) == ["PersistentVolumeClaim"]
