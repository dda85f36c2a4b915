"""Dynamic batching on its own: merging, limits, shapes, delays and errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from trainforge_trainer.serve.batcher import DynamicBatcher


class Recorder:
    """A runner that doubles its input and remembers each batch's row count."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def __call__(self, merged: np.ndarray) -> tuple[np.ndarray, Any]:
        self.batches.append(merged.shape[0])
        if self.fail:
            raise RuntimeError("model exploded")
        return merged * 2, "tag"


async def _submit_all(
    batcher: DynamicBatcher, arrays: list[np.ndarray]
) -> list[tuple[np.ndarray, Any]]:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(a) for a in arrays))
    finally:
        await batcher.stop()


def rows(n: int, value: float, width: int = 2) -> np.ndarray:
    return np.full((n, width), value, dtype=np.float32)


def test_concurrent_requests_share_batches_up_to_the_limit_and_get_their_own_rows() -> None:
    run = Recorder()
    arrays = [rows(1, i) for i in range(10)]
    results = asyncio.run(_submit_all(DynamicBatcher(run, 4, 0.05), arrays))
    assert run.batches == [4, 4, 2]
    for i, (out, tag) in enumerate(results):
        assert tag == "tag"
        np.testing.assert_array_equal(out, rows(1, 2 * i))


def test_only_requests_of_the_same_trailing_shape_are_merged() -> None:
    run = Recorder()
    arrays = [rows(1, 1), rows(2, 2, width=3), rows(1, 3), rows(1, 4, width=3)]
    results = asyncio.run(_submit_all(DynamicBatcher(run, 32, 0.05), arrays))
    assert sorted(run.batches) == [2, 3]
    for array, (out, _) in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(out, array * 2)


def test_a_request_larger_than_the_batch_limit_runs_alone() -> None:
    run = Recorder()
    asyncio.run(_submit_all(DynamicBatcher(run, 4, 0.05), [rows(9, 1), rows(1, 2)]))
    assert run.batches == [9, 1]


def test_batch_size_one_turns_merging_off() -> None:
    run = Recorder()
    asyncio.run(_submit_all(DynamicBatcher(run, 1, 0.05), [rows(1, i) for i in range(5)]))
    assert run.batches == [1, 1, 1, 1, 1]


def test_a_model_error_fails_only_the_request_the_model_refuses() -> None:
    class RefusesNegative(Recorder):
        def __call__(self, merged: np.ndarray) -> tuple[np.ndarray, Any]:
            self.batches.append(merged.shape[0])
            if (merged < 0).any():
                raise ValueError("negative input")
            return merged * 2, "tag"

    run = RefusesNegative()

    async def scenario() -> list[Any]:
        batcher = DynamicBatcher(run, 8, 0.01)
        batcher.start()
        try:
            subs = [batcher.submit(rows(1, v)) for v in (1, -1, 3)]
            return await asyncio.gather(*subs, return_exceptions=True)
        finally:
            await batcher.stop()

    first, second, third = asyncio.run(scenario())
    assert run.batches == [3, 1, 1, 1]  # the batch failed, then each request alone
    np.testing.assert_array_equal(first[0], rows(1, 2))
    assert isinstance(second, ValueError) and str(second) == "negative input"
    np.testing.assert_array_equal(third[0], rows(1, 6))


def test_a_failing_model_fails_each_request_with_its_error() -> None:
    async def scenario() -> list[Any]:
        batcher = DynamicBatcher(Recorder(fail=True), 8, 0.01)
        batcher.start()
        try:
            subs = [batcher.submit(rows(1, i)) for i in range(3)]
            return await asyncio.gather(*subs, return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert [str(r) for r in results] == ["model exploded"] * 3


async def _first_dispatch_after(delay: float, hold_arrival: bool) -> float:
    """Seconds from submitting one request until its batch ran."""
    batcher = DynamicBatcher(Recorder(), 8, delay)
    batcher.start()
    try:
        started = time.perf_counter()
        if hold_arrival:
            with batcher.arriving():  # another request is being received meanwhile
                task = asyncio.ensure_future(batcher.submit(rows(1, 1)))
                await asyncio.wait({task}, timeout=2 * delay + 1)
        else:
            await batcher.submit(rows(1, 1))
        return time.perf_counter() - started
    finally:
        await batcher.stop()


def test_the_batch_waits_up_to_the_delay_only_while_more_requests_are_arriving() -> None:
    waited = asyncio.run(_first_dispatch_after(0.2, hold_arrival=True))
    assert 0.19 <= waited < 1.5
    # Nobody else arriving: waiting could only add latency, so it runs at once.
    alone = asyncio.run(_first_dispatch_after(0.5, hold_arrival=False))
    assert alone < 0.4


@pytest.mark.parametrize("max_batch_size", [3, 32])
def test_every_request_is_answered_exactly_once(max_batch_size: int) -> None:
    run = Recorder()
    arrays = [rows(1 + i % 3, i) for i in range(40)]
    results = asyncio.run(_submit_all(DynamicBatcher(run, max_batch_size, 0.01), arrays))
    assert sum(run.batches) == sum(a.shape[0] for a in arrays)
    for array, (out, _) in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(out, array * 2)


def test_a_stalled_upload_does_not_hold_later_batches() -> None:
    async def scenario() -> tuple[float, float]:
        batcher = DynamicBatcher(Recorder(), 8, 0.3)
        batcher.start()
        try:
            with batcher.arriving():  # a body that never finishes arriving
                await asyncio.sleep(0.35)  # ... for longer than the batch delay
                started = time.perf_counter()
                await batcher.submit(rows(1, 1))
                alone = time.perf_counter() - started
                # A body that started arriving just now is still worth waiting for.
                with batcher.arriving():
                    started = time.perf_counter()
                    await batcher.submit(rows(1, 1))
                    waited = time.perf_counter() - started
            return alone, waited
        finally:
            await batcher.stop()

    alone, waited = asyncio.run(scenario())
    assert alone < 0.1
    assert 0.25 <= waited < 1.5
