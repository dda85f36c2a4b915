"""A deduplicating work queue: at most one reconcile per object at a time.

Events for a TrainingJob arrive from two watch streams (the job and its pods) and from timers;
kopf would run their handlers concurrently. Handlers only enqueue the object's key here;
a fixed pool of workers reconciles keys, never the same key twice at once, and a key that
changes while it is being reconciled runs once more afterwards (as client-go's workqueue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable

logger = logging.getLogger(__name__)

Reconciler = Callable[[Hashable], Awaitable[float | None]]
"""Reconciles one key; returns seconds until it wants to run again, or None."""


class WorkQueue:
    def __init__(
        self,
        reconcile: Reconciler,
        workers: int,
        name: str,
        active: Callable[[], bool] = lambda: True,
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
            except Exception:
                # The reconciler reports its own errors; a crash must not kill the worker.
                logger.exception("%s: reconcile of %s failed", self._name, key)
                requeue = 5.0
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif requeue is not None:
                self.add_after(key, requeue)
