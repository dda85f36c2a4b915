"""Every worker of the gang succeeded: the job did."""

from __future__ import annotations

from trainforge.reconcile.common import rfc3339
from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import SUCCEEDED, Context, Decision


def success(ctx: Context) -> Decision | None:
    current, workers = ctx.current, ctx.spec.workers
    if not (
        current
        and all(p.phase == "Succeeded" for p in current)
        and {p.index for p in current} == set(range(workers))
    ):
        return None
    ctx.status["completionTime"] = rfc3339(ctx.now)
    ctx.result.events.append(("Normal", "Succeeded", f"all {workers} workers succeeded"))
    ctx.expire(ctx.spec.ttl_seconds_after_finished, ctx.status["completionTime"])
    return SUCCEEDED, [
        Cond(SUCCEEDED, True, "AllWorkersSucceeded", f"all {workers} workers succeeded")
    ]
