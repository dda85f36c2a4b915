"""Pods are immutable: a spec change that alters them restarts the gang (not counted)."""

from __future__ import annotations

import trainforge_contract as contract
from trainforge.reconcile.trainingjob_policies.context import Context, Decision, worker_index


def spec_change(ctx: Context) -> Decision | None:
    wanted = {
        worker_index(pod): pod["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH]
        for pod in ctx.children.pods
    }
    if not any(
        p.active and p.spec_hash and p.spec_hash != wanted.get(p.index) for p in ctx.current
    ):
        return None
    return ctx.restart(
        counted=False,
        reason="SpecChanged",
        message="the pod template changed; recreating all workers",
    )
