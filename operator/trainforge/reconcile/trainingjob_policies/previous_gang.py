"""The previous gang is still terminating; the new one waits for its pod names.

Pods already being deleted count too: a trainer checkpoints within its grace period after
SIGTERM, and a new pod created meanwhile would find its name taken (409) by the old one.
"""

from __future__ import annotations

from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import RESTARTING, Context, Decision


def previous_gang(ctx: Context) -> Decision | None:
    leaving = [p for p in ctx.obs.pods if p.attempt != ctx.attempt]
    if not leaving:
        return None
    message = f"{len(leaving)} workers of the previous attempt are still terminating"
    return RESTARTING, [Cond(RESTARTING, True, "WaitingForPreviousWorkers", message)]
