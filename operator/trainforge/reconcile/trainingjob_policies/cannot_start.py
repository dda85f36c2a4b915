"""The kubelet waits for a change only a person can make (an image that cannot be pulled, a
missing ConfigMap, a crash loop): say so (Stalled), in its own words, not a silent Pending."""

from __future__ import annotations

from trainforge.reconcile.trainingjob_policies.context import PENDING, Context, Decision, stalled


def cannot_start(ctx: Context) -> Decision | None:
    stuck = [p.cannot_start for p in ctx.current if p.cannot_start]
    return (PENDING, stalled(stuck)) if stuck else None
