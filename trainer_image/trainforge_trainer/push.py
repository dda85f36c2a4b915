"""Live progress: rank 0 pushes its progress record to the operator (contract.ENV_PROGRESS_URL).

Authenticated with the pod's projected ServiceAccount token (re-read on every push: the kubelet
rotates it). Best effort: a failed push is retried at the next interval and never disturbs
training; the termination message stays the record of last resort.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trainforge_contract as contract
from trainforge_trainer import logs
from trainforge_trainer.metrics import record_json

TIMEOUT_SECONDS = 5.0


def push_progress(url: str, token: str, record: Mapping[str, Any]) -> tuple[int, str]:
    """POST one record; returns (HTTP status, body). Connection errors are status 0."""
    request = urllib.request.Request(
        url,
        data=record_json(record).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


class ProgressPusher:
    """A daemon thread that pushes the newest record every `interval` seconds when it
    changed (or when `repeat` seconds passed, so a restarted operator learns it again), and
    at once after `wake()`. An empty record is not pushed."""

    def __init__(
        self,
        url: str,
        token_path: Path,
        snapshot: Callable[[], dict[str, Any]],
        interval: float = contract.PROGRESS_PUSH_INTERVAL_SECONDS,
        repeat: float | None = None,
    ) -> None:
        self._url, self._token_path, self._snapshot = url, token_path, snapshot
        self._interval = interval
        self._repeat = repeat
        self._sent_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sent: dict[str, Any] | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="progress-push", daemon=True)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        snapshot: Callable[[], dict[str, Any]],
        repeat: float | None = None,
    ) -> ProgressPusher | None:
        url = env.get(contract.ENV_PROGRESS_URL)
        if not url:
            return None
        token_path = env.get(
            contract.ENV_PROGRESS_TOKEN_PATH,
            f"{contract.PROGRESS_TOKEN_DIR}/{contract.PROGRESS_TOKEN_FILE}",
        )
        pusher = cls(url, Path(token_path), snapshot, repeat=repeat)
        pusher._thread.start()
        return pusher

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Push what is new one last time, then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=TIMEOUT_SECONDS + 1)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.push_if_changed()
            if self._stop.is_set():
                return

    def push_if_changed(self) -> None:
        record = self._snapshot()
        stale = self._repeat is not None and time.monotonic() - self._sent_at >= self._repeat
        if not record or (record == self._sent and not stale):
            return
        try:
            token = self._token_path.read_text().strip()
        except OSError as e:
            self._report_failure(0, f"cannot read the token {self._token_path}: {e}")
            return
        status, body = push_progress(self._url, token, record)
        if status == 200:
            self._sent, self._sent_at = record, time.monotonic()
            if self._failing:
                logs.event("progress_push_recovered", url=self._url)
            self._failing = False
        else:
            self._report_failure(status, body)

    def _report_failure(self, status: int, detail: str) -> None:
        if not self._failing:  # once per outage, not every interval
            logs.warning("progress_push_failed", url=self._url, status=status, detail=detail[:200])
        self._failing = True
