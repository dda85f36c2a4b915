"""What a Kueue Workload's status says to the job that owns it, and the status writes the job
side of Kueue's contract makes (pure; pkg/controller/jobframework/reconciler.go does the same
for Kueue's built-in kinds):

- evicted (preempted, deactivated, ...) and the workers are gone: clear the quota
  reservation and the admission, with Requeued=True after a preemption, so Kueue queues the
  Workload again;
- the job finished: Finished=True, so Kueue releases the quota.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainforge.reconcile.conditions import Cond, merge_conditions

QUOTA_RESERVED, ADMITTED, EVICTED = "QuotaReserved", "Admitted", "Evicted"
FINISHED, REQUEUED = "Finished", "Requeued"
# Evictions after which Kueue's own integrations mark the Workload to be queued again.
REQUEUE_REASONS = frozenset({"Preempted", "NodeFailures"})


@dataclass(frozen=True)
class KueueView:
    """What the runner observed for a Kueue-managed job: its Workload (None: not there yet),
    the ResourceFlavors its admission names (spec by name) and its PriorityClass value."""

    workload: dict[str, Any] | None
    flavors: dict[str, dict[str, Any]] = field(default_factory=dict)
    priority: int | None = None


def _conditions(workload: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in workload.get("status", {}).get("conditions", [])}


def is_true(workload: Mapping[str, Any], type_: str) -> bool:
    return _conditions(workload).get(type_, {}).get("status") == "True"


def admitted(workload: Mapping[str, Any]) -> bool:
    return (
        is_true(workload, ADMITTED)
        and not is_true(workload, EVICTED)
        and bool(workload.get("status", {}).get("admission"))
    )


def evicted(workload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Evicted condition while it is True."""
    cond = _conditions(workload).get(EVICTED)
    return cond if cond and cond.get("status") == "True" else None


def waiting_message(workload: Mapping[str, Any]) -> str:
    """Why the Workload is not admitted, in Kueue's words (e.g. insufficient quota)."""
    cond = _conditions(workload).get(QUOTA_RESERVED)
    queue = workload.get("spec", {}).get("queueName", "")
    if cond and cond.get("status") == "False" and cond.get("message"):
        return f"waiting for Kueue admission in LocalQueue {queue}: {cond['message']}"
    return f"waiting for Kueue admission in LocalQueue {queue}"


def _set(workload: Mapping[str, Any], wanted: list[Cond], now: str) -> list[dict[str, Any]]:
    old = workload.get("status", {}).get("conditions", [])
    generation = int(workload.get("metadata", {}).get("generation", 1))
    types = {c.type for c in wanted}
    return [
        *(c for c in old if c["type"] not in types),
        *merge_conditions(old, wanted, generation, now),
    ]


def release_status(workload: Mapping[str, Any], now: str) -> dict[str, Any] | None:
    """The status patch that hands an evicted Workload's quota back once no worker runs
    (jobframework: SetRequeuedCondition + UnsetQuotaReservationWithCondition); None when
    there is nothing to clear."""
    cond = evicted(workload)
    status = workload.get("status", {})
    if cond is None or not (is_true(workload, QUOTA_RESERVED) or status.get("admission")):
        return None
    reason, message = cond.get("reason", ""), cond.get("message", "")
    conditions = _set(
        workload,
        [
            Cond(REQUEUED, reason in REQUEUE_REASONS, reason, message),
            Cond(QUOTA_RESERVED, False, "Pending", message),
            Cond(ADMITTED, False, "NoReservation", "The workload has no reservation"),
        ],
        now,
    )
    return {"conditions": conditions, "admission": None}


def finished_status(
    workload: Mapping[str, Any], succeeded: bool, message: str, now: str
) -> dict[str, Any] | None:
    """Finished=True (reason Succeeded or Failed), so Kueue releases the quota; None when the
    Workload says so already."""
    if is_true(workload, FINISHED):
        return None
    reason = "Succeeded" if succeeded else "Failed"
    return {"conditions": _set(workload, [Cond(FINISHED, True, reason, message)], now)}
