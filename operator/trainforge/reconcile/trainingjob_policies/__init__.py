"""The TrainingJob lifecycle as an ordered list of small pure policies, one module each.

`reconcile.trainingjob.plan` runs them in this order; the first that decides the phase ends
the plan. Adding a rule is one module and one line here.
"""

from __future__ import annotations

from trainforge.reconcile.trainingjob_policies.cannot_start import cannot_start
from trainforge.reconcile.trainingjob_policies.checkpoint_lost import checkpoint_lost
from trainforge.reconcile.trainingjob_policies.context import Context, Decision, Policy
from trainforge.reconcile.trainingjob_policies.create import create
from trainforge.reconcile.trainingjob_policies.deadline import deadline
from trainforge.reconcile.trainingjob_policies.failure import failure
from trainforge.reconcile.trainingjob_policies.finished import finished
from trainforge.reconcile.trainingjob_policies.invalid_spec import invalid_spec
from trainforge.reconcile.trainingjob_policies.kueue_admission import kueue_admission
from trainforge.reconcile.trainingjob_policies.kueue_workload import kueue_workload
from trainforge.reconcile.trainingjob_policies.lost_workers import lost_workers
from trainforge.reconcile.trainingjob_policies.pending import pending
from trainforge.reconcile.trainingjob_policies.previous_gang import previous_gang
from trainforge.reconcile.trainingjob_policies.progress import record_progress
from trainforge.reconcile.trainingjob_policies.references import missing_references
from trainforge.reconcile.trainingjob_policies.running import running
from trainforge.reconcile.trainingjob_policies.runtime import runtime_problem
from trainforge.reconcile.trainingjob_policies.spec_change import spec_change
from trainforge.reconcile.trainingjob_policies.stale import delete_stale
from trainforge.reconcile.trainingjob_policies.success import success
from trainforge.reconcile.trainingjob_policies.suspend import suspend

POLICIES: tuple[Policy, ...] = (
    record_progress,  # keeps the newest progress and checkpoint workers reported
    runtime_problem,  # runtime missing, invalid, or a locked field overridden
    invalid_spec,
    kueue_workload,  # gang policy Kueue: the Workload follows the job (never decides)
    finished,  # Succeeded and Failed are sticky; TTL after finishing
    delete_stale,  # pods of an older attempt go
    suspend,
    kueue_admission,  # gang policy Kueue: workers only while the Workload is admitted
    deadline,  # activeDeadlineSeconds
    failure,  # exit codes, disruptions, maxRestarts
    lost_workers,  # deleted, evicted, node gone
    success,
    spec_change,
    checkpoint_lost,
    missing_references,
    previous_gang,  # the previous attempt is still terminating
    create,  # what is missing; refusals by the API server
    running,
    cannot_start,  # image pull, config, crash loop
    pending,  # always decides
)


def decide(ctx: Context) -> Decision:
    for policy in POLICIES:
        decision = policy(ctx)
        if decision is not None:
            return decision
    raise AssertionError("the last policy always decides")


__all__ = ["POLICIES", "Context", "Decision", "Policy", "decide"]
