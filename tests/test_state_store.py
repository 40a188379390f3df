"""The state store (issue 15): one suite, run against each back end.

SQLite: a file in a temp dir.  Redis: a real redis-server on a loopback
port (tests/support/redis.py).  No mocks: limits are checked under real
concurrency (several processes), outages are real (a write lock held by
another connection; a redis-server stopped with SIGSTOP or killed).  The
clock is passed in, so windows and delays pass without sleeping.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from smtpfw.state import Bucket, Greylisting, Store, open_store
from smtpfw.state.store import GREY_REFRESH
from tests.support.redis import RedisClusterInstances, RedisInstance, redis_available

T0 = 1_790_000_000.0          # a fixed "now": tests move it by hand


class Harness:
    """One back end under test: where it is, how to open a store on it,
    how to make it unavailable."""

    def __init__(self, kind: str, tmp_path: Path, redis: RedisInstance | None):
        self.kind, self.tmp_path, self.redis = kind, tmp_path, redis
        self.location = str(tmp_path / "state.db") if kind == "sqlite" else redis.url  # type: ignore[union-attr]

    def store(self, **options) -> Store:
        return open_store(self.location, **options)

    @contextmanager
    def outage(self):
        """The back end does not answer (writes hang) while inside."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.location, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")             # another process holding the write lock
            try:
                yield
            finally:
                conn.execute("ROLLBACK")
                conn.close()
        else:
            self.redis.pause()                          # type: ignore[union-attr]
            try:
                yield
            finally:
                self.redis.resume()                     # type: ignore[union-attr]


@pytest.fixture(scope="module")
def redis_server():
    why = redis_available()
    if why:
        pytest.skip(why)
    with RedisInstance() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        harness = Harness("redis", tmp_path, server)
        # a clean database for each test
        import redis as redis_py
        redis_py.Redis.from_url(server.url).flushdb()
        return harness
    return Harness("sqlite", tmp_path, None)


def run(coro):
    return asyncio.run(coro)


async def closing(store: Store, coro):
    try:
        return await coro
    finally:
        await store.close()


# ---- rate limits ---------------------------------------------------------------


def test_rate_limit_exact_and_refusals_cost_nothing(backend):
    async def go():
        store = backend.store()
        try:
            minute = [Bucket(20, 60)]
            results = [await store.hit("ip:192.0.2.1", minute, now=T0) for _ in range(25)]
            assert [r.allowed for r in results] == [True] * 20 + [False] * 5
            assert all(r.available for r in results)
            assert results[19].counts == pytest.approx((20.0,))
            assert results[-1].counts == pytest.approx((20.0,))        # the refusals counted nothing
            assert results[-1].retry_after == pytest.approx(3.0)        # one unit drains in 60/20 s
            assert results[0].fraction == pytest.approx(0.05)
            # not before the retry time, exactly then
            assert not (await store.hit("ip:192.0.2.1", minute, now=T0 + 2.9)).allowed
            assert (await store.hit("ip:192.0.2.1", minute, now=T0 + 3.0)).allowed
            assert not (await store.hit("ip:192.0.2.1", minute, now=T0 + 3.0)).allowed
            # a full window later the bucket is empty again
            after = await store.peek("ip:192.0.2.1", minute, now=T0 + 63.0)
            assert after.counts == pytest.approx((0.0,)) and after.allowed
            # another key is another bucket
            assert (await store.hit("ip:192.0.2.2", minute, now=T0)).counts == pytest.approx((1.0,))
        finally:
            await store.close()
    run(go())


def test_rate_limit_several_buckets_and_peek(backend):
    async def go():
        store = backend.store()
        try:
            buckets = [Bucket(20, 60), Bucket(30, 3600)]
            allowed = 0
            for minute in range(4):
                for _ in range(25):
                    allowed += (await store.hit("sender:a@example.org", buckets, now=T0 + 60 * minute)).allowed
            # 20 in the first minute (the minute bucket stops it); then the
            # hour bucket (30, draining one per 120 s): 10 in the second
            # minute, 1 in the third, none in the fourth
            assert allowed == 20 + 10 + 1
            peek = await store.peek("sender:a@example.org", buckets, now=T0 + 180)
            assert not peek.allowed
            assert peek.counts == pytest.approx((0.0, 29.5))             # the minute bucket has drained
            assert peek.fraction == pytest.approx(29.5 / 30)
            assert peek.retry_after == pytest.approx(60)
            again = await store.peek("sender:a@example.org", buckets, now=T0 + 180)
            assert again.counts == peek.counts                          # peek counts nothing
            # 80 % of the limit: what a rule will test
            await store.hit("k80", [Bucket(10, 60)], cost=8, now=T0)
            assert (await store.peek("k80", [Bucket(10, 60)], now=T0)).fraction == pytest.approx(0.8)
        finally:
            await store.close()
    run(go())


def test_rate_limit_cost_and_force(backend):
    async def go():
        store = backend.store()
        try:
            size = [Bucket(10_000_000, 3600)]                            # bytes per hour
            assert (await store.hit("bytes", size, cost=6_000_000, now=T0)).allowed
            r = await store.hit("bytes", size, cost=6_000_000, now=T0)
            assert not r.allowed and r.counts == pytest.approx((6_000_000,))
            assert r.retry_after == pytest.approx(3600 * 0.2)
            never = await store.hit("bytes", size, cost=20_000_000, now=T0 + 7200)
            assert not never.allowed and never.retry_after == pytest.approx(3600)
            # force: counted even when refused (a rule that makes refusals cost)
            one = [Bucket(1, 60)]
            assert (await store.hit("f", one, now=T0)).allowed
            forced = await store.hit("f", one, now=T0, force=True)
            assert not forced.allowed and forced.counts == pytest.approx((2.0,))
            assert not (await store.hit("f", one, now=T0 + 60)).allowed  # still paying for the forced one
            assert (await store.hit("f", one, now=T0 + 120)).allowed
        finally:
            await store.close()
    run(go())


def _worker(location: str, op: str, key: str, tries: int, limit: int, barrier, results) -> None:
    """One "node": its own store (own connections), ``tries`` operations at
    once after every node is ready; how many succeeded."""
    async def go() -> tuple[int, int]:
        store = open_store(location, timeout=20.0)
        try:
            await store.ping()
            barrier.wait(30)
            if op == "hit":
                out = await asyncio.gather(*(store.hit(key, [Bucket(limit, 3600)], now=T0) for _ in range(tries)))
                return sum(r.allowed for r in out), sum(not r.available for r in out)
            slots = await asyncio.gather(*(store.acquire(key, limit, 60, now=T0, holder=f"{os.getpid()}-{i}")
                                           for i in range(tries)))
            return sum(s.acquired for s in slots), sum(not s.available for s in slots)
        finally:
            await store.close()
    results.put(asyncio.run(go()))


def _in_processes(location: str, op: str, key: str, processes: int, tries: int, limit: int) -> tuple[int, int]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(location, op, key, tries, limit, barrier, results))
             for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        outs = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    return sum(o[0] for o in outs), sum(o[1] for o in outs)


def test_rate_limit_exact_across_processes(backend):
    """4 processes x 25 simultaneous hits against a limit of 37: exactly 37 pass."""
    allowed, unavailable = _in_processes(backend.location, "hit", "global", 4, 25, 37)
    assert unavailable == 0
    assert allowed == 37


def test_concurrency_exact_across_processes(backend):
    allowed, unavailable = _in_processes(backend.location, "acquire", "client:198.51.100.7", 4, 10, 13)
    assert unavailable == 0
    assert allowed == 13


def test_two_nodes_share_one_limit(backend):
    """Two stores (two clients, as two smtpfw nodes have) see one bucket."""
    async def go():
        a, b = backend.store(), backend.store()
        try:
            passed = []
            for i in range(10):
                node = a if i % 2 else b
                passed.append((await node.hit("rcpt-domain:example.net", [Bucket(5, 60)], now=T0)).allowed)
            assert passed == [True] * 5 + [False] * 5
            assert (await a.peek("rcpt-domain:example.net", [Bucket(5, 60)], now=T0)).counts == pytest.approx((5.0,))
        finally:
            await a.close()
            await b.close()
    run(go())


# ---- concurrency ----------------------------------------------------------------


def test_concurrency_slots_released_and_expiring(backend):
    async def go():
        store = backend.store()
        try:
            key = "client:203.0.113.5"
            assert (await store.acquire(key, 2, 60, now=T0, holder="s1")).acquired
            second = await store.acquire(key, 2, 60, now=T0, holder="s2")
            assert second.acquired and second.count == 2
            third = await store.acquire(key, 2, 60, now=T0, holder="s3")
            assert not third and third.available and third.count == 2
            renewed = await store.acquire(key, 2, 60, now=T0 + 30, holder="s1")   # renewing is not a new slot
            assert renewed.acquired and renewed.count == 2
            assert await store.holders(key, now=T0 + 30) == 2
            assert (await store.release(key, "s2")).ok
            assert not (await store.release(key, "s2")).ok                        # released once
            assert (await store.acquire(key, 2, 60, now=T0 + 31, holder="s3")).acquired
            # s1 (renewed at +30) and s3 (+31) crash without releasing: their slots expire
            assert not (await store.acquire(key, 2, 60, now=T0 + 89, holder="s4")).acquired
            assert await store.holders(key, now=T0 + 90.5) == 1                    # s1 gone at +90
            assert (await store.acquire(key, 2, 60, now=T0 + 90.5, holder="s4")).acquired
            assert await store.holders(key, now=T0 + 200) == 0
        finally:
            await store.close()
    run(go())


# ---- greylisting ------------------------------------------------------------------


def test_greylisting_delay_pass_and_expiry(backend):
    async def go():
        store = backend.store(greylisting=Greylisting(delay=300, lifetime=86400, keep=35 * 86400, allow_after=0))
        try:
            t = "192.0.2.0/24|alice@example.org|bob@example.net"
            first = await store.greylist(t, now=T0, client="192.0.2.0/24")
            assert first.verdict == "new" and first.retry_after == 300
            early = await store.greylist(t, now=T0 + 299, client="192.0.2.0/24")
            assert early.verdict == "wait" and early.retry_after == pytest.approx(1)
            assert (await store.greylist(t, now=T0 + 300, client="192.0.2.0/24")).verdict == "pass"
            assert (await store.greylist(t, now=T0 + 301, client="192.0.2.0/24")).verdict == "pass"
            # a passed triplet is kept for `keep` after its last pass (its expiry
            # written again when it would move by over an hour), then forgotten
            last = T0 + 300 + 7200
            assert (await store.greylist(t, now=last, client="192.0.2.0/24")).verdict == "pass"
            assert (await store.greylist(t, now=last + 35 * 86400 - 1, client="192.0.2.0/24")).verdict == "pass"
            assert (await store.greylist(t, now=last + 1 + 2 * 35 * 86400, client="192.0.2.0/24")).verdict == "new"
            # a pending triplet whose retry never came within `lifetime` starts over
            u = "192.0.2.0/24|carol@example.org|bob@example.net"
            assert (await store.greylist(u, now=T0, client="192.0.2.0/24")).verdict == "new"
            assert (await store.greylist(u, now=T0 + 86400 + 1, client="192.0.2.0/24")).verdict == "new"
            assert (await store.greylist(u, now=T0 + 86400 + 2, client="192.0.2.0/24")).verdict == "wait"
            # delay and lifetime per call
            v = "198.51.100.0/24|x@example.org|y@example.net"
            assert (await store.greylist(v, now=T0, delay=60)).verdict == "new"
            assert (await store.greylist(v, now=T0 + 60, delay=60)).verdict == "pass"
        finally:
            await store.close()
    run(go())


def test_greylisting_auto_allowlist(backend):
    async def go():
        store = backend.store(greylisting=Greylisting(delay=300, allow_after=3))
        try:
            client, now = "192.0.2.0/24", T0
            for i in range(3):
                t = f"{client}|s{i}@example.org|r@example.net"
                assert (await store.greylist(t, now=now, client=client)).verdict == "new"
                passed = await store.greylist(t, now=now + 300, client=client)
                assert passed.verdict == "pass" and not passed.allowlisted and passed.passes == i + 1
                now += 1000
            fresh = await store.greylist(f"{client}|new@example.org|r@example.net", now=now, client=client)
            assert fresh.verdict == "pass" and fresh.allowlisted
            other = await store.greylist("203.0.113.0/24|new@example.org|r@example.net", now=now,
                                         client="203.0.113.0/24")
            assert other.verdict == "new"
            # the allowlist is forgotten `keep` after its last use
            late = await store.greylist(f"{client}|later@example.org|r@example.net", now=now + 36 * 86400,
                                        client=client)
            assert late.verdict == "new"
        finally:
            await store.close()
    run(go())


def test_a_pass_within_the_hour_writes_nothing(backend):
    """GREY_REFRESH: a passed triplet's expiry moves only when it would move
    by more than an hour, and with the auto-allowlist off no pass count is
    kept (nothing reads it)."""
    async def go():
        keep = 35 * 86400
        store = backend.store(greylisting=Greylisting(delay=0, keep=keep, allow_after=0))
        try:
            t, client = "192.0.2.0/24|a@example.org|b@example.net", "192.0.2.0/24"
            assert (await store.greylist(t, now=T0, client=client)).verdict == "new"
            first = await store.greylist(t, now=T0 + 1, client=client)
            again = await store.greylist(t, now=T0 + 1 + GREY_REFRESH - 60, client=client)
            assert first.verdict == again.verdict == "pass" and first.passes == again.passes == 0
            # kept `keep` after the pass that wrote, not after the later one
            gone = await store.greylist(t, now=T0 + 1 + keep + 30, client=client)
            assert gone.verdict == "new"
        finally:
            await store.close()
    run(go())


def test_restart_keeps_the_greylist(backend):
    """SQLite: the file is opened again; Redis: the server keeps it, a new
    client (a restarted smtpfw) sees it."""
    t = "192.0.2.0/24|alice@example.org|bob@example.net"

    async def before():
        store = backend.store()
        return await closing(store, store.greylist(t, now=T0, client="192.0.2.0/24"))

    async def after():
        store = backend.store()
        try:
            return (await store.greylist(t, now=T0 + 100, client="192.0.2.0/24"),
                    await store.greylist(t, now=T0 + 400, client="192.0.2.0/24"))
        finally:
            await store.close()

    assert run(before()).verdict == "new"
    wait, passed = run(after())
    assert wait.verdict == "wait" and wait.retry_after == pytest.approx(200)
    assert passed.verdict == "pass"


# ---- key-value -----------------------------------------------------------------------


def test_key_value_with_ttl(backend):
    async def go():
        store = backend.store()
        try:
            assert (await store.get("pregreet:192.0.2.1", now=T0)).value is None
            assert (await store.set("pregreet:192.0.2.1", "pass", 3600, now=T0)).ok
            assert (await store.get("pregreet:192.0.2.1", now=T0 + 3599)).value == "pass"
            assert (await store.get("pregreet:192.0.2.1", now=T0 + 3600)).value is None
            assert (await store.incr("karma:bad:192.0.2.1", ttl=600, now=T0)).value == 1
            assert (await store.incr("karma:bad:192.0.2.1", 2, ttl=600, now=T0 + 500)).value == 3
            # every change renews the TTL: still there 600 s after the last one
            assert (await store.get("karma:bad:192.0.2.1", now=T0 + 1099)).value == "3"
            assert (await store.incr("karma:bad:192.0.2.1", ttl=600, now=T0 + 1100)).value == 1
            assert (await store.incr("karma:score", -0.5, ttl=60, now=T0)).value == -0.5
            assert (await store.delete("karma:score")).ok
            assert (await store.get("karma:score", now=T0)).value is None
        finally:
            await store.close()
    run(go())


# ---- failures -------------------------------------------------------------------------


def test_unavailable_within_timeout_breaker_and_recovery(backend):
    async def go():
        store = backend.store(timeout=0.3, failures=2, cooldown=5.0)
        clock = [0.0]
        store.breaker.clock = lambda: clock[0]                          # the cooldown passes by hand
        try:
            assert (await store.hit("k", [Bucket(5, 60)], now=T0)).available
            with backend.outage():
                for _ in range(2):
                    start = time.monotonic()
                    r = await store.hit("k", [Bucket(5, 60)], now=T0)
                    took = time.monotonic() - start
                    assert not r.available and "unavailable" in r.reason and took < 0.3 + 0.4
                    assert r.allowed                                   # the result of a fail-open default
                    g = await store.greylist("t", now=T0)
                    assert not g.available
                # the breaker is open: answered at once, without asking
                assert store.breaker.state == "open"
                start = time.monotonic()
                r = await store.hit("k", [Bucket(5, 60)], now=T0)
                assert not r.available and "circuit open" in r.reason and time.monotonic() - start < 0.05
                # every unavailable answer is the fail-open one, marked unavailable
                slot = await store.acquire("c", 1, 60, now=T0, holder="h")
                assert slot.acquired and not slot.available
                assert (await store.get("v", now=T0)).value is None
            # back: after the cooldown one trial closes the breaker
            clock[0] += 4.9
            assert not (await store.hit("k", [Bucket(5, 60)], now=T0)).available
            clock[0] += 0.1
            r = await store.hit("k", [Bucket(5, 60)], now=T0)
            assert r.available and r.allowed
            # a hit that timed out may still have been done (Redis runs what
            # it had received when it wakes up): "unavailable" means "unknown"
            assert r.counts[0] in (pytest.approx(2.0), pytest.approx(3.0))
            assert store.breaker.state == "closed"
            stats = store.describe_stats()
            assert stats["hit"]["failures"] == 1 and stats["hit"]["shed"] == 3
        finally:
            await store.close()
    run(go())


def test_redis_killed_mid_run_and_restarted(redis_server):
    """The server is gone (connections refused) and comes back on its port."""
    server = RedisInstance()
    server.start()
    try:
        async def go():
            store = open_store(server.url, timeout=0.3, failures=1, cooldown=0.2)
            try:
                assert (await store.set("x", "1", 60, now=T0)).ok
                server.kill()
                start = time.monotonic()
                r = await store.hit("k", [Bucket(5, 60)], now=T0)
                assert not r.available and time.monotonic() - start < 0.3 + 0.4
                g = await store.greylist("t", now=T0)
                assert not g.available and g.verdict == "pass"
                server.start()

                async def answers():
                    return (await store.hit("k", [Bucket(5, 60)], now=T0)).available
                deadline = time.monotonic() + 10
                while not await answers():
                    assert time.monotonic() < deadline, "the store did not recover"
                    await asyncio.sleep(0.05)
                assert (await store.get("x", now=T0)).value is None      # this server keeps nothing on disk
                assert (await store.greylist("t", now=T0)).verdict == "new"
            finally:
                await store.close()
        run(go())
    finally:
        server.__exit__(None, None, None)


def test_redis_keys_are_hash_tagged_and_expire(redis_server):
    import redis as redis_py
    client = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()

    async def go():
        store = open_store(redis_server.url)
        try:
            await store.hit("ip:192.0.2.1", [Bucket(20, 60)], now=time.time())
            await store.acquire("ip:192.0.2.1", 5, 300, now=time.time(), holder="s")
            await store.greylist("net|a|b", now=time.time(), client="net")
            await store.set("pass:x", "1", 600, now=time.time())
            await store.incr("karma:{odd}", ttl=600, now=time.time())
        finally:
            await store.close()
    run(go())
    keys = sorted(client.keys("*"))
    assert keys == ["smtpfw:c:{ip:192.0.2.1}", "smtpfw:g:{net}:net|a|b", "smtpfw:k:{karma:(odd)}",
                    "smtpfw:k:{pass:x}", "smtpfw:r:{ip:192.0.2.1}"]
    for key in keys:
        assert 0 < client.pttl(key), key
    assert client.pttl("smtpfw:r:{ip:192.0.2.1}") <= 60_000 / 20 + 1000
    assert client.pttl("smtpfw:g:{net}:net|a|b") <= 2 * 86400 * 1000 + 1000


def test_sqlite_is_wal_and_purges(tmp_path):
    async def go():
        store = open_store(str(tmp_path / "s.db"), purge_every=0)
        try:
            for i in range(50):
                await store.set(f"k{i}", "v", 10, now=T0)
                await store.hit(f"r{i}", [Bucket(10, 60)], now=T0)
            deleted = await store.backend.purge(T0 + 61)                 # type: ignore[attr-defined]
            assert deleted == 100
        finally:
            await store.close()
    run(go())
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 0


def test_sqlite_calls_leave_the_event_loop_free(tmp_path):
    """While SQLite waits for a lock, other tasks keep running."""
    path = tmp_path / "s.db"

    async def go():
        store = open_store(str(path), timeout=1.0)
        try:
            await store.ping()
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)
            task = asyncio.get_running_loop().create_task(ticker())
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, lambda: (conn.execute("ROLLBACK"), conn.close()))
            r = await store.hit("k", [Bucket(1, 60)], now=T0)
            task.cancel()
            return r, ticks
        finally:
            await store.close()

    # busy_timeout is the store's timeout (1 s): the writer lets go at 0.3 s
    r, ticks = run(go())
    assert r.available and r.allowed
    assert ticks >= 10


def test_redis_cluster_runs_every_operation(redis_server):
    """Three masters: every script's keys share a hash tag (a CROSSSLOT
    error would say otherwise), and the keys spread over the nodes."""
    import redis as redis_py
    with RedisClusterInstances() as cluster:
        async def go():
            store = open_store(cluster.url, timeout=2.0)
            try:
                for i in range(30):
                    ip = f"192.0.2.{i}"
                    assert (await store.hit(f"ip:{ip}", [Bucket(2, 60), Bucket(5, 3600)], now=T0)).allowed
                    assert (await store.peek(f"ip:{ip}", [Bucket(2, 60)], now=T0)).counts == pytest.approx((1.0,))
                    assert (await store.acquire(f"ip:{ip}", 1, 60, now=T0, holder="a")).acquired
                    assert not (await store.acquire(f"ip:{ip}", 1, 60, now=T0, holder="b")).acquired
                    assert await store.holders(f"ip:{ip}", now=T0) == 1
                    assert (await store.release(f"ip:{ip}", "a")).ok
                    net = f"198.51.{i}.0/24"
                    assert (await store.greylist(f"{net}|s@x|r@y", now=T0, client=net)).verdict == "new"
                    passed = await store.greylist(f"{net}|s@x|r@y", now=T0 + 300, client=net)
                    assert passed.verdict == "pass" and passed.passes == 1
                    assert (await store.greylist(f"{net}|no-client", now=T0)).verdict == "new"
                    assert (await store.set(f"pass:{ip}", "ok", 60, now=T0)).ok
                    assert (await store.get(f"pass:{ip}", now=T0)).value == "ok"
                    assert (await store.incr(f"n:{ip}", 2, 60, now=T0)).value == 2
                    assert (await store.delete(f"n:{ip}")).ok
                assert all(s.failures == 0 for s in store.stats.values()), store.describe_stats()
            finally:
                await store.close()
        run(go())
        sizes = [redis_py.Redis(port=n.port).dbsize() for n in cluster.nodes]
        assert all(size > 0 for size in sizes), sizes


def test_sqlite_in_memory_for_replay():
    """":memory:" (what dry-run will use): empty at start, private, the same answers."""
    async def go():
        a, b = open_store(":memory:"), open_store(":memory:")
        try:
            assert [(await a.hit("k", [Bucket(2, 60)], now=T0)).allowed for _ in range(3)] == [True, True, False]
            assert (await b.hit("k", [Bucket(2, 60)], now=T0)).counts == pytest.approx((1.0,))
            assert (await a.greylist("t", now=T0)).verdict == "new"
            assert (await a.greylist("t", now=T0 + 300)).verdict == "pass"
        finally:
            await a.close()
            await b.close()
    run(go())
