"""metav1.Condition lists, kept pure: the transition time moves only when the status does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    previous: list[dict[str, Any]], wanted: list[Cond], generation: int, now: str
) -> list[dict[str, Any]]:
    """The wanted conditions in metav1.Condition form, keeping each one's lastTransitionTime
    when its status did not change. Conditions not wanted any more are dropped."""
    before = {c["type"]: c for c in previous}
    merged = []
    for cond in wanted:
        status = "True" if cond.status else "False"
        old = before.get(cond.type)
        since = old["lastTransitionTime"] if old and old["status"] == status else now
        merged.append(
            {
                "type": cond.type,
                "status": status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return merged


def stalled_event(
    before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> tuple[str, str, str] | None:
    """A Warning Event (type, reason, message) when Stalled turns True or says something new,
    so `kubectl describe` and `kubectl get events` show what blocks the object."""
    old = next((c for c in before if c["type"] == "Stalled"), {})
    new = next((c for c in after if c["type"] == "Stalled"), {})
    if new.get("status") != "True":
        return None
    if old.get("status") == "True" and old.get("message") == new.get("message"):
        return None
    return "Warning", new["reason"], new["message"]
