"""Dynamic batching: concurrent requests share one model forward.

Requests queue on the event loop. One collector takes the oldest request and waits, at most
`max_delay` after that request arrived, for more with the same trailing shape until the batch
holds `max_batch_size` rows; it stops waiting early when no other request is being received
(waiting could only add latency then). A request counts as being received only for
`max_delay` after its body started arriving: a slow or stalled upload could not join the
batch in time anyway, and must not make every batch wait its full delay. The merged batch
runs on a single inference thread, so the event loop keeps parsing and answering while the
model computes, and whatever queued meanwhile forms the next batch. A request with more
rows than `max_batch_size` runs alone.

When a merged batch fails, its requests run again one by one: a request the model refuses
(a wrong input shape for a user's model) fails alone, never the others that shared its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainforge_trainer.serve.protocol import batch_key, split_rows

# Runs one merged batch; returns the output rows and a tag saying which model answered.
Runner = Callable[[np.ndarray], tuple[np.ndarray, Any]]
# Told after each batch: rows, each request's queue wait, and the forward time (seconds).
BatchObserver = Callable[[int, list[float], float], None]


@dataclass
class _Pending:
    array: np.ndarray
    key: tuple[Any, ...]
    enqueued: float
    future: asyncio.Future[tuple[np.ndarray, Any]] = field(repr=False)


class DynamicBatcher:
    def __init__(
        self,
        run: Runner,
        max_batch_size: int,
        max_delay_seconds: float,
        observe: BatchObserver = lambda _rows, _waits, _seconds: None,
        thread_setup: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_seconds
        self._observe = observe
        self._pending: deque[_Pending] = deque()
        # Requests whose body is being read: token -> loop time their reading started.
        self._arriving: dict[int, float] = {}
        self._tokens = itertools.count()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="inference", initializer=thread_setup
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap the reading of a request that will be submitted: the collector waits for it."""
        token = next(self._tokens)
        self._arriving[token] = asyncio.get_running_loop().time()
        try:
            yield
        finally:
            del self._arriving[token]
            self._wake.set()

    async def submit(self, array: np.ndarray) -> tuple[np.ndarray, Any]:
        """The model's output rows for `array` (dim 0 is the batch), and the answering tag."""
        loop = asyncio.get_running_loop()
        item = _Pending(array, batch_key(array), loop.time(), loop.create_future())
        self._pending.append(item)
        self._wake.set()
        return await item.future

    def _ready_rows(self, key: tuple[Any, ...]) -> int:
        return sum(p.array.shape[0] for p in self._pending if p.key == key)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            first = self._pending[0]
            deadline = first.enqueued + self.max_delay
            while self._ready_rows(first.key) < self.max_batch_size:
                now = loop.time()
                fresh = [t for t in self._arriving.values() if now - t < self.max_delay]
                # Wait until the deadline, or until the last fresh arrival turns slow.
                remaining = min(deadline, max(fresh, default=now - self.max_delay) + self.max_delay)
                remaining -= now
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            await self._execute(self._take(first.key), loop)

    def _take(self, key: tuple[Any, ...]) -> list[_Pending]:
        """The oldest request plus later ones of the same shape that fit, in arrival order."""
        batch = [self._pending.popleft()]
        rows = batch[0].array.shape[0]
        kept: deque[_Pending] = deque()
        while self._pending:
            item = self._pending.popleft()
            if item.key == key and rows + item.array.shape[0] <= self.max_batch_size:
                batch.append(item)
                rows += item.array.shape[0]
            else:
                kept.append(item)
        self._pending = kept
        return batch

    async def _execute(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        started = loop.time()
        rows = [p.array.shape[0] for p in batch]
        merged = batch[0].array if len(batch) == 1 else np.concatenate([p.array for p in batch])
        t0 = time.perf_counter()
        try:
            output, tag = await loop.run_in_executor(self._executor, self._run, merged)
            parts = split_rows(output, rows)
        except Exception as exc:
            if len(batch) > 1:
                # Which request the model refused is unknown: each runs alone, so only the
                # ones that fail by themselves get an error.
                for p in batch:
                    await self._execute([p], loop)
                return
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self._observe(sum(rows), [started - p.enqueued for p in batch], time.perf_counter() - t0)
        for p, part in zip(batch, parts, strict=True):
            if not p.future.done():  # a cancelled waiter (client gone) needs no answer
                p.future.set_result((part, tag))
