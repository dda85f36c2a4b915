"""Gang policy Kueue: no worker runs unless Kueue admits the job's Workload. Until then the
job is Suspended (reason WaitingForKueue, with Kueue's own reason such as insufficient
quota). An eviction (preemption, ...) stops the gang the graceful way, SIGTERM then a
checkpoint, as an uncounted restart: a new attempt starts from that checkpoint once Kueue
admits the job again. Admitted workers get the admission's node labels and tolerations."""

from __future__ import annotations

from dataclasses import replace

from trainforge.reconcile import kueue
from trainforge.reconcile.conditions import Cond
from trainforge.reconcile.trainingjob_policies.context import (
    PENDING,
    SUSPENDED,
    Context,
    Decision,
    stalled,
)
from trainforge.render.kueue import kueue_managed, place, placements

NOT_ENABLED = (
    "spec.scheduling.gang.policy: Kueue needs the operator's Kueue integration, which is off; "
    "install Kueue and set the Helm value kueue.enabled=true (docs/install.md), or choose "
    "another gang policy"
)


def kueue_admission(ctx: Context) -> Decision | None:
    if not kueue_managed(ctx.spec):
        return None
    view = ctx.obs.kueue
    if view is None:
        return PENDING, stalled([("KueueNotEnabled", NOT_ENABLED)])
    current = view.workload
    if current is not None and kueue.admitted(current):
        spots = placements(current["status"]["admission"], view.flavors, ctx.spec.workers)
        pods = tuple(place(pod, spots[i]) for i, pod in enumerate(ctx.children.pods))
        ctx.children = replace(ctx.children, pods=pods)
        return None
    ctx.status.pop("startTime", None)
    eviction = kueue.evicted(current) if current is not None else None
    if eviction is not None:
        reason = "EvictedByKueue"
        message = (
            f"Kueue evicted the job ({eviction.get('reason', '')}: "
            f"{eviction.get('message', '')}); it resumes from its last checkpoint when "
            "Kueue admits it again"
        )
    else:
        reason = "WaitingForKueue"
        message = (
            kueue.waiting_message(current)
            if current is not None
            else (f"waiting for Kueue admission in LocalQueue {ctx.spec.scheduling.queue_name}")
        )
    if ctx.current:
        # The gang goes as in any uncounted restart: the next admission starts a new attempt
        # once these workers have checkpointed and exited (previous_gang.py).
        ctx.status["restartAttempt"] += 1
        ctx.result.delete_pods = [p for p in ctx.obs.pods if not p.deleting]
        ctx.result.events.append(("Normal", "Suspended", message))
    return SUSPENDED, [Cond(SUSPENDED, True, reason, message)]
