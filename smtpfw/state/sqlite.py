"""The embedded state store: one SQLite file shared by all workers of a host.

WAL mode (readers do not wait for the writer), ``synchronous=NORMAL`` (a
crash of smtpfw loses nothing; a power cut may lose the last transactions),
each operation one ``BEGIN IMMEDIATE`` transaction (the write lock is taken
first, so a check-and-increment is never read-then-write across processes),
``busy_timeout`` for the wait on another writer.  SQLite calls block, so
they run in a small pool of threads, one connection per thread, and the
event loop only awaits them.

``:memory:`` is a private database that starts empty and is gone at
``close`` (dry-run and trace; a copy of a live file is a snapshot to
start from).  Everything lives in the file, so everything survives a restart (rate
windows too: they are only seconds to hours long, and keeping them is
harmless).  Rows carry their expiry (by the caller's clock); expired rows
are ignored at once and deleted every ``purge_every`` writes.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from smtpfw.state.store import Bucket, Done, GreyResult, Greylisting, RateResult, SlotResult, Value, gcra, levels

SCHEMA = """
CREATE TABLE IF NOT EXISTS rate  (key TEXT NOT NULL, bucket TEXT NOT NULL, tat REAL NOT NULL,
                                  expires REAL NOT NULL, PRIMARY KEY (key, bucket));
CREATE TABLE IF NOT EXISTS slot  (key TEXT NOT NULL, holder TEXT NOT NULL, expires REAL NOT NULL,
                                  PRIMARY KEY (key, holder));
CREATE TABLE IF NOT EXISTS grey  (key TEXT PRIMARY KEY, first REAL NOT NULL, last REAL NOT NULL,
                                  passed INTEGER NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS greyclient (key TEXT PRIMARY KEY, passes INTEGER NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kv    (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_expires ON rate (expires);
CREATE INDEX IF NOT EXISTS slot_expires ON slot (expires);
CREATE INDEX IF NOT EXISTS grey_expires ON grey (expires);
CREATE INDEX IF NOT EXISTS greyclient_expires ON greyclient (expires);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires);
"""
TABLES = ("rate", "slot", "grey", "greyclient", "kv")

T = TypeVar("T")


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: str | os.PathLike, *, threads: int = 4, busy_timeout: float = 0.2,
                 purge_every: int = 1000):
        """``busy_timeout``: how long one operation waits for another
        process's write lock before it fails (keep it at or under the
        store's timeout, so a stuck thread does not outlive its caller)."""
        self.memory = str(path) == ":memory:"      # for dry-run: empty, private, gone at close
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.purge_every = purge_every
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writes = 0
        # ":memory:" is one database per connection: one thread, one connection
        self._pool = ThreadPoolExecutor(max_workers=1 if self.memory else threads, thread_name_prefix="smtpfw-state")
        if not self.memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # the schema now (a bad path fails at start, not per session), in
        # the pool's thread: a ":memory:" database is its connection's
        self._pool.submit(self._retry, self._conn).result()

    # ---- plumbing -----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # busy_timeout 0: waits for another writer are ours (_retry),
            # with short, jittered pauses: SQLite's busy handler sleeps 1,
            # 2, 5, 10 ... 100 ms, which under contention makes the slowest
            # operations tens of milliseconds late for a lock held for a
            # few hundred microseconds
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                if not self._has_schema(conn):
                    conn.executescript(SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @staticmethod
    def _has_schema(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kv'").fetchone()[0] > 0

    def _retry(self, fn: Callable[[], T]) -> T:
        """``fn()``, again while the database is locked by another
        writer, for up to ``busy_timeout`` seconds."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.0001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(left, pause * (0.5 + random.random())))
                pause = min(pause * 2, 0.002)

    def _immediate(self, conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")             # locked: _run tries the whole operation again
        try:
            result = body(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread of the pool; a read that finds the
        database locked (rare in WAL mode) is tried again like a write."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._retry, lambda: fn(*args))

    def _write(self, body: Callable[[sqlite3.Connection], T], now: float) -> T:
        conn = self._conn()
        result = self._immediate(conn, body)
        self._writes += 1
        if self.purge_every and self._writes % self.purge_every == 0:
            self._purge(conn, now)
        return result

    def _purge(self, conn: sqlite3.Connection, now: float) -> int:
        def body(c: sqlite3.Connection) -> int:
            return sum(c.execute(f"DELETE FROM {t} WHERE expires <= ?", (now,)).rowcount for t in TABLES)
        return self._immediate(conn, body)

    async def purge(self, now: float) -> int:
        """Delete every expired row now (it is also done every
        ``purge_every`` writes); the number deleted."""
        return await self._run(lambda: self._purge(self._conn(), now))

    # ---- rate limits --------------------------------------------------------

    def _tats(self, c: sqlite3.Connection, key: str, buckets: Sequence[Bucket], now: float) -> list[float]:
        rows = dict(c.execute("SELECT bucket, tat FROM rate WHERE key = ? AND expires > ?", (key, now)).fetchall())
        return [rows.get(b.name, 0.0) for b in buckets]

    def _hit(self, key: str, buckets: Sequence[Bucket], cost: float, now: float, force: bool) -> RateResult:
        def body(c: sqlite3.Connection) -> RateResult:
            tats = self._tats(c, key, buckets, now)
            allowed, new, counts, retry = gcra(buckets, tats, cost, now, force)
            if allowed or force:
                c.executemany("INSERT OR REPLACE INTO rate (key, bucket, tat, expires) VALUES (?, ?, ?, ?)",
                              [(key, b.name, t, t) for b, t in zip(buckets, new)])
            return RateResult(allowed, counts, retry, tuple(b.limit for b in buckets))
        return self._write(body, now)

    async def hit(self, key: str, buckets: Sequence[Bucket], cost: float, now: float, force: bool) -> RateResult:
        return await self._run(self._hit, key, buckets, cost, now, force)

    def _peek(self, key: str, buckets: Sequence[Bucket], now: float) -> RateResult:
        tats = self._tats(self._conn(), key, buckets, now)
        allowed, _new, _counts, retry = gcra(buckets, tats, 1, now)
        return RateResult(allowed, levels(buckets, tats, now), retry, tuple(b.limit for b in buckets))

    async def peek(self, key: str, buckets: Sequence[Bucket], now: float) -> RateResult:
        return await self._run(self._peek, key, buckets, now)

    # ---- concurrency --------------------------------------------------------

    def _acquire(self, key: str, limit: int, ttl: float, now: float, holder: str) -> SlotResult:
        def body(c: sqlite3.Connection) -> SlotResult:
            c.execute("DELETE FROM slot WHERE key = ? AND expires <= ?", (key, now))
            mine = c.execute("SELECT 1 FROM slot WHERE key = ? AND holder = ?", (key, holder)).fetchone()
            held = c.execute("SELECT count(*) FROM slot WHERE key = ?", (key,)).fetchone()[0]
            if mine is None and held >= limit:
                return SlotResult(False, held)
            c.execute("INSERT OR REPLACE INTO slot (key, holder, expires) VALUES (?, ?, ?)", (key, holder, now + ttl))
            return SlotResult(True, held if mine else held + 1)
        return self._write(body, now)

    async def acquire(self, key: str, limit: int, ttl: float, now: float, holder: str) -> SlotResult:
        return await self._run(self._acquire, key, limit, ttl, now, holder)

    def _release(self, key: str, holder: str) -> Done:
        def body(c: sqlite3.Connection) -> Done:
            return Done(c.execute("DELETE FROM slot WHERE key = ? AND holder = ?", (key, holder)).rowcount > 0)
        return self._immediate(self._conn(), body)

    async def release(self, key: str, holder: str) -> Done:
        return await self._run(self._release, key, holder)

    async def holders(self, key: str, now: float) -> int:
        def read() -> int:
            q = "SELECT count(*) FROM slot WHERE key = ? AND expires > ?"
            return int(self._conn().execute(q, (key, now)).fetchone()[0])
        return await self._run(read)

    # ---- greylisting --------------------------------------------------------

    def _greylist(self, triplet: str, client: str, g: Greylisting, now: float) -> GreyResult:
        def body(c: sqlite3.Connection) -> GreyResult:
            passes = 0
            if client:
                row = c.execute("SELECT passes FROM greyclient WHERE key = ? AND expires > ?", (client, now)).fetchone()
                passes = row[0] if row else 0
                if g.allow_after and passes >= g.allow_after:
                    c.execute("UPDATE greyclient SET expires = ? WHERE key = ?", (now + g.keep, client))
                    return GreyResult("pass", 0.0, True, passes)
            row = c.execute("SELECT first, passed FROM grey WHERE key = ? AND expires > ?", (triplet, now)).fetchone()
            if row is None:
                c.execute("INSERT OR REPLACE INTO grey (key, first, last, passed, expires) VALUES (?, ?, ?, 0, ?)",
                          (triplet, now, now, now + g.lifetime))
                return GreyResult("new", g.delay, False, passes)
            first, passed = row
            if not passed and now - first < g.delay:
                return GreyResult("wait", first + g.delay - now, False, passes)
            c.execute("UPDATE grey SET last = ?, passed = 1, expires = ? WHERE key = ?", (now, now + g.keep, triplet))
            if client:
                passes += 1
                c.execute("INSERT OR REPLACE INTO greyclient (key, passes, expires) VALUES (?, ?, ?)",
                          (client, passes, now + g.keep))
            return GreyResult("pass", 0.0, False, passes)
        return self._write(body, now)

    async def greylist(self, triplet: str, client: str, g: Greylisting, now: float) -> GreyResult:
        return await self._run(self._greylist, triplet, client, g, now)

    # ---- key-value ----------------------------------------------------------

    async def get(self, key: str, now: float) -> Value:
        def read() -> Value:
            row = self._conn().execute("SELECT value FROM kv WHERE key = ? AND expires > ?", (key, now)).fetchone()
            return Value(row[0] if row else None)
        return await self._run(read)

    async def set(self, key: str, value: str, ttl: float, now: float) -> Done:
        def body(c: sqlite3.Connection) -> Done:
            c.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)", (key, value, now + ttl))
            return Done()
        return await self._run(self._write, body, now)

    async def incr(self, key: str, amount: float, ttl: float, now: float) -> Value:
        def body(c: sqlite3.Connection) -> Value:
            row = c.execute("SELECT value FROM kv WHERE key = ? AND expires > ?", (key, now)).fetchone()
            number = _number(row[0] if row else None) + amount
            c.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                      (key, _text(number), now + ttl))
            return Value(number)
        return await self._run(self._write, body, now)

    async def delete(self, key: str) -> Done:
        def body(c: sqlite3.Connection) -> Done:
            return Done(c.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0)
        return await self._run(lambda: self._immediate(self._conn(), body))

    # ---- the service --------------------------------------------------------

    async def ping(self) -> None:
        await self._run(lambda: self._conn().execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Wait for the operations in flight (each bounded by
        ``busy_timeout``) off the event loop, then close the connections."""
        def close_all() -> None:
            self._pool.shutdown(wait=True)
            with self._lock:
                for conn in self._conns:
                    conn.close()
                self._conns.clear()
        await asyncio.to_thread(close_all)


def _number(text: str | None) -> float:
    if text is None:
        return 0.0
    try:
        return float(text)
    except ValueError:
        return 0.0


def _text(number: float) -> str:
    return str(int(number)) if number == int(number) else repr(number)
