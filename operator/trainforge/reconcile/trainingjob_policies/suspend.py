"""spec.suspend: every worker goes; the deadline clock restarts on resume, as for Jobs."""

from __future__ import annotations

from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import SUSPENDED, Context, Decision


def suspend(ctx: Context) -> Decision | None:
    if not ctx.spec.suspend:
        return None
    ctx.result.delete_pods = [p for p in ctx.obs.pods if not p.deleting]
    ctx.status.pop("startTime", None)
    if ctx.phase != SUSPENDED:
        ctx.result.events.append(("Normal", "Suspended", "spec.suspend is true: workers deleted"))
    message = "spec.suspend is true; set it to false to resume"
    return SUSPENDED, [Cond(SUSPENDED, True, "SpecSuspended", message)]
