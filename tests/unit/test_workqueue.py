"""The work queue's per-key backoff, with real asyncio timers (short delays)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable

from trainforge.workqueue import Backoff, WorkQueue


async def run_for(seconds: float, queue: WorkQueue, *keys: str) -> None:
    queue.start()
    for key in keys:
        queue.add(key)
    await asyncio.sleep(seconds)
    await queue.stop()


def test_failing_keys_back_off_exponentially_up_to_the_cap() -> None:
    loop_times: list[float] = []
    six_calls = asyncio.Event()

    async def reconcile(key: Hashable) -> float | None:
        loop_times.append(asyncio.get_running_loop().time())
        if len(loop_times) == 6:
            six_calls.set()
        raise Backoff("refused")

    async def main() -> None:
        queue = WorkQueue(
            reconcile, 2, "test", backoff_base=0.05, backoff_cap=0.2, backoff_jitter=0
        )
        queue.start()
        queue.add("refused")
        await asyncio.wait_for(six_calls.wait(), timeout=30)
        await queue.stop()

    asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(loop_times[:6])]
    # 0.05, 0.1, 0.2, then capped at 0.2 (uncapped it would be 0.4, 0.8): never a retry sooner
    # than its backoff. A busy machine only makes the gaps longer, so the cap is checked on the
    # last gap with room for that: well below the uncapped 0.8 s.
    expected = [0.05, 0.1, 0.2, 0.2, 0.2]
    assert all(gap >= want - 0.005 for gap, want in zip(gaps, expected, strict=True)), gaps
    assert gaps[-1] < 0.6, gaps


def test_success_resets_the_backoff_and_a_sooner_requeue_wins() -> None:
    calls: list[str] = []

    async def reconcile(key: Hashable) -> float | None:
        calls.append(str(key))
        if len(calls) < 4:
            raise Backoff("refused", requeue_after=0.01 if len(calls) == 3 else None)
        return None

    async def main() -> None:
        queue = WorkQueue(reconcile, 1, "test", backoff_base=0.1, backoff_cap=10, backoff_jitter=0)
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


def test_backoff_is_jittered_below_the_doubling_and_never_above_the_cap() -> None:
    async def reconcile(key: Hashable) -> float | None:
        raise Backoff("refused")

    queue = WorkQueue(reconcile, 1, "test", backoff_base=1, backoff_cap=8, backoff_jitter=0.5)
    delays = [queue._backoff("k", "refused", None, None) for _ in range(6)]
    for failures, delay in enumerate(delays, start=1):
        full = min(8, 2 ** (failures - 1))
        assert full * 0.5 <= delay <= full
    # Two keys that fail together do not come back in the same instant.
    others = [queue._backoff("other", "refused", None, None) for _ in range(6)]
    assert others != delays


def test_retry_after_from_the_api_server_is_waited_out_in_full() -> None:
    calls: list[float] = []

    async def reconcile(key: Hashable) -> float | None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            # A 429 with Retry-After: 0.3 s, much longer than the first backoff step.
            raise Backoff("429 TooManyRequests", requeue_after=0.01, not_before=0.3)
        return None

    async def main() -> None:
        queue = WorkQueue(reconcile, 1, "test", backoff_base=0.01, backoff_cap=1)
        await run_for(0.6, queue, "k")

    asyncio.run(main())
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.3


def test_one_reconcile_per_key_at_a_time_and_a_change_meanwhile_runs_once_more() -> None:
    running: set[str] = set()
    overlaps: list[str] = []
    calls: list[str] = []

    async def reconcile(key: Hashable) -> float | None:
        if key in running:
            overlaps.append(str(key))
        running.add(str(key))
        calls.append(str(key))
        await asyncio.sleep(0.05)
        running.discard(str(key))
        return None

    async def main() -> None:
        queue = WorkQueue(reconcile, 4, "test")
        queue.start()
        queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.01)
        for _ in range(5):  # events while "a" runs: one more run, not five
            queue.add("a")
        await asyncio.sleep(0.3)
        await queue.stop()

    asyncio.run(main())
    assert overlaps == []
    assert sorted(calls) == ["a", "a", "b"]


def test_a_crashing_reconcile_does_not_kill_the_worker() -> None:
    calls: list[str] = []

    async def reconcile(key: Hashable) -> float | None:
        calls.append(str(key))
        if key == "bad":
            raise RuntimeError("bug")
        return None

    async def main() -> None:
        queue = WorkQueue(reconcile, 1, "test", backoff_base=10)
        await run_for(0.1, queue, "bad", "good")

    asyncio.run(main())
    assert calls == ["bad", "good"]
