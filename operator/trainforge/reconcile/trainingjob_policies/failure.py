"""Failed workers: a fatal exit code fails the job; a disruption restarts the gang uncounted;
otherwise the gang restarts, counted against spec.failurePolicy.maxRestarts."""

from __future__ import annotations

import trainforge_contract as contract
from trainforge.reconcile.trainingjob_policies.context import Context, Decision


def failure(ctx: Context) -> Decision | None:
    failed = sorted((p for p in ctx.current if p.phase == "Failed"), key=lambda p: p.index)
    if not failed:
        return None
    policy = ctx.spec.failure_policy
    fatal_codes = set(policy.fail_on_exit_codes) | {contract.EXIT_CONFIG_ERROR}
    for pod in failed:
        if pod.exit_code in fatal_codes:
            return ctx.fail(
                "FailOnExitCode",
                f"worker {pod.name} exited with code {pod.exit_code}, which is in "
                "spec.failurePolicy.failOnExitCodes (or is the trainer's "
                "configuration-error code)",
            )
    describe = ", ".join(
        f"{p.name} (exit code {p.exit_code})"
        if p.exit_code is not None
        else f"{p.name} ({'disrupted' if p.disrupted else 'failed'})"
        for p in failed
    )
    if all(p.disrupted or p.exit_code == contract.EXIT_PREEMPTED for p in failed):
        return ctx.restart(
            counted=False,
            reason="WorkersDisrupted",
            message=f"restarting the gang after a disruption of {describe}; "
            "not counted against spec.failurePolicy.maxRestarts",
        )
    restarts = ctx.status["restarts"]
    limit = policy.max_restarts
    if restarts >= limit:
        return ctx.fail(
            "MaxRestartsExceeded",
            f"{describe} failed after {restarts} restarts (spec.failurePolicy.maxRestarts={limit})",
        )
    return ctx.restart(
        counted=True,
        reason="WorkerFailed",
        message=f"{describe} failed; restarting the whole gang "
        f"({restarts + 1}/{limit}) from the last checkpoint",
    )
