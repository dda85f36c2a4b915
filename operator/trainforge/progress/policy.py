"""Pure rules of live progress: how often it may be written, how a report enters status, and
when a job counts as hung. No I/O; the clock comes in as arguments."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

# At most one progress-only status write per job per this many seconds: <= 120 writes per hour
# per job, whatever the trainer's push rate (docs/architecture.md).
WRITE_INTERVAL_SECONDS = 30.0
# Without spec.failurePolicy.startupDeadlineSeconds, the first step of a gang may take this
# much longer than progressDeadlineSeconds (rendezvous, data, checkpoint load, compilation).
STARTUP_EXTRA_SECONDS = 600
PROGRESS_KEYS = ("progress", "checkpoint")


def next_write_delay(last_write: float | None, now: float, interval: float) -> float:
    """Seconds until a progress-only write is allowed (0: now)."""
    if last_write is None:
        return 0.0
    return max(0.0, last_write + interval - now)


# A change of worker counts alone ("2/4 workers running" while the gang starts) waits this
# long after the last status write: the gang's next phase usually comes first and carries the
# final counts in one write; a gang that stays part-started still shows its counts this soon.
# 5 s still let a third of the gangs write a part-started count on a loaded control plane
# (bench/REPORT.md).
COUNTS_WRITE_INTERVAL_SECONDS = 10.0


def counts_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when `new` differs from `old` only in status.workers and the condition messages
    that quote them: same phase, same condition types, statuses and reasons."""
    return old != new and _without_counts(old) == _without_counts(new)


def _without_counts(status: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in status.items() if k != "workers"}
    rest["conditions"] = [
        {k: v for k, v in c.items() if k != "message"} for c in status.get("conditions", [])
    ]
    return rest


def progress_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when `new` differs from `old` in progress or checkpoint and nothing else.
    (Conditions are compared without their timestamps; the plan keeps those stable.)"""
    rest_old = {k: v for k, v in old.items() if k not in PROGRESS_KEYS}
    rest_new = {k: v for k, v in new.items() if k not in PROGRESS_KEYS}
    return rest_old == rest_new and old != new


def merge_live(
    status: dict[str, Any],
    old: dict[str, Any],
    live: tuple[int, dict[str, Any]] | None,
    now: str,
) -> None:
    """Merge the newest pushed report `(restart attempt, sanitised record)` into `status`.

    A report of an older gang is ignored: its pods are going away. The live record replaces
    progress as a whole (after a restart the step goes back to the resumed checkpoint, and
    status should say so); a checkpoint only ever moves forward. `updatedAt` is when the step
    last changed: carried over while it stays the same, stamped `now` when it moves.
    """
    if live is not None and live[0] == status.get("restartAttempt", 0):
        record = dict(live[1])
        checkpoint = record.pop("checkpoint", None)
        status["progress"] = record
        if checkpoint and checkpoint["step"] >= status.get("checkpoint", {}).get("step", -1):
            status["checkpoint"] = checkpoint
    progress = status.get("progress")
    if not progress:
        return
    before = old.get("progress") or {}
    if progress.get("step") == before.get("step") and before.get("updatedAt"):
        progress["updatedAt"] = before["updatedAt"]
    else:
        progress["updatedAt"] = now


def progress_deadline(
    running_since: datetime | None,
    step_changed: datetime | None,
    now: datetime,
    deadline: int | None,
    startup: int | None,
) -> tuple[str, float | None]:
    """Hang detection: (why the gang is hung or "", seconds until the rule is due again).

    While the gang has not changed its step since it started running, the start-up allowance
    applies (`startup`, default deadline + STARTUP_EXTRA_SECONDS); after that, `deadline`
    from the last step change. Off when `deadline` is None or the gang is not running.
    """
    if deadline is None or running_since is None:
        return "", None
    if step_changed is not None and step_changed > running_since:
        since, allowed = step_changed, deadline
        why = (
            f"the step has not changed for {deadline}s (spec.failurePolicy.progressDeadlineSeconds)"
        )
    else:
        since = running_since
        allowed = startup if startup is not None else deadline + STARTUP_EXTRA_SECONDS
        why = (
            f"no step within {allowed}s of the workers starting "
            "(spec.failurePolicy.startupDeadlineSeconds)"
        )
    due = since + timedelta(seconds=allowed)
    if now >= due:
        return why, None
    return "", (due - now).total_seconds()


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def hang_check(
    old: dict[str, Any], status: dict[str, Any], now: datetime, failure_policy: Any
) -> tuple[str, float | None]:
    """progress_deadline for a job that was Running before this reconcile and still is:
    the gang runs since its Running condition's transition, the step changed at
    status.progress.updatedAt. The message names the last step."""
    if old.get("phase") != "Running":
        return "", None  # the gang starts running now: the clock starts now
    running = next((c for c in old.get("conditions", []) if c["type"] == "Running"), None)
    progress = status.get("progress") or {}
    why, wait = progress_deadline(
        _time(running.get("lastTransitionTime")) if running else None,
        _time(progress.get("updatedAt")),
        now,
        failure_policy.progress_deadline_seconds,
        failure_policy.startup_deadline_seconds,
    )
    if why:
        step = progress.get("step")
        why += f"; last step {step}" if step is not None else "; no step reported yet"
    return why, wait


# A replica that has not reported its served step for this long no longer counts (gone, or
# cut off from the operator); replicas re-report every minute.
SERVED_STEP_MAX_AGE_SECONDS = 300.0


def lowest_served_step(reports: dict[str, tuple[int, float]], now: float) -> int | None:
    """The step every serving replica has reached: the lowest recent report (pod -> (step,
    time)); None when no replica reported lately."""
    fresh = [step for step, at in reports.values() if now - at < SERVED_STEP_MAX_AGE_SECONDS]
    return min(fresh) if fresh else None
