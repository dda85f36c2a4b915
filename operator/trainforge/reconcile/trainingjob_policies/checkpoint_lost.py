"""A deleted claim that held committed checkpoints is a condition, never an empty new claim:
that would silently restart training from step 0."""

from __future__ import annotations

from trainforge.reconcile.trainingjob_policies.context import PENDING, Context, Decision, stalled


def checkpoint_lost(ctx: Context) -> Decision | None:
    claim = ctx.children.checkpoint_pvc
    if not (
        claim
        and "PersistentVolumeClaim" not in ctx.obs.children_present
        and "checkpoint" in ctx.status
    ):
        return None
    message = (
        f"PersistentVolumeClaim {ctx.meta['namespace']}/{claim['metadata']['name']}, which "
        f"holds the job's committed checkpoints (newest: step {ctx.status['checkpoint']['step']}), "
        "was deleted; the operator does not replace it with an empty claim, which would "
        "restart training from step 0. Restore the claim under the same name (from a "
        "backup or snapshot), or delete the job and start a new one"
    )
    return PENDING, stalled([("CheckpointVolumeLost", message)])
