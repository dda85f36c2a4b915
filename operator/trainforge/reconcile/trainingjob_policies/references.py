"""A referenced object that does not exist (a NetworkAttachmentDefinition, a claim) would
leave the pods stuck in ContainerCreating: Stalled instead, naming the field and the fix."""

from __future__ import annotations

from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import (
    PENDING,
    RUNNING,
    Context,
    Decision,
)


def missing_references(ctx: Context) -> Decision | None:
    if not ctx.obs.missing_references:
        return None
    message = "; ".join(ctx.obs.missing_references)
    return PENDING, [
        Cond("Stalled", True, "MissingReference", message),
        Cond(RUNNING, False, "MissingReference", message),
    ]
