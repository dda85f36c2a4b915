"""Create what is missing (other children first, then pods); while the API server refuses
one, the job is Stalled with its words (reconcile/children.py)."""

from __future__ import annotations

from trainforge.reconcile.trainingjob_policies.context import (
    PENDING,
    Context,
    Decision,
    stalled,
    worker_index,
)


def create(ctx: Context) -> Decision | None:
    present = {p.index for p in ctx.current}
    ctx.result.create = [
        *(c for c in ctx.children.others if c["kind"] not in ctx.obs.children_present),
        *(pod for pod in ctx.children.pods if worker_index(pod) not in present),
    ]
    if ctx.obs.rejected and ctx.result.create:
        return PENDING, stalled(ctx.obs.rejected)
    return None
