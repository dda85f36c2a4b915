"""The pure rules of live progress: write rate-limit, merging a pushed report, hang detection
(alone and through the TrainingJob plan)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from trainforge.progress.policy import (
    STARTUP_EXTRA_SECONDS,
    WRITE_INTERVAL_SECONDS,
    lowest_served_step,
    merge_live,
    next_write_delay,
    progress_deadline,
    progress_only,
)
from trainforge.progress.store import ProgressStore
from trainforge.reconcile.trainingjob import Observed, PodView, plan
from trainforge.render.trainingjob import RenderSettings

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("last", "now", "delay"),
    [(None, 100.0, 0.0), (100.0, 100.0, 30.0), (100.0, 125.0, 5.0), (100.0, 131.0, 0.0)],
)
def test_progress_writes_wait_for_the_interval(
    last: float | None, now: float, delay: float
) -> None:
    assert next_write_delay(last, now, WRITE_INTERVAL_SECONDS) == delay


def test_at_most_120_progress_writes_per_hour_however_often_the_trainer_pushes() -> None:
    store, writes, now = ProgressStore(WRITE_INTERVAL_SECONDS), set(), 0.0
    while now < 3600:  # a push every second for an hour
        writes.add(round(now + store.put("job", (0, {"step": int(now)}), now), 6))
        now += 1.0
    assert len({w for w in writes if w < 3600}) == 120  # one per 30 s


def test_only_a_progress_change_is_rate_limited() -> None:
    old = {"phase": "Running", "progress": {"step": 1}}
    assert progress_only(old, {"phase": "Running", "progress": {"step": 2}})
    assert not progress_only(old, {"phase": "Restarting", "progress": {"step": 2}})
    assert not progress_only(old, dict(old))


def test_a_live_report_replaces_progress_and_moves_the_checkpoint_forward_only() -> None:
    old = {
        "restartAttempt": 1,
        "progress": {"step": 500, "updatedAt": "A"},
        "checkpoint": {"step": 400, "path": "p400"},
    }
    status = {k: v for k, v in old.items()}
    record = {"step": 420, "loss": 1.5, "checkpoint": {"step": 300, "path": "p300"}}
    merge_live(status, old, (1, record), "B")
    assert status["progress"] == {"step": 420, "loss": 1.5, "updatedAt": "B"}  # resumed: back
    assert status["checkpoint"] == {"step": 400, "path": "p400"}


def test_a_report_of_an_older_gang_is_ignored_and_an_unchanged_step_keeps_its_time() -> None:
    old = {"restartAttempt": 2, "progress": {"step": 10, "updatedAt": "A"}}
    status = {"restartAttempt": 2, "progress": {"step": 10}}
    merge_live(status, old, (1, {"step": 99}), "B")
    assert status["progress"] == {"step": 10, "updatedAt": "A"}


@pytest.mark.parametrize(
    ("step_changed", "now", "hung", "wait"),
    [
        (None, STARTUP_EXTRA_SECONDS + 299, False, 1.0),  # first step: deadline + 600 s
        (None, STARTUP_EXTRA_SECONDS + 300, True, None),
        (-50, STARTUP_EXTRA_SECONDS + 300, True, None),  # a step of the previous gang
        (100, 399, False, 1.0),  # after a step: the deadline itself
        (100, 400, True, None),
    ],
)
def test_progress_deadline(
    step_changed: int | None, now: int, hung: bool, wait: float | None
) -> None:
    why, due = progress_deadline(
        at(0), at(step_changed) if step_changed is not None else None, at(now), 300, None
    )
    assert bool(why) is hung and due == wait


def test_progress_deadline_is_off_without_the_field_and_honours_the_startup_allowance() -> None:
    assert progress_deadline(at(0), None, at(10**6), None, None) == ("", None)
    why, _ = progress_deadline(at(0), None, at(61), 300, 60)
    assert "startupDeadlineSeconds" in why


def running_job(
    progress: dict[str, Any], restarts: int = 0, max_restarts: int = 3
) -> dict[str, Any]:
    return {
        "metadata": {"name": "llm", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {
            "workers": 1,
            "image": "t:1",
            "failurePolicy": {"maxRestarts": max_restarts, "progressDeadlineSeconds": 300},
        },
        "status": {
            "phase": "Running",
            "restartAttempt": 0,
            "restarts": restarts,
            "startTime": "2026-11-30T11:00:00Z",
            "progress": progress,
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "AllWorkersRunning",
                    "lastTransitionTime": "2026-11-30T12:00:00Z",
                }
            ],
        },
    }


POD = PodView(name="llm-worker-0", uid="p", index=0, attempt=0, phase="Running")
ALL = frozenset({"Service"})


def test_a_hung_gang_restarts_with_no_progress_and_the_last_step() -> None:
    job = running_job({"step": 42, "updatedAt": "2026-11-30T12:01:00Z"})
    result = plan(
        Observed(job=job, pods=[POD], now=at(60 + 300), children_present=ALL), RenderSettings()
    )
    assert result.status["phase"] == "Restarting" and result.status["restarts"] == 1
    restarting = next(c for c in result.status["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "NoProgress" and "last step 42" in restarting["message"]
    assert result.delete_pods == [POD]


def test_a_gang_that_steps_is_checked_again_when_its_deadline_is_due() -> None:
    job = running_job({"step": 42, "updatedAt": "2026-11-30T12:01:00Z"})
    result = plan(
        Observed(job=job, pods=[POD], now=at(60 + 100), children_present=ALL), RenderSettings()
    )
    assert result.status["phase"] == "Running" and result.requeue_after == 200


def test_a_hung_gang_out_of_restarts_fails_with_no_progress() -> None:
    job = running_job({"step": 7, "updatedAt": "2026-11-30T12:01:00Z"}, restarts=3)
    result = plan(
        Observed(job=job, pods=[POD], now=at(60 + 300), children_present=ALL), RenderSettings()
    )
    failed = next(c for c in result.status["conditions"] if c["type"] == "Failed")
    assert result.status["phase"] == "Failed" and failed["reason"] == "NoProgress"


def test_the_served_step_is_the_lowest_recent_replica_report() -> None:
    reports = {"a": (300, 1000.0), "b": (200, 1100.0), "gone": (100, 700.0)}
    assert lowest_served_step(reports, now=1100.0) == 200  # "gone" is older than 5 minutes
    assert lowest_served_step({}, now=0.0) is None
