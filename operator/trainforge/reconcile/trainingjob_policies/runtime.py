"""The job's runtime does not exist, is invalid, or locks a field the job sets: Stalled, naming
the runtime and the fix, and nothing is created. The runner retries with backoff, so the job
starts by itself once the runtime is fixed."""

from __future__ import annotations

from trainforge.reconcile.runtime import RuntimeProblem
from trainforge.reconcile.trainingjob_policies.context import (
    PENDING,
    TERMINAL,
    Context,
    Decision,
    stalled,
)


def runtime_problem(ctx: Context) -> Decision | None:
    error = ctx.spec_error
    if not isinstance(error, RuntimeProblem):
        return None
    phase = ctx.phase if ctx.phase in TERMINAL else PENDING
    return phase, stalled([(error.reason, m) for m in error.messages])
