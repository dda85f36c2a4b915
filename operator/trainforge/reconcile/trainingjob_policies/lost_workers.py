"""Workers someone else took away restart the whole gang, uncounted: a worker replaced alone
could not rejoin its gang's rendezvous (torchrun/NCCL)."""

from __future__ import annotations

from trainforge.reconcile.trainingjob_policies.context import RUNNING, Context, Decision
from trainforge.render.trainingjob import worker_pod_name


def lost_workers(ctx: Context) -> Decision | None:
    """Deleted by hand, evicted (the Eviction API), or gone with their node. The operator
    deletes pods only after it moved the gang to a new attempt (or stopped the job), so a
    current pod being deleted is never its own doing. A pod missing altogether counts once
    the gang ran: before that, a missing index is one still to be created."""
    pods = ctx.obs.pods
    deleting = sorted(
        (p for p in pods if p.attempt == ctx.attempt and p.deleting and p.phase != "Succeeded"),
        key=lambda p: p.index,
    )
    lost = [f"{p.name} is being deleted (by hand, an eviction or node loss)" for p in deleting]
    if ctx.phase == RUNNING:
        present = {p.index for p in pods if p.attempt == ctx.attempt}
        lost += [
            f"{worker_pod_name(ctx.meta['name'], i)} is gone (deleted, or its node was lost)"
            for i in range(ctx.spec.workers)
            if i not in present
        ]
    if not lost:
        return None
    return ctx.restart(
        counted=False,
        reason="WorkersDisrupted",
        message=f"restarting the gang: {', '.join(lost)}; not counted against "
        "spec.failurePolicy.maxRestarts",
    )
