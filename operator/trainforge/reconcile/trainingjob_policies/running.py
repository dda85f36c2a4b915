"""Every worker runs: the job does, unless it hangs (no step for
spec.failurePolicy.progressDeadlineSeconds, progress/policy.py) or lacks the RDMA it requires
(reconcile/rdma.py)."""

from __future__ import annotations

from trainforge.progress.policy import hang_check
from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.rdma import rdma_readback
from trainforge.reconcile.trainingjob_policies.context import RUNNING, Context, Decision


def running(ctx: Context) -> Decision | None:
    workers = ctx.spec.workers
    running = [p for p in ctx.current if p.phase == "Running"]
    if len(running) != workers:
        return None
    hung, wait = hang_check(ctx.old, ctx.status, ctx.now, ctx.spec.failure_policy)
    if hung:
        return _no_progress(ctx, hung)
    if wait is not None:
        ctx.result.requeue_after = min(wait, ctx.result.requeue_after or wait)
    ctx.result.became_running = ctx.phase != RUNNING
    rdma = rdma_readback(
        ctx.spec,
        ctx.meta["namespace"],
        [(p.name, p.networks) for p in running],
        ctx.status.get("progress", {}).get("transport"),
    )
    if rdma.networks:
        ctx.status["networks"] = rdma.networks
    if rdma.failure:
        return ctx.fail("RDMARequired", rdma.failure)
    return RUNNING, [
        Cond(RUNNING, True, "AllWorkersRunning", f"all {workers} workers are running"),
        *rdma.conditions,
    ]


def _no_progress(ctx: Context, why: str) -> Decision:
    """A hung gang restarts like a failed one, counted against maxRestarts."""
    restarts, limit = ctx.status["restarts"], ctx.spec.failure_policy.max_restarts
    if restarts >= limit:
        message = f"{why}; failed after {restarts} restarts (spec.failurePolicy.maxRestarts)"
        return ctx.fail("NoProgress", message)
    message = f"{why}; restarting the whole gang ({restarts + 1}/{limit}) from the last checkpoint"
    return ctx.restart(counted=True, reason="NoProgress", message=message)
