"""Sticky: a finished job never starts pods again; it only stops leftovers and expires."""

from __future__ import annotations

from typing import Any

from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import TERMINAL, Context, Decision


def finished(ctx: Context) -> Decision | None:
    if ctx.phase not in TERMINAL:
        return None
    ctx.result.delete_pods = [p for p in ctx.obs.pods if p.active]
    ctx.expire(ctx.spec.ttl_seconds_after_finished, ctx.old.get("completionTime"))
    reason, message = old_reason(ctx.old, ctx.phase)
    return ctx.phase, [Cond(ctx.phase, True, reason, message)]


def old_reason(old: dict[str, Any], phase: str) -> tuple[str, str]:
    for cond in old.get("conditions", []):
        if cond["type"] == phase:
            return cond["reason"], cond.get("message", "")
    return phase, ""
