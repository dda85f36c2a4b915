"""Keep the newest step and committed checkpoint any worker reported on exit (never decides)."""

from __future__ import annotations

from trainforge.reconcile.trainingjob_policies.context import Context, Decision


def record_progress(ctx: Context) -> Decision | None:
    status = ctx.status
    for pod in ctx.obs.pods:
        record = pod.progress
        if not record:
            continue
        if record["step"] >= status.get("progress", {}).get("step", -1):
            status["progress"] = {
                k: record[k]
                for k in ("step", "totalSteps", "loss", "samplesPerSecond")
                if record.get(k) is not None
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
    return None
