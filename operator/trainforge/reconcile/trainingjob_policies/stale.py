"""Pods of an older attempt go (never decides)."""

from __future__ import annotations

from trainforge.reconcile.trainingjob_policies.context import Context, Decision


def delete_stale(ctx: Context) -> Decision | None:
    ctx.result.delete_pods = ctx.stale
    return None
