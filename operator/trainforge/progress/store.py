"""The newest pushed report of each job, in memory (the receiver writes, the runner reads).

Memory is enough: a report is a few hundred bytes and is re-pushed every
contract.PROGRESS_PUSH_INTERVAL_SECONDS, so a restarted or newly elected operator has every
running job's progress again within one interval.
"""

from __future__ import annotations

import threading
from typing import Any

from trainforge.progress.policy import lowest_served_step, next_write_delay

Report = tuple[int, dict[str, Any]]  # (restart attempt of the reporting pod, sanitised record)


class ProgressStore:
    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._reports: dict[str, Report] = {}
        self._flush: dict[str, float] = {}  # when each job's reconcile was last scheduled
        # InferenceService uid -> server pod name -> (served step, time.monotonic()).
        self._served: dict[str, dict[str, tuple[int, float]]] = {}
        self._skipped: dict[str, int] = {}  # InferenceService uid -> newest skipped step
        self._lock = threading.Lock()  # the receiver runs on the loop, runners in threads

    def put(self, uid: str, report: Report, now: float) -> float:
        """Keep `report` for job `uid`; returns the delay after which to reconcile the job
        (0 at most every `interval`, so reports never schedule more reconciles than that)."""
        with self._lock:
            self._reports[uid] = report
            scheduled = self._flush.get(uid)
            if scheduled is not None and scheduled > now:
                return scheduled - now  # a reconcile is already on its way
            delay = next_write_delay(scheduled, now, self._interval)
            self._flush[uid] = now + delay
            return delay

    def put_served(self, uid: str, pod: str, step: int, skipped: int | None, now: float) -> float:
        """Keep the step server `pod` of InferenceService `uid` serves (and the newest it
        refused under a reload policy); returns the delay after which to reconcile the
        service (as for `put`)."""
        with self._lock:
            self._served.setdefault(uid, {})[pod] = (step, now)
            if skipped is not None:
                self._skipped[uid] = max(skipped, self._skipped.get(uid, skipped))
            scheduled = self._flush.get(uid)
            if scheduled is not None and scheduled > now:
                return scheduled - now
            delay = next_write_delay(scheduled, now, self._interval)
            self._flush[uid] = now + delay
            return delay

    def served_step(self, uid: str, now: float) -> tuple[int | None, int | None]:
        """(lowest step the replicas serve, newest step one of them skipped)."""
        with self._lock:
            return lowest_served_step(self._served.get(uid, {}), now), self._skipped.get(uid)

    def get(self, uid: str) -> Report | None:
        with self._lock:
            return self._reports.get(uid)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._reports.pop(uid, None)
            self._flush.pop(uid, None)
            self._served.pop(uid, None)
            self._skipped.pop(uid, None)

    def __len__(self) -> int:
        return len(self._reports)
