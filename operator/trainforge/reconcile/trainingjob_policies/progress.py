"""Keep the newest step and committed checkpoint the workers reported, on exit (termination
messages) or live (pushed to the operator, progress/); never decides."""

from __future__ import annotations

from trainforge.progress.policy import merge_live
from trainforge.reconcile.common import rfc3339
from trainforge.reconcile.trainingjob_policies.context import PROGRESS_FIELDS, Context, Decision


def record_progress(ctx: Context) -> Decision | None:
    status = ctx.status
    for pod in ctx.obs.pods:
        record = pod.progress
        if not record:
            continue
        if record["step"] >= status.get("progress", {}).get("step", -1):
            status["progress"] = {
                k: record[k] for k in PROGRESS_FIELDS if record.get(k) is not None
            }
        checkpoint = record.get("checkpoint")
        if (
            isinstance(checkpoint, dict)
            and isinstance(checkpoint.get("step"), int)
            and checkpoint["step"] >= status.get("checkpoint", {}).get("step", -1)
        ):
            status["checkpoint"] = {
                k: checkpoint[k] for k in ("step", "path", "time") if k in checkpoint
            }
    merge_live(status, ctx.old, ctx.obs.live, rfc3339(ctx.now))
    return None
