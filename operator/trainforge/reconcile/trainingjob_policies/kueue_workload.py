"""Gang policy Kueue: the job's Workload follows the job (jobframework's side of Kueue's
contract): created while the job can still run, deactivated by spec.suspend, its quota
handed back once an evicted gang is gone, replaced while queued when the job's spec changes
what Kueue admits it by, and Finished when the job is (reconcile/kueue.py). Never decides
the phase: kueue_admission.py gates the workers."""

from __future__ import annotations

from typing import Any

from trainforge.reconcile import kueue
from trainforge.reconcile.common import rfc3339
from trainforge.reconcile.trainingjob_policies.context import (
    SUCCEEDED,
    TERMINAL,
    Context,
    Decision,
)
from trainforge.render.kueue import kueue_managed, shape, workload
from trainforge.render.trainingjob import JobRef


def kueue_workload(ctx: Context) -> Decision | None:
    view = ctx.obs.kueue
    if view is None or not kueue_managed(ctx.spec):
        return None
    now = rfc3339(ctx.now)
    current = view.workload
    if current is None:
        if ctx.phase not in TERMINAL:
            ctx.result.workload_create = _desired(ctx, view.priority)
        return None
    if ctx.phase in TERMINAL:
        message = next(
            (c.get("message", "") for c in ctx.old.get("conditions", []) if c["type"] == ctx.phase),
            "",
        )
        ctx.result.workload_status = kueue.finished_status(
            current, ctx.phase == SUCCEEDED, message or ctx.phase, now
        )
        return None
    if current.get("spec", {}).get("active", True) == ctx.spec.suspend:
        ctx.result.workload_active = not ctx.spec.suspend
    if not ctx.obs.pods:  # every worker, terminating ones too, is gone
        ctx.result.workload_status = kueue.release_status(current, now)
        # A job edited while queued: the Workload goes and comes back with the new shape.
        reserved = kueue.is_true(current, kueue.QUOTA_RESERVED)
        priority = current.get("spec", {}).get("priority")
        if not reserved and shape(current) != shape(_desired(ctx, priority)):
            ctx.result.workload_delete = current["metadata"].get("uid", "")
    return None


def _desired(ctx: Context, priority: int | None) -> dict[str, Any]:
    return workload(JobRef.from_object(ctx.job), ctx.spec, ctx.children.pods[0], priority)
