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
