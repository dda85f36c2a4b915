"""Each TrainingJob policy alone: given a context, does it decide, pass, or add to the plan.

The table tests in test_reconcile_trainingjob.py check the policies together through `plan`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import trainforge_contract as contract
from trainforge.reconcile.trainingjob import Observed, Plan, PodView
from trainforge.reconcile.trainingjob_policies import POLICIES, Context
from trainforge.reconcile.trainingjob_policies.cannot_start import cannot_start
from trainforge.reconcile.trainingjob_policies.create import create
from trainforge.reconcile.trainingjob_policies.deadline import deadline
from trainforge.reconcile.trainingjob_policies.failure import failure
from trainforge.reconcile.trainingjob_policies.finished import finished
from trainforge.reconcile.trainingjob_policies.invalid_spec import invalid_spec
from trainforge.reconcile.trainingjob_policies.lost_workers import lost_workers
from trainforge.reconcile.trainingjob_policies.pending import pending
from trainforge.reconcile.trainingjob_policies.previous_gang import previous_gang
from trainforge.reconcile.trainingjob_policies.progress import record_progress
from trainforge.reconcile.trainingjob_policies.running import running
from trainforge.reconcile.trainingjob_policies.suspend import suspend
from trainforge.render.common import RenderSettings

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def context(
    status: dict[str, Any] | None = None, pods: list[PodView] | None = None, **kw: Any
) -> Context:
    spec = {"workers": 2, "image": "trainer:1", **kw.pop("spec", {})}
    job = {
        "apiVersion": contract.API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": "llm", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": spec,
        "status": status or {},
    }
    observed = Observed(job=job, pods=pods or [], now=NOW, **kw)
    return Context(observed, RenderSettings(), Plan(status={}))


def pod(index: int, phase: str = "Running", attempt: int = 0, **kw: Any) -> PodView:
    return PodView(f"llm-worker-{index}", f"u{index}", index, attempt, phase, **kw)


def test_the_order_reads_as_the_lifecycle_and_ends_with_a_policy_that_always_decides() -> None:
    names = [p.__name__ for p in POLICIES]
    assert names.index("invalid_spec") < names.index("finished") < names.index("suspend")
    assert names.index("failure") < names.index("success") < names.index("create")
    assert names[-1] == "pending"
    assert pending(context()) is not None


def test_invalid_spec_decides_only_for_an_invalid_spec() -> None:
    assert invalid_spec(context()) is None
    phase, conditions = invalid_spec(context(spec={"workers": 0})) or ("", [])
    assert phase == "Pending"
    assert conditions[0].reason == "InvalidSpec"
    assert "spec.workers" in conditions[0].message


def test_finished_is_sticky_and_deletes_leftover_workers() -> None:
    ctx = context({"phase": "Succeeded"}, [pod(0)])
    assert finished(ctx) is not None
    assert [p.name for p in ctx.result.delete_pods] == ["llm-worker-0"]
    assert finished(context({"phase": "Running"})) is None


def test_suspend_deletes_every_worker_and_stops_the_clock() -> None:
    ctx = context({"startTime": "2026-11-23T11:00:00Z"}, [pod(0), pod(1)], spec={"suspend": True})
    phase, _ = suspend(ctx) or ("", [])
    assert phase == "Suspended"
    assert len(ctx.result.delete_pods) == 2
    assert "startTime" not in ctx.status
    assert suspend(context()) is None


def test_deadline_passes_until_due_then_fails_the_job() -> None:
    ctx = context({"startTime": "2026-11-23T11:59:00Z"}, spec={"activeDeadlineSeconds": 120})
    assert deadline(ctx) is None
    assert ctx.result.requeue_after == 60
    ctx = context({"startTime": "2026-11-23T11:00:00Z"}, spec={"activeDeadlineSeconds": 120})
    phase, conditions = deadline(ctx) or ("", [])
    assert (phase, conditions[0].reason) == ("Failed", "DeadlineExceeded")


def test_failure_restarts_counted_fails_on_a_fatal_code_and_disruptions_are_free() -> None:
    ctx = context(pods=[pod(0, "Failed", exit_code=1), pod(1)])
    phase, conditions = failure(ctx) or ("", [])
    assert (phase, conditions[0].reason) == ("Restarting", "WorkerFailed")
    assert ctx.status["restarts"] == 1 and ctx.status["restartAttempt"] == 1
    ctx = context(pods=[pod(0, "Failed", exit_code=contract.EXIT_CONFIG_ERROR)])
    assert (failure(ctx) or ("", []))[0] == "Failed"
    ctx = context(pods=[pod(0, "Failed", disrupted=True)])
    assert (failure(ctx) or ("", []))[1][0].reason == "WorkersDisrupted"
    assert ctx.status["restarts"] == 0
    assert failure(context(pods=[pod(0), pod(1)])) is None


def test_lost_workers_restart_the_gang_uncounted_once_it_ran() -> None:
    assert lost_workers(context({"phase": "Pending"}, [pod(0)])) is None  # still to be created
    ctx = context({"phase": "Running"}, [pod(0)])
    phase, conditions = lost_workers(ctx) or ("", [])
    assert phase == "Restarting"
    assert "llm-worker-1 is gone" in conditions[0].message
    assert ctx.status["restarts"] == 0


def test_the_previous_gang_is_waited_for() -> None:
    ctx = context({"restartAttempt": 1}, [pod(0, attempt=0), pod(0, "Pending", attempt=1)])
    phase, _ = previous_gang(ctx) or ("", [])
    assert phase == "Restarting"
    assert previous_gang(context(pods=[pod(0)])) is None


def test_a_previous_worker_still_terminating_holds_its_name_back() -> None:
    # Found on the real node: the old worker-0 checkpoints during its grace period; creating
    # the new worker-0 then got a 409 and the gang waited forever with one worker.
    ctx = context({"restartAttempt": 1}, [pod(0, attempt=0, deleting=True)])
    phase, conditions = previous_gang(ctx) or ("", [])
    assert (phase, conditions[0].reason) == ("Restarting", "WaitingForPreviousWorkers")


def test_create_adds_what_is_missing_and_a_refusal_stalls() -> None:
    ctx = context(pods=[pod(0)], children_present=frozenset({"Service"}))
    assert create(ctx) is None
    assert [m["metadata"]["name"] for m in ctx.result.create] == ["llm-worker-1"]
    ctx = context(rejected=[("AdmissionRejected", "quota")])
    phase, conditions = create(ctx) or ("", [])
    assert (phase, conditions[0].type, conditions[0].status) == ("Pending", "Stalled", True)


def test_running_cannot_start_and_pending() -> None:
    ctx = context({"phase": "Pending"}, [pod(0), pod(1)])
    assert (running(ctx) or ("", []))[0] == "Running"
    assert ctx.result.became_running
    stuck = pod(1, "Pending", cannot_start=("ImagePullBackOff", "no such image"))
    assert running(context(pods=[pod(0), stuck])) is None
    _, conditions = cannot_start(context(pods=[pod(0), stuck])) or ("", [])
    assert conditions[0].reason == "ImagePullBackOff"
    _, conditions = pending(context(pods=[pod(0, "Pending", unschedulable="0/3 nodes")]))
    assert conditions[1].type == "Unschedulable"


def test_progress_keeps_the_newest_step_and_never_decides() -> None:
    reported = pod(0, "Failed", progress={"step": 7, "checkpoint": {"step": 5, "path": "/c/5"}})
    ctx = context({"progress": {"step": 3}}, [reported])
    assert record_progress(ctx) is None
    # updatedAt: when the operator saw the step change (the hang-detection clock).
    assert ctx.status["progress"] == {"step": 7, "updatedAt": "2026-11-23T12:00:00Z"}
    assert ctx.status["checkpoint"] == {"step": 5, "path": "/c/5"}
