"""The gang is on its way: Pending, saying how many workers run and which cannot be
scheduled (always decides: the last policy)."""

from __future__ import annotations

from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import (
    PENDING,
    RUNNING,
    Context,
    Decision,
)


def pending(ctx: Context) -> Decision:
    running = sum(p.phase == "Running" for p in ctx.current)
    unschedulable = "; ".join(
        f"{p.name}: {p.unschedulable}" for p in ctx.current if p.unschedulable
    )
    if unschedulable:
        return PENDING, [
            Cond(RUNNING, False, "Unschedulable", unschedulable),
            Cond("Unschedulable", True, "Unschedulable", unschedulable),
        ]
    message = f"{running}/{ctx.spec.workers} workers running"
    return PENDING, [Cond(RUNNING, False, "WorkersPending", message)]
