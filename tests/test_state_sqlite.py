"""The embedded state store's own behaviour (smtpfw/state/sqlite.py): its
operations run on the event loop's thread yet never block it, writes asked
in one turn of the loop share one transaction, WAL checkpoints and purges
run in the store's upkeep thread, and ":memory:" works as replay drives it.

The suite every back end passes is tests/test_state_store.py.  Other
processes are real (a Python child holding the write lock); clocks are
passed in, as there.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import smtpfw.state.sqlite as sqlite_mod
from smtpfw.state import Bucket, open_store
from smtpfw.state.sqlite import SqliteBackend, StoreClosed

T0 = 1_790_000_000.0

# another process (another smtpfw worker) takes the write lock and keeps it
HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("let go", flush=True)
"""


class Holder:
    """A child process holding the database's write lock for ``seconds``."""

    def __init__(self, path, seconds: float):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"
        self.since = time.monotonic()

    def wait(self) -> None:
        self.proc.wait(10)


class Ticker:
    """A task that ticks every 2 ms and notes the longest gap between ticks:
    how long the loop was kept from running it."""

    def __init__(self):
        self.ticks = 0
        self.longest = 0.0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.002)
            now = time.monotonic()
            self.ticks += 1
            self.longest = max(self.longest, now - last)
            last = now

    def stop(self) -> None:
        self.task.cancel()


def test_a_write_lock_held_by_another_process_never_blocks_the_loop(tmp_path):
    path = tmp_path / "s.db"

    async def go():
        store = open_store(str(path), timeout=1.0)
        try:
            await store.ping()
            # held for 0.15 s: the operation waits (asyncio.sleep), then succeeds
            holder = Holder(path, 0.15)
            ticker = Ticker()
            r = await store.hit("k", [Bucket(5, 60)], now=T0)
            waited = time.monotonic() - holder.since
            ticker.stop()
            holder.wait()
            assert r.available and r.allowed and r.counts == pytest.approx((1.0,))
            assert waited >= 0.12
            # the loop ran all along: a blocking wait would be one gap of the
            # whole 0.15 s and no ticks while the operation waited
            assert ticker.ticks >= 15 and ticker.longest < 0.12, (ticker.ticks, ticker.longest)
        finally:
            await store.close()

        # held past the store's timeout: the operation fails within it, the
        # store fails open (the hit is allowed, marked unavailable)
        store = open_store(str(path), timeout=0.3)
        try:
            await store.ping()
            holder = Holder(path, 1.0)
            ticker = Ticker()
            start = time.monotonic()
            r = await store.hit("k", [Bucket(5, 60)], now=T0)
            took = time.monotonic() - start
            ticker.stop()
            assert not r.available and r.allowed and "unavailable" in r.reason
            assert 0.25 <= took < 0.3 + 0.4
            assert ticker.ticks >= 30 and ticker.longest < 0.2, (ticker.ticks, ticker.longest)
            holder.wait()
            # the lock gone, the store answers again (the one failure did not open the breaker)
            assert (await store.hit("k", [Bucket(5, 60)], now=T0)).counts == pytest.approx((2.0,))
        finally:
            await store.close()
    asyncio.run(go())


def test_writes_of_one_turn_share_a_transaction_and_a_failing_one_rolls_back_alone(tmp_path):
    path = tmp_path / "s.db"

    def fails(c, key):
        c.execute("INSERT INTO kv (key, value, expires) VALUES (?, 'x', ?)", (key, T0 + 60))
        raise ValueError("this operation fails after writing")

    async def go():
        backend = SqliteBackend(path)
        try:
            await backend.ping()
            out = await asyncio.gather(backend.set("a", "1", 60, T0),        # the turn's first write: at once
                                       backend.set("b", "2", 60, T0),        # the others: one transaction
                                       backend._write(fails, ("bad",), T0),
                                       backend.incr("c", 3, 60, T0),
                                       return_exceptions=True)
            assert isinstance(out[2], ValueError)
            assert out[1].ok and out[3].value == 3
            assert (backend.group_commits, backend.grouped) == (1, 3)
            assert (await backend.get("bad", T0)).value is None           # rolled back alone
            assert [(await backend.get(k, T0)).value for k in "abc"] == ["1", "2", "3"]
        finally:
            await backend.close()
    asyncio.run(go())
    # committed, as seen by another connection
    conn = sqlite3.connect(path)
    assert dict(conn.execute("SELECT key, value FROM kv").fetchall()) == {"a": "1", "b": "2", "c": "3"}
    conn.close()


def test_without_group_commit_each_write_is_its_own_transaction(tmp_path):
    async def go():
        backend = SqliteBackend(tmp_path / "s.db", group_commit=False)
        try:
            out = await asyncio.gather(*(backend.set(f"k{i}", "v", 60, T0) for i in range(5)))
            assert all(d.ok for d in out) and backend.group_commits == 0
        finally:
            await backend.close()
    asyncio.run(go())


def test_the_upkeep_thread_keeps_the_wal_bounded(tmp_path):
    """3,000 writes of new keys write tens of MB of WAL frames; the loop's
    connections never checkpoint (wal_autocheckpoint 0), the upkeep thread
    does, and truncates the WAL once it is over its limit."""
    async def write(path, **options):
        backend = SqliteBackend(path, **options)
        biggest = 0
        try:
            for n in range(300):
                await asyncio.gather(*(backend.set(f"key-{n}-{i}", "v" * 50, 3600, T0) for i in range(10)))
                await asyncio.sleep(0.001)                                  # a server waits for its clients
                biggest = max(biggest, os.path.getsize(f"{path}-wal"))
            lane = backend._lane()
            assert lane.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            assert backend.upkeep is not None
            return biggest, backend.upkeep.truncations
        finally:
            await backend.close()

    limit = 256 * 1024
    grown, _ = asyncio.run(write(tmp_path / "idle.db", checkpoint_interval=3600, wal_limit=limit))
    bounded, truncations = asyncio.run(write(tmp_path / "s.db", checkpoint_interval=0.01, wal_limit=limit))
    assert grown > 8 * 1024 * 1024                  # without the thread's checkpoints
    assert truncations >= 1
    assert bounded < 4 * limit + 1024 * 1024, bounded
    # the last connection closed: checkpointed, the WAL gone, nothing lost
    assert not os.path.exists(tmp_path / "s.db-wal")
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 3000
    conn.close()


def test_expired_rows_are_purged_in_the_upkeep_thread(tmp_path, monkeypatch):
    purged_in: list[str] = []
    original = sqlite_mod.purge_expired

    def purge_expired(conn, now, *args):
        purged_in.append(threading.current_thread().name)
        return original(conn, now, *args)
    monkeypatch.setattr(sqlite_mod, "purge_expired", purge_expired)

    async def go():
        backend = SqliteBackend(tmp_path / "s.db", purge_every=20)
        try:
            for i in range(20):                          # the 20th write asks for a purge: nothing expired yet
                await backend.set(f"old{i}", "v", 1, T0)
            for i in range(20):                          # the 40th: at T0 + 10, the first 20 have expired
                await backend.hit(f"new{i}", [Bucket(5, 60)], 1, T0 + 10, False)
            assert backend.upkeep is not None
            deadline = time.monotonic() + 10
            while backend.upkeep.purged < 20:                # (two purges, or one at the later clock)
                assert time.monotonic() < deadline, "no purge"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert backend.upkeep.purged == 20
            # asked for, it runs there too
            assert await backend.purge(T0 + 100) == 20
            return backend.upkeep.thread.name
        finally:
            await backend.close()
    upkeep = asyncio.run(go())
    assert len(purged_in) >= 2 and set(purged_in) == {upkeep} and upkeep != threading.current_thread().name
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM rate").fetchone()[0] == 0
    conn.close()


def test_one_connection_per_loop_and_limits_shared_exactly(tmp_path):
    """Two threads, a loop each, one back end: a connection per loop, and
    2 x 25 simultaneous hits on a limit of 30 pass exactly 30.  (A Store is
    used from one loop; its back end may be used from several.)"""
    backend = SqliteBackend(tmp_path / "s.db", busy_timeout=5.0)
    together = threading.Barrier(2)
    allowed: list[int] = []

    def run() -> None:
        async def go():
            await backend.ping()
            together.wait(10)                          # both loops and their connections exist
            out = await asyncio.gather(*(backend.hit("global", (Bucket(30, 3600),), 1, T0, False)
                                         for _ in range(25)))
            allowed.append(sum(r.allowed for r in out))
        asyncio.run(go())
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len({id(lane.conn) for lane in backend._lanes.values()}) == 2
    assert sum(allowed) == 30

    async def again():
        # a new loop: the ended loops' connections are let go, this one has its own
        assert (await backend.peek("global", (Bucket(30, 3600),), T0)).counts == pytest.approx((30.0,))
        assert len(backend._lanes) == 1
        await backend.close()
    asyncio.run(again())


def test_close_waits_for_operations_in_flight_then_refuses(tmp_path):
    path = tmp_path / "s.db"

    async def go():
        backend = SqliteBackend(path, busy_timeout=2.0)
        await backend.ping()
        holder = Holder(path, 0.15)
        hit = asyncio.ensure_future(backend.hit("k", [Bucket(5, 60)], 1, T0, False))
        await asyncio.sleep(0.02)                               # the hit waits for the lock
        await backend.close()
        assert hit.done() and hit.result().allowed               # done before close returned
        holder.wait()
        with pytest.raises(StoreClosed):
            await backend.get("k", T0)
        assert backend.upkeep is not None
        backend.upkeep.thread.join(5)                           # it ends right after saying so
        assert not backend.upkeep.thread.is_alive()
    asyncio.run(go())


def test_memory_as_replay_drives_it():
    """smtpfw/replay/session.py opens ":memory:" outside any loop, then runs
    each session with run_until_complete on a loop of its own, and closes it
    on that loop.  No upkeep thread, one private database."""
    threads = threading.active_count()
    store = open_store(":memory:", timeout=30.0)
    backend = store.backend
    assert isinstance(backend, SqliteBackend) and backend.upkeep is None
    assert threading.active_count() == threads
    loop = asyncio.new_event_loop()
    try:
        hits = [loop.run_until_complete(store.hit("k", [Bucket(2, 60)], now=T0)) for _ in range(3)]
        assert [r.allowed for r in hits] == [True, True, False] and all(r.available for r in hits)
        assert loop.run_until_complete(store.greylist("t", now=T0)).verdict == "new"
        assert loop.run_until_complete(store.greylist("t", now=T0 + 300)).verdict == "pass"
        # a fresh store is another, empty database
        other = open_store(":memory:")
        assert loop.run_until_complete(other.get("k", now=T0)).value is None
        loop.run_until_complete(other.close())
        loop.run_until_complete(store.close())
    finally:
        loop.close()

    # without any loop (a coroutine driven by hand) the back end answers at once
    backend = SqliteBackend(":memory:", purge_every=2)
    coro = backend.hit("k", (Bucket(2, 60),), 1, T0, False)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value.allowed
    for i in range(3):                                          # its purge (every 2nd write) runs right there
        coro = backend.set(f"v{i}", "x", 1, T0 + 10 * i)
        with pytest.raises(StopIteration):
            coro.send(None)
    assert backend._memory.execute("SELECT key FROM kv").fetchall() == [("v2",)]
    asyncio.run(backend.close())
