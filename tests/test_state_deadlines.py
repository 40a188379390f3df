"""The state store's timeouts on one timer (smtpfw.state.store.Deadlines):
an operation past its deadline fails open within the timeout, a caller's
own cancellation stays a cancellation, and a store used from a second
event loop still times out."""

from __future__ import annotations

import asyncio
import time

import pytest

from smtpfw.state.store import RateResult, Store


class Hanging:
    """A back end whose `hit` never answers (or after ``delay``)."""

    name = "hanging"

    def __init__(self, delay: float = 3600.0):
        self.delay = delay

    async def hit(self, key, buckets, cost, now, force):
        await asyncio.sleep(self.delay)
        return RateResult(True, (1.0,), 0.0, (10,))

    async def close(self):
        pass


def _hit(store: Store):
    from smtpfw.state.store import Bucket
    return store.hit("k", [Bucket(10, 60)], now=time.time())


def test_operations_past_the_deadline_fail_open_within_the_timeout():
    async def go():
        store = Store(Hanging(), timeout=0.2, failures=100)
        start = time.monotonic()
        results = await asyncio.gather(*(_hit(store) for _ in range(20)))
        return time.monotonic() - start, results, store
    elapsed, results, store = asyncio.run(go())
    assert 0.18 < elapsed < 0.6, elapsed
    assert all(not r.available and r.allowed and "no answer within 0.2 s" in r.reason for r in results)
    assert store.stats["hit"].failures == 20
    assert not store._deadlines.inflight


def test_a_fast_answer_is_not_cancelled_later():
    async def go():
        store = Store(Hanging(delay=0.01), timeout=0.2)
        first = await _hit(store)
        await asyncio.sleep(0.3)                # the timer armed by the first operation fires: nothing to cancel
        second = await _hit(store)
        return first, second
    first, second = asyncio.run(go())
    assert first.available and second.available


def test_the_callers_cancellation_is_not_taken_for_a_timeout():
    async def go():
        store = Store(Hanging(), timeout=5.0)
        task = asyncio.ensure_future(_hit(store))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return store
    store = asyncio.run(go())
    assert store.breaker.consecutive == 0 and not store._deadlines.inflight


def test_a_store_used_from_a_second_loop_still_times_out():
    store = Store(Hanging(), timeout=0.15, failures=100)

    async def one():
        return await _hit(store)
    for _ in range(2):
        start = time.monotonic()
        result = asyncio.run(one())
        assert not result.available and time.monotonic() - start < 0.6
