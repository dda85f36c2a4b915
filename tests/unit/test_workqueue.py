"""The work queue's per-key backoff, with real asyncio timers (short delays)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable

import pytest

from trainforge.workqueue import Backoff, WorkQueue


async def run_for(seconds: float, queue: WorkQueue, *keys: str) -> None:
    queue.start()
    for key in keys:
        queue.add(key)
    await asyncio.sleep(seconds)
    await queue.stop()


def test_failing_keys_back_off_exponentially_up_to_the_cap() -> None:
    loop_times: list[float] = []

    async def reconcile(key: Hashable) -> float | None:
        loop_times.append(asyncio.get_running_loop().time())
        raise Backoff("refused")

    async def main() -> None:
        queue = WorkQueue(reconcile, 2, "test", backoff_base=0.05, backoff_cap=0.2)
        await run_for(1.0, queue, "refused")

    asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(loop_times)]
    # 0.05, 0.1, 0.2, then capped at 0.2: not a retry every few milliseconds.
    expected = [0.05, 0.1] + [0.2] * (len(gaps) - 2)
    assert gaps == pytest.approx(expected, abs=0.03), gaps
    assert 5 <= len(loop_times) <= 8


def test_success_resets_the_backoff_and_a_sooner_requeue_wins() -> None:
    calls: list[str] = []

    async def reconcile(key: Hashable) -> float | None:
        calls.append(str(key))
        if len(calls) < 4:
            raise Backoff("refused", requeue_after=0.01 if len(calls) == 3 else None)
        return None

    async def main() -> None:
        queue = WorkQueue(reconcile, 1, "test", backoff_base=0.1, backoff_cap=10)
        await run_for(0.5, queue, "k")

    asyncio.run(main())
    assert len(calls) == 4  # 0.1 s, 0.2 s, then 0.01 s (requeue_after), then done


def test_resync_does_not_cut_a_backoff_short_but_an_event_does() -> None:
    calls: list[str] = []

    async def reconcile(key: Hashable) -> float | None:
        calls.append(str(key))
        raise Backoff("refused")

    async def main() -> None:
        queue = WorkQueue(reconcile, 1, "test", backoff_base=5, backoff_cap=5)
        queue.start()
        queue.add("k")
        await asyncio.sleep(0.05)
        for _ in range(5):
            queue.resync("k")
            await asyncio.sleep(0.02)
        assert calls == ["k"]
        queue.add("k")  # a watch event: the user changed something
        await asyncio.sleep(0.05)
        assert calls == ["k", "k"]
        await queue.stop()

    asyncio.run(main())
