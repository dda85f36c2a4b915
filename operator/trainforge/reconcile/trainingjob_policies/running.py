"""Every worker runs: the job does."""

from __future__ import annotations

from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import RUNNING, Context, Decision


def running(ctx: Context) -> Decision | None:
    workers = ctx.spec.workers
    if sum(p.phase == "Running" for p in ctx.current) != workers:
        return None
    ctx.result.became_running = ctx.phase != RUNNING
    return RUNNING, [Cond(RUNNING, True, "AllWorkersRunning", f"all {workers} workers are running")]
