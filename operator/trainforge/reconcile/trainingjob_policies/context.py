"""What every TrainingJob policy reads and writes: the observed job, its parsed spec, the plan
being built, and the steps several policies share (finish, restart, fail, expire).

A policy is a pure function `(Context) -> Decision | None`: it may add to the plan (children
to create, pods to delete, events, a requeue) and either decides the job's phase and
conditions (a Decision: the plan ends there) or passes (None: the next policy runs).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import trainforge_contract as contract
from trainforge.api import TrainingJobSpec
from trainforge.reconcile.common import parse_time, rfc3339
from trainforge.reconcile.conditions import Cond, merge_conditions, stalled_event
from trainforge.reconcile.runtime import parse_effective_spec
from trainforge.render.common import RenderSettings
from trainforge.render.trainingjob import DesiredChildren, JobRef, desired_children

if TYPE_CHECKING:  # trainingjob.py runs the policies; these are only its types
    from trainforge.reconcile.trainingjob import Observed, Plan, PodView

RUNNING, PENDING, RESTARTING = "Running", "Pending", "Restarting"
SUSPENDED, SUCCEEDED, FAILED = "Suspended", "Succeeded", "Failed"
TERMINAL = (SUCCEEDED, FAILED)
CONDITION_TYPES = (RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED)
# What status.progress keeps of a worker's report (termination message or live push).
PROGRESS_FIELDS = ("step", "totalSteps", "loss", "samplesPerSecond", "etaSeconds", "transport")

Decision = tuple[str, list[Cond]]  # (phase, the job's own conditions)


class Context:
    def __init__(self, obs: Observed, settings: RenderSettings, result: Plan) -> None:
        self.obs, self.settings, self.result = obs, settings, result
        self.job, self.now = obs.job, obs.now
        self.meta: dict[str, Any] = self.job["metadata"]
        self.old: dict[str, Any] = self.job.get("status") or {}
        self.generation = int(self.meta.get("generation", 1))
        self.attempt = int(self.old.get("restartAttempt", 0))
        self.phase: str = self.old.get("phase", PENDING)
        self.status = result.status
        self.status.update(
            {
                "observedGeneration": self.generation,
                "restartAttempt": self.attempt,
                "restarts": int(self.old.get("restarts", 0)),
                **{
                    k: self.old[k]
                    for k in ("startTime", "completionTime", "checkpoint", "progress")
                    if k in self.old
                },
            }
        )
        self.current = [p for p in obs.pods if p.attempt == self.attempt and not p.deleting]
        self.stale = [p for p in obs.pods if p.attempt != self.attempt and not p.deleting]
        # Parsed once per reconcile (over the runtime's template, when the job has one); the
        # first policies report an invalid spec or runtime.
        parsed = obs.spec or parse_effective_spec(self.job.get("spec", {}), obs.runtime)
        self.spec_error = None if isinstance(parsed, TrainingJobSpec) else parsed
        self._spec = parsed if isinstance(parsed, TrainingJobSpec) else None
        if obs.runtime is not None and (self._spec is not None or obs.runtime.from_snapshot):
            # What `kubectl get tj -o yaml` shows: the runtime as the job started with it (kept
            # while a job edit is refused, so fixing the job cannot pick up a newer runtime),
            # and the spec that results. A runtime read that failed is not kept: the next
            # reconcile reads it again.
            self.status["runtime"] = obs.runtime.snapshot()
            if self._spec is not None:
                self.status["effectiveSpec"] = self._spec.to_json()
            elif "effectiveSpec" in self.old:
                self.status["effectiveSpec"] = self.old["effectiveSpec"]

    @property
    def spec(self) -> TrainingJobSpec:
        assert self._spec is not None, "the invalid-spec policy runs first"
        return self._spec

    @cached_property
    def children(self) -> DesiredChildren:
        """Every child the job should have at this attempt, rendered once."""
        return desired_children(
            JobRef.from_object(self.job), self.spec, self.attempt, self.settings
        )

    def finish(self, phase: str, conditions: list[Cond]) -> Plan:
        old_conditions = self.old.get("conditions", [])
        self.status["phase"] = phase
        # Pods this plan creates count as Pending, as the next pass sees them (the runner's
        # expectations): a new gang's status is written once, not again with the same pods.
        creating = sum(m["kind"] == "Pod" for m in self.result.create)
        self.status["workers"] = _worker_counts(self.current, self.job, creating)
        self.status["conditions"] = merge_conditions(
            old_conditions, _kstatus(phase, conditions), self.generation, rfc3339(self.now)
        )
        stalled = stalled_event(old_conditions, self.status["conditions"])
        if stalled and phase != FAILED:  # a failure has its own "Failed" event
            self.result.events.append(stalled)
        return self.result

    def restart(self, counted: bool, reason: str, message: str) -> Decision:
        """Move the gang to a new attempt: every pod goes, the new gang starts after."""
        self.status["restartAttempt"] += 1
        if counted:
            self.status["restarts"] += 1
            self.result.counted_restart = True
        self.result.delete_pods = [p for p in self.obs.pods if not p.deleting]
        self.result.events.append(("Warning" if counted else "Normal", "GangRestarted", message))
        self.result.requeue_after = 0.5
        return RESTARTING, [Cond(RESTARTING, True, reason, message)]

    def fail(self, reason: str, message: str) -> Decision:
        self.status["completionTime"] = rfc3339(self.now)
        self.result.delete_pods = [p for p in self.obs.pods if p.active]
        self.result.events.append(("Warning", "Failed", message))
        spec_ttl = self.job.get("spec", {}).get("ttlSecondsAfterFinished")
        self.expire(spec_ttl, self.status["completionTime"])
        return FAILED, [Cond(FAILED, True, reason, message)]

    def expire(self, ttl: int | None, completion: str | None) -> None:
        """Delete the finished job `ttl` seconds after `completion` (ttlSecondsAfterFinished)."""
        if ttl is None or completion is None:
            return
        expires = parse_time(completion) + timedelta(seconds=ttl)
        if self.now >= expires:
            self.result.delete_job = True
        else:
            self.result.requeue_after = (expires - self.now).total_seconds()


Policy = Callable[[Context], Decision | None]


def stalled(problems: list[tuple[str, str]]) -> list[Cond]:
    """Stalled (and not Running) for (reason, message) problems; the first one's reason."""
    reason, message = problems[0][0], "; ".join(m for _, m in problems)
    return [Cond("Stalled", True, reason, message), Cond(RUNNING, False, reason, message)]


def worker_index(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["labels"][contract.LABEL_WORKER_INDEX])


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


def _worker_counts(current: list[PodView], job: dict[str, Any], creating: int) -> dict[str, int]:
    count = {
        phase: sum(p.phase == phase for p in current)
        for phase in ("Pending", "Running", "Succeeded", "Failed")
    }
    return {
        "total": int(job.get("spec", {}).get("workers", 0)),
        "pending": count["Pending"] + creating,
        "running": count["Running"],
        "ready": count["Running"],
        "succeeded": count["Succeeded"],
        "failed": count["Failed"],
    }
