"""The previous gang is still terminating; the new one waits for its pod names."""

from __future__ import annotations

from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import RESTARTING, Context, Decision


def previous_gang(ctx: Context) -> Decision | None:
    if not ctx.stale:
        return None
    message = f"{len(ctx.stale)} workers of the previous attempt are still terminating"
    return RESTARTING, [Cond(RESTARTING, True, "WaitingForPreviousWorkers", message)]
