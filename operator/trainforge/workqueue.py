"""A deduplicating work queue: at most one reconcile per object at a time.

Events for a TrainingJob arrive from two watch streams (the job and its pods) and from timers;
kopf would run their handlers concurrently. Handlers only enqueue the object's key here;
a fixed pool of workers reconciles keys, never the same key twice at once, and a key that
changes while it is being reconciled runs once more afterwards (as client-go's workqueue).

A reconcile that fails (it raises, typically `Backoff`) runs again after a per-key delay that
doubles with each consecutive failure up to a cap, as client-go's rate-limited queue does: a
child the API server keeps refusing is not retried every few seconds forever. Each delay is
shortened by a random part of up to `backoff_jitter`, so keys that failed together (an API
server restart) do not all come back in the same instant; a wait the API server asked for
(Retry-After with a 429) is never cut short. A watch event
(the user changed the object) still runs the key at once; the periodic resync does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Hashable

logger = logging.getLogger(__name__)

Reconciler = Callable[[Hashable], Awaitable[float | None]]
"""Reconciles one key; returns seconds until it wants to run again, or None."""

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
BACKOFF_JITTER = 0.1


class Backoff(Exception):
    """Raised by a reconcile that could not finish its work (a write the API server refused,
    an API error): its key runs again after the key's backoff delay, or after
    `requeue_after` seconds when that is sooner (a deadline that is due), but never before
    `not_before` seconds (the API server's Retry-After)."""

    def __init__(
        self,
        reason: str,
        requeue_after: float | None = None,
        not_before: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.requeue_after = requeue_after
        self.not_before = not_before


class WorkQueue:
    def __init__(
        self,
        reconcile: Reconciler,
        workers: int,
        name: str,
        active: Callable[[], bool] = lambda: True,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        backoff_jitter: float = BACKOFF_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        self._reconcile = reconcile
        # False while another replica leads: keys are dropped, the new leader's
        # resync brings them all back.
        self._active = active
        self._workers = workers
        self._name = name
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._running: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._backoff_jitter = backoff_jitter
        self._rng = rng or random.Random()
        self._failures: dict[Hashable, int] = {}  # consecutive failed reconciles per key

    def add(self, key: Hashable) -> None:
        """Schedule `key`; a no-op when it is already waiting."""
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        """Schedule `key` in `delay` seconds (an earlier pending schedule wins)."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing and existing.when() <= loop.time() + delay:
            return
        if existing:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def resync(self, key: Hashable) -> None:
        """Schedule `key` for a periodic resync, unless it is waiting out a backoff."""
        if key not in self._failures or key not in self._timers:
            self.add(key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self._name}-worker-{i}")
            for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            if not self._active():
                continue
            self._running.add(key)
            try:
                requeue = await self._reconcile(key)
                self._failures.pop(key, None)
            except Backoff as e:
                requeue = self._backoff(key, str(e), e.requeue_after, e.not_before)
            except Exception:
                # The reconciler reports its own errors; a crash must not kill the worker.
                logger.exception("%s: reconcile of %s failed", self._name, key)
                requeue = self._backoff(key, "unexpected error", None, None)
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif requeue is not None:
                self.add_after(key, requeue)

    def _backoff(
        self,
        key: Hashable,
        reason: str,
        requeue_after: float | None,
        not_before: float | None,
    ) -> float:
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self._backoff_cap, self._backoff_base * 2 ** min(failures - 1, 32))
        delay *= 1 - self._backoff_jitter * self._rng.random()
        if requeue_after is not None:
            delay = min(delay, requeue_after)
        if not_before is not None:
            delay = max(delay, not_before)
        logger.info(
            "%s: %s failed %d times in a row (%s); next try in %.0fs",
            self._name,
            key,
            failures,
            reason,
            delay,
        )
        return delay
