"""TrainingJob reconcile: observed state -> plan (pure) -> actions + the next status.

Everything here is pure (no I/O, the clock comes in `Observed.now`), so every lifecycle rule
is table-tested in tests/unit. `reconcile/runner.py` observes, applies and writes status.

The gang's identity is `status.restartAttempt`: pods carry it in a label, and only pods of the
current attempt count. A restart first moves the attempt forward in status (written before any
pod is deleted), so a crash between the two never counts one failure twice, and pods of an
older attempt are simply deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from trainforge import contract
from trainforge.api import InvalidSpec, TrainingJobSpec, parse_training_job_spec
from trainforge.api.common import ApiModel
from trainforge.api.trainingjob import CheckpointStatus, Progress
from trainforge.reconcile import common
from trainforge.reconcile.common import parse_time, rfc3339
from trainforge.reconcile.conditions import (
    Cond,
    merge_conditions,
    stalled_event,
)
from trainforge.reconcile.pods import cannot_start
from trainforge.render.trainingjob import (
    JobRef,
    RenderSettings,
    desired_children,
    worker_pod_name,
)

RUNNING, PENDING, RESTARTING = "Running", "Pending", "Restarting"
SUSPENDED, SUCCEEDED, FAILED = "Suspended", "Succeeded", "Failed"
TERMINAL = (SUCCEEDED, FAILED)
OTHER_CHILD_KINDS = frozenset({"Service", "PersistentVolumeClaim", "PodGroup"})
CONDITION_TYPES = (RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED)


@dataclass(frozen=True)
class PodView:
    """What the plan needs to know of one worker pod (what the operator's index keeps)."""

    name: str
    uid: str
    index: int
    attempt: int
    phase: str
    deleting: bool = False
    exit_code: int | None = None
    disrupted: bool = False
    unschedulable: str = ""
    spec_hash: str = ""
    progress: dict[str, Any] | None = None
    # (kubelet reason, message) when a container cannot start (reconcile/pods.py).
    cannot_start: tuple[str, str] | None = None

    @property
    def active(self) -> bool:
        return self.phase in ("Pending", "Running", "Unknown") and not self.deleting


def pod_view(pod: dict[str, Any]) -> PodView:
    meta, status = pod["metadata"], pod.get("status", {})
    labels = meta.get("labels", {})
    terminated = next(
        (
            s["state"]["terminated"]
            for s in status.get("containerStatuses", [])
            if s.get("name") == contract.CONTAINER_NAME and "terminated" in s.get("state", {})
        ),
        None,
    )
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    scheduled = conditions.get("PodScheduled", {})
    disruption = conditions.get("DisruptionTarget", {})
    return PodView(
        name=meta["name"],
        uid=meta.get("uid", ""),
        index=int(labels.get(contract.LABEL_WORKER_INDEX, "0")),
        attempt=int(labels.get(contract.LABEL_RESTART_ATTEMPT, "0")),
        phase=status.get("phase", "Pending"),
        deleting=bool(meta.get("deletionTimestamp")),
        exit_code=terminated.get("exitCode") if terminated else None,
        # Evicted/preempted pods carry DisruptionTarget (k8s >= 1.26); reason=Evicted covers
        # kubelet evictions that predate it.
        disrupted=disruption.get("status") == "True" or status.get("reason") == "Evicted",
        unschedulable=scheduled.get("message", "")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else "",
        spec_hash=meta.get("annotations", {}).get(contract.ANNOTATION_SPEC_HASH, ""),
        progress=_progress(terminated.get("message") if terminated else None),
        cannot_start=cannot_start(pod),
    )


# The kubelet keeps at most 4 KiB of a termination message; anything longer is not the trainer's.
MAX_TERMINATION_MESSAGE = 4096
PROGRESS_FIELDS = ("step", "totalSteps", "loss", "samplesPerSecond")


def _progress(message: str | None) -> dict[str, Any] | None:
    """The trainer's progress record from a termination message (contract.py), sanitised.

    The message is written by the worker, so it is untrusted: every field is checked against
    the status schema on its own, and one that does not fit (NaN or Infinity from a diverged
    loss, a wrong type, out of range) is dropped, never copied into status where the API
    server would refuse every later status write. A checkpoint record without a valid step
    and path is dropped whole. The record needs a valid `step` to count at all.
    """
    if not message or len(message) > MAX_TERMINATION_MESSAGE:
        return None
    try:
        record = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    progress = {
        key: record[key]
        for key in PROGRESS_FIELDS
        if key in record and _fits(Progress, {key: record[key]})
    }
    if "step" not in progress:
        return None
    checkpoint = record.get("checkpoint")
    if isinstance(checkpoint, dict):
        fields = {k: checkpoint[k] for k in ("step", "path", "time") if k in checkpoint}
        if not _fits(CheckpointStatus, {"step": fields.get("step"), "path": fields.get("path")}):
            fields = {}
        elif "time" in fields and not _fits(CheckpointStatus, fields):
            del fields["time"]
        if fields:
            progress["checkpoint"] = fields
    return progress


def _fits(model: type[ApiModel], fields: dict[str, Any]) -> bool:
    try:
        model.model_validate(fields)
    except ValidationError:
        return False
    return True


@dataclass(frozen=True)
class Observed:
    job: dict[str, Any]
    pods: list[PodView]
    now: datetime
    # "spec.field: what is missing and how to fix it", for referenced objects that do not exist.
    missing_references: list[str] = field(default_factory=list)
    # Kinds of the non-pod children (OTHER_CHILD_KINDS) that exist, controlled by this job
    # and not being deleted, or were just created; a missing one is created again, except a
    # checkpoint claim that held committed checkpoints.
    children_present: frozenset[str] = frozenset()
    # (reason, message) of the last attempt to create children, when it was stopped: the API
    # server refused one (validation, an admission plugin) or its name is taken by an object
    # this job does not control (reconcile/children.py).
    rejected: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Plan(common.Plan):
    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[PodView] = field(default_factory=list)
    delete_job: bool = False
    counted_restart: bool = False
    became_running: bool = False


def parse_spec(job: dict[str, Any]) -> TrainingJobSpec:
    return parse_training_job_spec(job.get("spec", {}))


def plan(obs: Observed, settings: RenderSettings) -> Plan:
    job, now = obs.job, obs.now
    meta = job["metadata"]
    old = job.get("status") or {}
    generation = int(meta.get("generation", 1))
    attempt = int(old.get("restartAttempt", 0))
    restarts = int(old.get("restarts", 0))
    phase = old.get("phase", PENDING)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "restartAttempt": attempt,
        "restarts": restarts,
        **{
            k: old[k] for k in ("startTime", "completionTime", "checkpoint", "progress") if k in old
        },
    }
    result = Plan(status=status)
    current = [p for p in obs.pods if p.attempt == attempt and not p.deleting]
    stale = [p for p in obs.pods if p.attempt != attempt and not p.deleting]
    _record_progress(status, obs.pods)

    def finish(new_phase: str, conditions: list[Cond]) -> Plan:
        status["phase"] = new_phase
        status["workers"] = _worker_counts(current, job)
        status["conditions"] = merge_conditions(
            old.get("conditions", []), _kstatus(new_phase, conditions), generation, rfc3339(now)
        )
        stalled = stalled_event(old.get("conditions", []), status["conditions"])
        if stalled and new_phase != FAILED:  # a failure has its own "Failed" event
            result.events.append(stalled)
        return result

    try:
        spec = parse_spec(job)
    except InvalidSpec as e:
        message = "; ".join(e.messages)
        return finish(
            phase if phase in TERMINAL else PENDING, [Cond("Stalled", True, "InvalidSpec", message)]
        )

    if phase in TERMINAL:
        # Sticky: a finished job never starts pods again; it only stops leftovers and expires.
        result.delete_pods = [p for p in obs.pods if p.active]
        _expire(result, spec.ttl_seconds_after_finished, old.get("completionTime"), now)
        reason = old_reason(old, phase)
        return finish(phase, [Cond(phase, True, reason[0], reason[1])])

    result.delete_pods = stale
    if spec.suspend:
        result.delete_pods = [p for p in obs.pods if not p.deleting]
        status.pop("startTime", None)  # the deadline clock restarts on resume, as for Jobs
        if phase != SUSPENDED:
            result.events.append(("Normal", "Suspended", "spec.suspend is true: workers deleted"))
        return finish(
            SUSPENDED,
            [
                Cond(
                    SUSPENDED,
                    True,
                    "SpecSuspended",
                    "spec.suspend is true; set it to false to resume",
                )
            ],
        )

    status.setdefault("startTime", rfc3339(now))
    deadline = spec.active_deadline_seconds
    if deadline is not None:
        ends = parse_time(status["startTime"]) + timedelta(seconds=deadline)
        if now >= ends:
            return _fail(
                result,
                obs,
                "DeadlineExceeded",
                f"the job ran longer than spec.activeDeadlineSeconds={deadline}",
                finish,
            )
        result.requeue_after = (ends - now).total_seconds()

    failed = sorted((p for p in current if p.phase == "Failed"), key=lambda p: p.index)
    if failed:
        return _on_failure(result, obs, spec, failed, finish)

    lost = _lost_workers(meta["name"], obs.pods, attempt, phase, spec.workers)
    if lost:
        # A worker replaced alone could not rejoin its gang's rendezvous (torchrun/NCCL).
        return _restart(
            result,
            obs,
            counted=False,
            reason="WorkersDisrupted",
            message=f"restarting the gang: {', '.join(lost)}; not counted against "
            "spec.failurePolicy.maxRestarts",
            finish=finish,
        )

    if (
        current
        and all(p.phase == "Succeeded" for p in current)
        and {p.index for p in current} == set(range(spec.workers))
    ):
        status["completionTime"] = rfc3339(now)
        result.events.append(("Normal", "Succeeded", f"all {spec.workers} workers succeeded"))
        _expire(result, spec.ttl_seconds_after_finished, status["completionTime"], now)
        return finish(
            SUCCEEDED,
            [Cond(SUCCEEDED, True, "AllWorkersSucceeded", f"all {spec.workers} workers succeeded")],
        )

    job_ref = JobRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
    children = desired_children(job_ref, spec, attempt, settings)
    wanted_hash = {
        _index(pod): pod["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH]
        for pod in children.pods
    }
    outdated = [
        p for p in current if p.active and p.spec_hash and p.spec_hash != wanted_hash.get(p.index)
    ]
    if outdated:
        # Pods are immutable: a spec change that alters them restarts the gang (not counted).
        return _restart(
            result,
            obs,
            counted=False,
            reason="SpecChanged",
            message="the pod template changed; recreating all workers",
            finish=finish,
        )

    claim = children.checkpoint_pvc
    if claim and "PersistentVolumeClaim" not in obs.children_present and "checkpoint" in status:
        # A new, empty claim would silently restart training from step 0.
        message = (
            f"PersistentVolumeClaim {meta['namespace']}/{claim['metadata']['name']}, which holds "
            f"the job's committed checkpoints (newest: step {status['checkpoint']['step']}), "
            "was deleted; the operator does not replace it with an empty claim, which would "
            "restart training from step 0. Restore the claim under the same name (from a "
            "backup or snapshot), or delete the job and start a new one"
        )
        return finish(PENDING, _stalled([("CheckpointVolumeLost", message)]))

    if obs.missing_references:
        message = "; ".join(obs.missing_references)
        return finish(
            PENDING,
            [
                Cond("Stalled", True, "MissingReference", message),
                Cond(RUNNING, False, "MissingReference", message),
            ],
        )

    if stale:
        # The previous gang is still terminating; the new one waits for its pod names.
        return finish(
            RESTARTING,
            [
                Cond(
                    RESTARTING,
                    True,
                    "WaitingForPreviousWorkers",
                    f"{len(stale)} workers of the previous attempt are still terminating",
                )
            ],
        )

    present = {p.index for p in current}
    result.create = [
        *(child for child in children.others if child["kind"] not in obs.children_present),
        *(pod for pod in children.pods if _index(pod) not in present),
    ]

    if obs.rejected and result.create:
        return finish(PENDING, _stalled(obs.rejected))

    running = [p for p in current if p.phase == "Running"]
    if len(running) == spec.workers:
        result.became_running = phase != RUNNING
        return finish(
            RUNNING,
            [Cond(RUNNING, True, "AllWorkersRunning", f"all {spec.workers} workers are running")],
        )
    stuck = [p.cannot_start for p in current if p.cannot_start]
    if stuck:
        # The kubelet waits for a change only a person can make: say so (Stalled), with its
        # own words, instead of a silent Pending.
        return finish(PENDING, _stalled(stuck))
    unschedulable = [f"{p.name}: {p.unschedulable}" for p in current if p.unschedulable]
    conditions = [
        Cond(RUNNING, False, "WorkersPending", f"{len(running)}/{spec.workers} workers running")
    ]
    if unschedulable:
        conditions = [
            Cond(RUNNING, False, "Unschedulable", "; ".join(unschedulable)),
            Cond("Unschedulable", True, "Unschedulable", "; ".join(unschedulable)),
        ]
    return finish(PENDING, conditions)


def _stalled(problems: list[tuple[str, str]]) -> list[Cond]:
    """Stalled (and not Running) for (reason, message) problems; the first one's reason."""
    reason, message = problems[0][0], "; ".join(m for _, m in problems)
    return [Cond("Stalled", True, reason, message), Cond(RUNNING, False, reason, message)]


def old_reason(old: dict[str, Any], phase: str) -> tuple[str, str]:
    for cond in old.get("conditions", []):
        if cond["type"] == phase:
            return cond["reason"], cond.get("message", "")
    return phase, ""


def _on_failure(
    result: Plan, obs: Observed, spec: TrainingJobSpec, failed: list[PodView], finish: Any
) -> Plan:
    fatal_codes = set(spec.failure_policy.fail_on_exit_codes) | {contract.EXIT_CONFIG_ERROR}
    for pod in failed:
        if pod.exit_code in fatal_codes:
            return _fail(
                result,
                obs,
                "FailOnExitCode",
                f"worker {pod.name} exited with code {pod.exit_code}, which is in "
                "spec.failurePolicy.failOnExitCodes (or is the trainer's "
                "configuration-error code)",
                finish,
            )
    describe = ", ".join(
        f"{p.name} (exit code {p.exit_code})"
        if p.exit_code is not None
        else f"{p.name} ({'disrupted' if p.disrupted else 'failed'})"
        for p in failed
    )
    if all(p.disrupted or p.exit_code == contract.EXIT_PREEMPTED for p in failed):
        return _restart(
            result,
            obs,
            counted=False,
            reason="WorkersDisrupted",
            message=f"restarting the gang after a disruption of {describe}; "
            "not counted against spec.failurePolicy.maxRestarts",
            finish=finish,
        )
    restarts = result.status["restarts"]
    limit = spec.failure_policy.max_restarts
    if restarts >= limit:
        return _fail(
            result,
            obs,
            "MaxRestartsExceeded",
            f"{describe} failed after {restarts} restarts (spec.failurePolicy.maxRestarts={limit})",
            finish,
        )
    return _restart(
        result,
        obs,
        counted=True,
        reason="WorkerFailed",
        message=f"{describe} failed; restarting the whole gang "
        f"({restarts + 1}/{limit}) from the last checkpoint",
        finish=finish,
    )


def _lost_workers(
    job_name: str, pods: list[PodView], attempt: int, phase: str, workers: int
) -> list[str]:
    """Workers of the current gang that someone else took away: deleted by hand, evicted
    (the Eviction API), or gone with their node. The operator deletes pods only after it moved
    the gang to a new attempt (or stopped the job), so a current pod being deleted is never
    its own doing. A pod missing altogether counts once the gang ran: before that, a missing
    index is one still to be created."""
    deleting = sorted(
        (p for p in pods if p.attempt == attempt and p.deleting and p.phase != "Succeeded"),
        key=lambda p: p.index,
    )
    lost = [f"{p.name} is being deleted (by hand, an eviction or node loss)" for p in deleting]
    if phase == RUNNING:
        present = {p.index for p in pods if p.attempt == attempt}
        lost += [
            f"{worker_pod_name(job_name, i)} is gone (deleted, or its node was lost)"
            for i in range(workers)
            if i not in present
        ]
    return lost


def _restart(
    result: Plan, obs: Observed, counted: bool, reason: str, message: str, finish: Any
) -> Plan:
    status = result.status
    status["restartAttempt"] += 1
    if counted:
        status["restarts"] += 1
        result.counted_restart = True
    result.delete_pods = [p for p in obs.pods if not p.deleting]
    result.events.append(("Warning" if counted else "Normal", "GangRestarted", message))
    result.requeue_after = 0.5
    return finish(RESTARTING, [Cond(RESTARTING, True, reason, message)])


def _fail(result: Plan, obs: Observed, reason: str, message: str, finish: Any) -> Plan:
    result.status["completionTime"] = rfc3339(obs.now)
    result.delete_pods = [p for p in obs.pods if p.active]
    result.events.append(("Warning", "Failed", message))
    spec_ttl = obs.job.get("spec", {}).get("ttlSecondsAfterFinished")
    _expire(result, spec_ttl, result.status["completionTime"], obs.now)
    return finish(FAILED, [Cond(FAILED, True, reason, message)])


def _expire(result: Plan, ttl: int | None, completion: str | None, now: datetime) -> None:
    if ttl is None or completion is None:
        return
    expires = parse_time(completion) + timedelta(seconds=ttl)
    if now >= expires:
        result.delete_job = True
    else:
        result.requeue_after = (expires - now).total_seconds()


def _kstatus(phase: str, conditions: list[Cond]) -> list[Cond]:
    """The job's own conditions plus kstatus' Ready/Reconciling/Stalled, one of each type."""
    given = {c.type: c for c in conditions}
    own = [given.get(t) or Cond(t, False, phase if phase != t else t) for t in CONDITION_TYPES]
    stalled = given.get("Stalled") or Cond(
        "Stalled",
        phase == FAILED,
        FAILED if phase == FAILED else "NotStalled",
        given[FAILED].message if FAILED in given else "",
    )
    # Suspended is a state the user asked for and reached: kstatus (which falls back to Ready
    # when neither Reconciling nor Stalled is True) must read it as Current, as docs/gitops.md
    # promises; a Flux `wait: true` would time out on an InProgress one.
    ready = phase in (RUNNING, SUCCEEDED, SUSPENDED)
    reconciling = phase in (PENDING, RESTARTING) and not stalled.status
    extra = [c for t, c in given.items() if t not in CONDITION_TYPES and t != "Stalled"]
    return [
        *own,
        *extra,
        Cond("Ready", ready, phase, _message(given, phase)),
        Cond("Reconciling", reconciling, phase, _message(given, phase) if reconciling else ""),
        stalled,
    ]


def _message(given: dict[str, Cond], phase: str) -> str:
    cond = given.get(phase) or given.get(RUNNING)
    return cond.message if cond else ""


def _worker_counts(current: list[PodView], job: dict[str, Any]) -> dict[str, int]:
    count = {
        phase: sum(p.phase == phase for p in current)
        for phase in ("Pending", "Running", "Succeeded", "Failed")
    }
    return {
        "total": int(job.get("spec", {}).get("workers", 0)),
        "pending": count["Pending"],
        "running": count["Running"],
        "ready": count["Running"],
        "succeeded": count["Succeeded"],
        "failed": count["Failed"],
    }


def _record_progress(status: dict[str, Any], pods: list[PodView]) -> None:
    """Keep the newest step and committed checkpoint any worker reported on exit."""
    for pod in pods:
        record = pod.progress
        if not record:
            continue
        if record["step"] >= status.get("progress", {}).get("step", -1):
            status["progress"] = {
                k: record[k]
                for k in ("step", "totalSteps", "loss", "samplesPerSecond")
                if record.get(k) is not None
            }
        checkpoint = record.get("checkpoint")
        if (
            isinstance(checkpoint, dict)
            and isinstance(checkpoint.get("step"), int)
            and checkpoint["step"] >= status.get("checkpoint", {}).get("step", -1)
        ):
            status["checkpoint"] = {
                k: checkpoint[k] for k in ("step", "path", "time") if k in checkpoint
            }


def _index(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["labels"][contract.LABEL_WORKER_INDEX])
