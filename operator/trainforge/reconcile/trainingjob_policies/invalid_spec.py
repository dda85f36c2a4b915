"""A spec the API server let through but the operator cannot use: Stalled, nothing created."""

from __future__ import annotations

from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import (
    PENDING,
    TERMINAL,
    Context,
    Decision,
)


def invalid_spec(ctx: Context) -> Decision | None:
    if ctx.spec_error is None:
        return None
    message = "; ".join(ctx.spec_error.messages)
    phase = ctx.phase if ctx.phase in TERMINAL else PENDING
    return phase, [Cond("Stalled", True, "InvalidSpec", message)]
