"""The job's clock starts with its first unsuspended reconcile; spec.activeDeadlineSeconds
fails it when the clock runs out (and wakes the job up then)."""

from __future__ import annotations

from datetime import timedelta

from trainforge.reconcile.common import parse_time, rfc3339
from trainforge.reconcile.trainingjob_policies.context import Context, Decision


def deadline(ctx: Context) -> Decision | None:
    start = ctx.status.setdefault("startTime", rfc3339(ctx.now))
    seconds = ctx.spec.active_deadline_seconds
    if seconds is None:
        return None
    ends = parse_time(start) + timedelta(seconds=seconds)
    if ctx.now >= ends:
        return ctx.fail(
            "DeadlineExceeded", f"the job ran longer than spec.activeDeadlineSeconds={seconds}"
        )
    ctx.result.requeue_after = (ends - ctx.now).total_seconds()
    return None
