"""The embedded state store: one SQLite file shared by all workers of a host.

WAL mode (readers do not wait for the writer), ``synchronous=NORMAL`` (a
crash of smtpfw loses nothing; a power cut may lose the last transactions),
each operation one ``BEGIN IMMEDIATE`` transaction (the write lock is taken
first, so a check-and-increment is never read-then-write across processes).

**On the event loop's thread.**  An operation is a few SQL statements on
pages in memory (about 50 µs): it runs right where it is asked, on a
connection of the running event loop's own (one per loop, made at its first
operation), not in a thread pool, whose hand-off cost several times the
work.  The connection never waits for a lock inside SQLite (its timeout is
0): when another process (another worker) holds the write lock, the
operation is tried again after a short, jittered pause (0.1 to 2 ms: an
``asyncio.sleep``, or for the writes of a group commit a ``call_later``)
until ``busy_timeout``, so a busy file delays that operation, never the
loop.  Without a running loop (a coroutine driven by hand) the same retry
sleeps in ``time.sleep``: there is no loop to block.  Reads (``peek``,
``get``, ``holders``) are single statements, outside any transaction.

**Group commit** (``group_commit=True``, the default).  The first write
asked in a turn of the loop runs at once, in a transaction of its own; the
writes asked after it in the same turn, and those that find the database
locked, wait for the next turn and then share one ``BEGIN IMMEDIATE`` ...
``COMMIT``, each in a ``SAVEPOINT`` of its own (one that fails is rolled
back alone, the others commit), every result given after the ``COMMIT``.
Each operation stays atomic (the write lock is held across all of them);
they share the transaction's fixed cost, most of a small operation's: the
lock, and the WAL frames of the pages they all touch (a greylisting triplet
and its indexes are written once for the turn, not once per session).  A
lone write waits for nothing; the ones that wait, a turn of the loop.
Measured (docs/state.md, "Performance"): 0.03-0.13 ms of CPU less a
message at 20 and 100 sessions on two workers, and half the CPU per
operation with 10 writes a turn in each of two processes.

**Nothing slow on the loop.**  The loop's connections never checkpoint the
WAL (``wal_autocheckpoint = 0``): with ``synchronous=NORMAL`` a commit does
not fsync, so the only fsyncs are a checkpoint's.  A thread of the store's
own (*upkeep*), on a connection of its own, runs ``wal_checkpoint(PASSIVE)``
every ``checkpoint_interval`` seconds in which something was written, and
deletes the expired rows (every ``purge_every`` writes, in chunks of
``PURGE_CHUNK`` rows, each a transaction of its own so the write lock is
never held for long).

**The WAL's size is bounded.**  A passive checkpoint never takes the write
lock, so it cannot finish while writers keep appending (the usual case
under load: frames arrive while it copies), and the WAL only starts again
from its beginning once a checkpoint has copied everything.  So when the
``-wal`` file is over ``wal_limit`` bytes the upkeep thread runs
``wal_checkpoint(TRUNCATE)``: it holds the write lock (writers wait for it
as for any writer, with ``asyncio.sleep``) while it copies the frames left
after the passive one, waits at most ``CHECKPOINT_WAIT`` for readers, syncs
and truncates the file to 0.  The file stays under about ``wal_limit`` plus
what is written in one ``checkpoint_interval``.  If it cannot (a reader of
another process keeps an old snapshot open for long: a backup, a ``sqlite3``
shell in a transaction), the truncation is tried again with a growing pause
(up to ``CHECKPOINT_BACKOFF_MAX``), a warning is logged at most once a
minute, and the WAL grows meanwhile: writes go on, reads get a little
slower, the disk fills; everything is checkpointed once the reader is gone.
TRUNCATE is kept for that bound and not used otherwise: it stalls every
worker's writes while it runs, and when the load leaves gaps a passive
checkpoint completes and the next write starts the WAL over anyway.

``:memory:`` is a private database that starts empty and is gone at
``close`` (dry-run, trace and ``smtpfw test``; a copy of a live file is a
snapshot to start from).  It is one connection (an in-memory database is
its connection's), used from one thread at a time, with no upkeep thread:
no WAL, and its purge runs where the write that calls for it runs.
Everything in a file survives a restart (rate windows too: they are only
seconds to hours long, and keeping them is harmless).  Rows carry their
expiry (by the caller's clock); expired rows are ignored at once and
deleted every ``purge_every`` writes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import random
import sqlite3
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from smtpfw.state.store import (GREY_REFRESH, Bucket, Done, GreyResult, Greylisting, RateResult, SlotResult, Value,
                                 gcra, levels)

log = logging.getLogger("smtpfw.state")

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

PAUSE_MIN, PAUSE_MAX = 0.0001, 0.002   # the retry's pauses while another process writes (doubling, jittered)
PURGE_CHUNK = 256                       # expired rows deleted per transaction (each about 1 ms of write lock)
PURGE_LOCK_WAIT = 1.0                   # the upkeep thread's wait for the write lock, per purge chunk
CHECKPOINT_WAIT = 0.02                  # a truncating checkpoint's wait for readers (writers wait meanwhile)
CHECKPOINT_BACKOFF_MAX = 10.0           # the longest pause between truncations that could not finish
WARN_EVERY = 60.0

_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

T = TypeVar("T")
Body = Callable[..., Any]               # body(conn, *args): the statements of one operation


def _stale(expires: float, wanted: float) -> bool:
    """Whether an entry's expiry is worth writing again (GREY_REFRESH)."""
    return wanted - expires > GREY_REFRESH


class StoreClosed(RuntimeError):
    pass


def _busy(err: sqlite3.OperationalError) -> bool:
    """The database is locked by another connection: worth trying again."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(err) or "busy" in str(err)


def _connect(path: str, timeout: float) -> sqlite3.Connection:
    """A connection that never checkpoints by itself (the upkeep thread does)."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        conn.close()
        raise
    return conn


def transaction(conn: sqlite3.Connection, body: Body, args: tuple) -> Any:
    """``body(conn, *args)`` as one ``BEGIN IMMEDIATE`` transaction; an
    ``OperationalError`` "locked" from BEGIN: nothing was done, try again."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def blocking_retry(fn: Callable[..., T], args: tuple, wait: float) -> T:
    """``fn(*args)``, again while another connection holds the lock, after
    short jittered pauses in ``time.sleep`` (the upkeep thread, or no event
    loop: nothing else waits), for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    pause = PAUSE_MIN
    while True:
        try:
            return fn(*args)
        except sqlite3.OperationalError as err:
            if not _busy(err) or time.monotonic() >= deadline:
                raise
        time.sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, PAUSE_MAX)


def purge_expired(conn: sqlite3.Connection, now: float, between: Callable[[], bool] = lambda: True,
                  lock_wait: float = 0.0) -> int:
    """Delete the rows expired at ``now``, ``PURGE_CHUNK`` per transaction
    (the write lock is never held for long; each waits up to ``lock_wait``
    for it), ``between()`` after each chunk (False: stop there); the number
    deleted."""
    total = 0
    for table in TABLES:
        delete = (f"DELETE FROM {table} WHERE rowid IN "
                  f"(SELECT rowid FROM {table} WHERE expires <= ? LIMIT {PURGE_CHUNK})")

        def chunk(c: sqlite3.Connection) -> int:
            return int(c.execute(delete, (now,)).rowcount)
        while True:
            n = blocking_retry(transaction, (conn, chunk, ()), lock_wait)
            total += n
            if not between():
                return total
            if n < PURGE_CHUNK:
                break
    return total


# ---- the upkeep thread: checkpoints and purges, off the event loop ----------------


class Upkeep:
    """The store's thread: ``wal_checkpoint(PASSIVE)`` every ``interval`` in
    which this process wrote, ``TRUNCATE`` when the ``-wal`` file is over
    ``wal_limit``, and the jobs it is given (purges), on a connection of its
    own.  It never touches the loops' connections but to close them at the
    end (``stop``).  It holds no reference to the back end: a back end
    dropped without ``close`` stops it (``weakref.finalize``)."""

    def __init__(self, conn: sqlite3.Connection, path: str, interval: float, wal_limit: int):
        self.conn = conn
        self.wal_path = path + "-wal"
        self.interval = interval
        self.wal_limit = wal_limit
        self.jobs: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Future] | None] = queue.SimpleQueue()
        self.writes = 0                   # this process's writes, counted by the back end
        self.purge_pending = False
        self.purge_at = -math.inf
        # what it did (tests, logs)
        self.checkpoints = 0
        self.truncations = 0
        self.truncations_failed = 0
        self.truncations_skipped = 0
        self.purges = 0
        self.purged = 0
        self.stopping = False
        self.stopped: Future[None] = Future()
        self.wal_max = 0                  # the largest -wal file seen
        self.last_error = ""
        self._seen_writes = 0
        self._next_checkpoint = time.monotonic() + interval
        self._backoff = 0.0
        self._failed_in_a_row = 0
        self._truncate_after = 0.0
        self._warned = -WARN_EVERY
        self._closing: list[sqlite3.Connection] = []
        self.thread = threading.Thread(target=self._run, name="smtpfw-state-upkeep", daemon=True)
        self.thread.start()

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> "Future[T]":
        fut: Future[T] = Future()
        self.jobs.put((job, fut))
        return fut

    def purge_soon(self, now: float) -> None:
        """A purge at ``now`` (the clock of the write that asked for it); one
        still waiting to run takes the later clock instead."""
        self.purge_at = max(self.purge_at, now)
        if self.purge_pending:
            return
        self.purge_pending = True

        def job(conn: sqlite3.Connection) -> int:
            self.purge_pending = False
            return self.purge(conn, self.purge_at)
        self.submit(job)

    def purge(self, conn: sqlite3.Connection, now: float) -> int:
        def between() -> bool:
            self._maybe_checkpoint()                # a long purge does not hold the checkpoints back
            return not self.stopping
        n = purge_expired(conn, now, between, PURGE_LOCK_WAIT)
        self.purges += 1
        self.purged += n
        return n

    def stop(self, conns: Sequence[sqlite3.Connection] = ()) -> "Future[None]":
        """Close ``conns`` (the loops', idle by now), then its own
        connection (the file's last: SQLite checkpoints and removes the
        WAL), in the thread; ``stopped`` is done when the thread ends."""
        self.stopping = True
        if not self.thread.is_alive():                 # ended already (dropped, or failed): close here
            for conn in conns:
                conn.close()
            return self.stopped
        self._closing = list(conns)
        self.jobs.put(None)
        return self.stopped

    def _run(self) -> None:
        try:
            while True:
                try:
                    job = self.jobs.get(timeout=max(0.0, self._next_checkpoint - time.monotonic()))
                except queue.Empty:
                    pass
                else:
                    if job is None:
                        break
                    self._do(*job)
                self._maybe_checkpoint()
        finally:
            self.stopping = True
            for conn in [*self._closing, self.conn]:    # its own last: SQLite checkpoints and removes the WAL
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            while True:                                 # nobody waits for ever on a job never run
                try:
                    left = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if left is not None and left[1].set_running_or_notify_cancel():
                    left[1].set_exception(StoreClosed("state store closed"))
            self.stopped.set_result(None)

    def _do(self, fn: Callable[[sqlite3.Connection], Any], fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = fn(self.conn)
        except BaseException as err:  # the job's own failure, given to whoever waits for it
            fut.set_exception(err)
            self._warn(f"upkeep: {type(err).__name__}: {err}")
        else:
            fut.set_result(result)

    def _maybe_checkpoint(self) -> None:
        clock = time.monotonic()
        if clock < self._next_checkpoint:
            return
        self._next_checkpoint = clock + self.interval
        try:
            self._checkpoint()
        except sqlite3.Error as err:
            self._warn(f"checkpoint failed: {err}")

    def _wal_size(self) -> int:
        try:
            size = os.stat(self.wal_path).st_size
        except OSError:
            return 0
        self.wal_max = max(self.wal_max, size)
        return size

    def _checkpoint(self) -> None:
        writes = self.writes
        if writes == self._seen_writes and self._wal_size() <= self.wal_limit:
            return                                  # nothing new from this process, nothing to bound
        self._seen_writes = writes
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        if self._wal_size() <= self.wal_limit or time.monotonic() < self._truncate_after:
            return
        # bounded: the write lock is held while readers are waited for
        self.conn.execute(f"PRAGMA busy_timeout = {int(CHECKPOINT_WAIT * 1000)}")
        try:
            busy, frames, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self.conn.execute("PRAGMA busy_timeout = 0")
        if busy and frames == -1:
            self.truncations_skipped += 1            # another worker's checkpoint was running: it does the work
        elif busy:
            # a busy moment (the workers kept the write lock for those 20 ms)
            # is tried again at the next interval; a reader that holds an
            # old snapshot for long is, with a growing pause
            self.truncations_failed += 1
            self._failed_in_a_row += 1
            if self._failed_in_a_row <= 3:
                return
            self._backoff = min(self.interval * 2 ** (self._failed_in_a_row - 3), CHECKPOINT_BACKOFF_MAX)
            self._truncate_after = time.monotonic() + self._backoff
            self._warn(f"the WAL ({self._wal_size()} bytes) is over its limit of {self.wal_limit} and could not be "
                       f"checkpointed within {CHECKPOINT_WAIT:g} s (another connection holds the write lock or an old "
                       f"snapshot); trying again in {self._backoff:g} s")
        else:
            self.truncations += 1
            self._failed_in_a_row = 0

    def _warn(self, what: str) -> None:
        self.last_error = what
        clock = time.monotonic()
        if clock - self._warned >= WARN_EVERY:
            self._warned = clock
            log.warning("state store (sqlite): %s", what)


# ---- the back end ------------------------------------------------------------


class _Lane:
    """One event loop's (or, without a loop, one thread's) connection, and
    the operations waiting for its next group commit."""

    __slots__ = ("loop", "thread", "conn", "queue", "scheduled", "pause", "ran")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, conn: sqlite3.Connection):
        self.loop = loop
        self.thread = threading.get_ident()
        self.conn = conn
        self.queue: list[tuple[Body, tuple, asyncio.Future, float]] = []
        self.scheduled = False
        self.pause = PAUSE_MIN
        self.ran = False

    def turn_ends(self) -> None:
        self.ran = False


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 0.2, purge_every: int = 1000,
                 checkpoint_interval: float = 0.1, wal_limit: int = 4 << 20, group_commit: bool = True):
        """``busy_timeout``: how long one operation waits for another
        process's write lock before it fails (keep it at or under the
        store's timeout).  ``group_commit``: the writes asked after the
        first of a turn of the loop share one transaction (``_flush``);
        False: each write its own.  ``checkpoint_interval``,
        ``wal_limit``: the upkeep thread's (see ``Upkeep``)."""
        self.memory = str(path) == ":memory:"      # for dry-run: empty, private, gone at close
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.purge_every = purge_every
        self.group_commit = group_commit
        self._lanes: dict[Any, _Lane] = {}
        self._last: _Lane | None = None
        self._lock = threading.Lock()
        self._inflight = 0
        self._writes = 0
        self.group_commits = 0                     # transactions of several operations (see _flush) ...
        self.grouped = 0                           # ... and the operations in them
        self._closed = False
        self.upkeep: Upkeep | None = None
        if self.memory:
            # an in-memory database is its connection: one, for every lane
            self._memory = _connect(":memory:", 0)
            self._memory.executescript(SCHEMA)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the schema and WAL mode now, so a bad path fails at start, not per
        # session; the connection is then the upkeep thread's
        conn = _connect(str(self.path), busy_timeout)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            if not conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kv'").fetchone()[0]:
                conn.executescript(SCHEMA)
            conn.execute("PRAGMA busy_timeout = 0")          # the upkeep thread waits for locks its own way
        except BaseException:
            conn.close()
            raise
        self.upkeep = Upkeep(conn, str(self.path), checkpoint_interval, wal_limit)
        weakref.finalize(self, self.upkeep.jobs.put, None)        # dropped without close: the thread ends

    # ---- plumbing -----------------------------------------------------------

    def _lane(self) -> _Lane:
        """The running loop's lane (its connection), made at its first use."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        lane = self._last
        if lane is not None and lane.loop is loop and (loop is not None or lane.thread == threading.get_ident()):
            return lane
        if self._closed:
            raise StoreClosed("state store closed")
        key: Any = loop if loop is not None else threading.get_ident()
        with self._lock:
            lane = self._lanes.get(key)
            if lane is None:
                # the lanes of loops that have ended go (a test's asyncio.run after another)
                for old_key, old in list(self._lanes.items()):
                    if old.loop is not None and old.loop.is_closed():
                        del self._lanes[old_key]
                        if not self.memory:
                            old.conn.close()      # not the file's last connection: no checkpoint here
                conn = self._memory if self.memory else _connect(str(self.path), 0)
                lane = self._lanes[key] = _Lane(loop, conn)
        self._last = lane
        return lane

    async def _retry(self, lane: _Lane, fn: Callable[..., T], args: tuple, err: sqlite3.OperationalError) -> T:
        """``fn(*args)`` again while another process holds the lock, with
        short jittered pauses (``asyncio.sleep``; ``time.sleep`` without a
        loop), until ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        pause = PAUSE_MIN
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise err
            wait = min(left, pause * (0.5 + random.random()))
            if lane.loop is None:
                time.sleep(wait)
            else:
                await asyncio.sleep(wait)
            pause = min(pause * 2, PAUSE_MAX)
            try:
                return fn(*args)
            except sqlite3.OperationalError as again:
                if not _busy(again):
                    raise
                err = again

    async def _read(self, body: Body, *args: Any) -> Any:
        """A read: no transaction (WAL: it never waits for the writer)."""
        lane = self._lane()
        if self._closed:
            raise StoreClosed("state store closed")
        self._inflight += 1
        try:
            try:
                return body(lane.conn, *args)
            except sqlite3.OperationalError as err:      # rare in WAL mode (a recovery), tried again
                if not _busy(err):
                    raise
                return await self._retry(lane, body, (lane.conn, *args), err)
        finally:
            self._inflight -= 1

    async def _write(self, body: Body, args: tuple, now: float | None = None) -> Any:
        """``body(conn, *args)`` as one atomic transaction (``BEGIN
        IMMEDIATE``), on the loop's thread; ``now``: the write counts
        towards the next purge."""
        lane = self._lane()
        if self._closed:
            raise StoreClosed("state store closed")
        self._inflight += 1
        try:
            if lane.queue or lane.ran:
                # not the first write of this turn, or writes wait for the lock: with them
                result = await self._queued(lane, body, args, 0.0)
            else:
                if self.group_commit and lane.loop is not None:
                    lane.ran = True
                    lane.loop.call_soon(lane.turn_ends)
                try:
                    result = transaction(lane.conn, body, args)
                except sqlite3.OperationalError as err:
                    if not _busy(err):
                        raise
                    if self.group_commit and lane.loop is not None:
                        result = await self._queued(lane, body, args, PAUSE_MIN * (0.5 + random.random()))
                    else:
                        result = await self._retry(lane, transaction, (lane.conn, body, args), err)
        finally:
            self._inflight -= 1
        if now is not None:
            self._wrote(now)
        return result

    def _wrote(self, now: float) -> None:
        self._writes += 1
        if self.upkeep is not None:
            self.upkeep.writes = self._writes
        if self.purge_every and self._writes % self.purge_every == 0:
            if self.upkeep is not None:
                self.upkeep.purge_soon(now)
            else:
                purge_expired(self._memory, now)         # a private database: nothing else waits for it

    # ---- group commit ---------------------------------------------------------

    async def _queued(self, lane: _Lane, body: Body, args: tuple, delay: float) -> Any:
        assert lane.loop is not None
        fut = lane.loop.create_future()
        lane.queue.append((body, args, fut, time.monotonic() + self.busy_timeout))
        if not lane.scheduled:
            lane.scheduled = True
            if delay:
                lane.loop.call_later(delay, self._flush, lane)
            else:
                lane.loop.call_soon(self._flush, lane)
        return await fut

    def _flush(self, lane: _Lane) -> None:
        """The writes waiting on ``lane`` in one transaction: one ``BEGIN
        IMMEDIATE`` ... ``COMMIT``, each write in a ``SAVEPOINT`` of its own
        (a failing one is rolled back alone), every result given after the
        ``COMMIT``; a write whose caller gave up (its timeout) is not made.
        A locked database: tried again after a jittered pause
        (``call_later``; more writes may join meanwhile), each write failing
        at its own ``busy_timeout``."""
        ops = [op for op in lane.queue if not op[2].done()]      # those whose caller gave up are not run
        lane.queue = []
        if not ops:
            lane.scheduled = False
            return
        conn = lane.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            clock = time.monotonic()
            locked = isinstance(err, sqlite3.OperationalError) and _busy(err)
            waiting = [op for op in ops if op[3] > clock] if locked else []
            for op in ops:
                if op not in waiting and not op[2].done():
                    op[2].set_exception(err)
            if waiting:
                lane.queue = waiting + lane.queue
                assert lane.loop is not None
                lane.loop.call_later(lane.pause * (0.5 + random.random()), self._flush, lane)
                lane.pause = min(lane.pause * 2, PAUSE_MAX)
            else:
                lane.scheduled = False
            return
        lane.scheduled = False
        lane.pause = PAUSE_MIN
        done: list[tuple[asyncio.Future, Any, BaseException | None]] = []
        if len(ops) == 1:                   # alone in its transaction: no savepoint needed to fail alone
            body, args, fut, _deadline = ops[0]
            failure: Exception | None = None
            try:
                value = body(conn, *args)
                conn.execute("COMMIT")
            except BaseException as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not isinstance(err, Exception):
                    raise
                value, failure = None, err
            else:
                self.group_commits += 1
                self.grouped += 1
            if not fut.done():
                if failure is not None:
                    fut.set_exception(failure)
                else:
                    fut.set_result(value)
            return
        try:
            for body, args, fut, _deadline in ops:
                conn.execute("SAVEPOINT op")
                try:
                    value = body(conn, *args)
                except Exception as err:  # this operation's failure, for its caller alone
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    done.append((fut, None, err))
                else:
                    conn.execute("RELEASE op")
                    done.append((fut, value, None))
            conn.execute("COMMIT")
            self.group_commits += 1
            self.grouped += len(ops)
        except sqlite3.Error as err:                  # the transaction itself failed: none of it was done
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            done = [(op[2], None, err) for op in ops]
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for fut, value, error in done:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)

    # ---- upkeep ------------------------------------------------------------------

    async def purge(self, now: float) -> int:
        """Delete every expired row now (it is also done every
        ``purge_every`` writes), in the upkeep thread; the number deleted."""
        if self._closed:
            raise StoreClosed("state store closed")
        if self.upkeep is None:
            return purge_expired(self._memory, now)
        upkeep = self.upkeep
        return await asyncio.wrap_future(upkeep.submit(lambda conn: upkeep.purge(conn, now)))

    # ---- rate limits --------------------------------------------------------

    @staticmethod
    def _tats(c: sqlite3.Connection, key: str, buckets: Sequence[Bucket], now: float) -> list[float]:
        rows = dict(c.execute("SELECT bucket, tat FROM rate WHERE key = ? AND expires > ?", (key, now)).fetchall())
        return [rows.get(b.name, 0.0) for b in buckets]

    @classmethod
    def _hit(cls, c: sqlite3.Connection, key: str, buckets: Sequence[Bucket], cost: float, now: float,
             force: bool) -> RateResult:
        tats = cls._tats(c, key, buckets, now)
        allowed, new, counts, retry = gcra(buckets, tats, cost, now, force)
        if allowed or force:
            c.executemany("INSERT INTO rate (key, bucket, tat, expires) VALUES (?, ?, ?, ?) ON CONFLICT (key, bucket) "
                          "DO UPDATE SET tat = excluded.tat, expires = excluded.expires",
                          [(key, b.name, t, t) for b, t in zip(buckets, new)])
        return RateResult(allowed, counts, retry, tuple(b.limit for b in buckets))

    async def hit(self, key: str, buckets: Sequence[Bucket], cost: float, now: float, force: bool) -> RateResult:
        result: RateResult = await self._write(self._hit, (key, buckets, cost, now, force), now)
        return result

    @classmethod
    def _peek(cls, c: sqlite3.Connection, key: str, buckets: Sequence[Bucket], now: float) -> RateResult:
        tats = cls._tats(c, key, buckets, now)
        allowed, _new, _counts, retry = gcra(buckets, tats, 1, now)
        return RateResult(allowed, levels(buckets, tats, now), retry, tuple(b.limit for b in buckets))

    async def peek(self, key: str, buckets: Sequence[Bucket], now: float) -> RateResult:
        result: RateResult = await self._read(self._peek, key, buckets, now)
        return result

    # ---- concurrency --------------------------------------------------------

    @staticmethod
    def _acquire(c: sqlite3.Connection, key: str, limit: int, ttl: float, now: float, holder: str) -> SlotResult:
        c.execute("DELETE FROM slot WHERE key = ? AND expires <= ?", (key, now))
        mine = c.execute("SELECT 1 FROM slot WHERE key = ? AND holder = ?", (key, holder)).fetchone()
        held = c.execute("SELECT count(*) FROM slot WHERE key = ?", (key,)).fetchone()[0]
        if mine is None and held >= limit:
            return SlotResult(False, held)
        c.execute("INSERT OR REPLACE INTO slot (key, holder, expires) VALUES (?, ?, ?)", (key, holder, now + ttl))
        return SlotResult(True, held if mine else held + 1)

    async def acquire(self, key: str, limit: int, ttl: float, now: float, holder: str) -> SlotResult:
        result: SlotResult = await self._write(self._acquire, (key, limit, ttl, now, holder), now)
        return result

    @staticmethod
    def _release(c: sqlite3.Connection, key: str, holder: str) -> Done:
        return Done(c.execute("DELETE FROM slot WHERE key = ? AND holder = ?", (key, holder)).rowcount > 0)

    async def release(self, key: str, holder: str) -> Done:
        result: Done = await self._write(self._release, (key, holder))
        return result

    @staticmethod
    def _holders(c: sqlite3.Connection, key: str, now: float) -> int:
        return int(c.execute("SELECT count(*) FROM slot WHERE key = ? AND expires > ?", (key, now)).fetchone()[0])

    async def holders(self, key: str, now: float) -> int:
        result: int = await self._read(self._holders, key, now)
        return result

    # ---- greylisting --------------------------------------------------------

    @staticmethod
    def _greylist(c: sqlite3.Connection, triplet: str, client: str, g: Greylisting, now: float) -> GreyResult:
        passes = 0
        if client:
            row = c.execute("SELECT passes, expires FROM greyclient WHERE key = ? AND expires > ?",
                            (client, now)).fetchone()
            passes = row[0] if row else 0
            if g.allow_after and passes >= g.allow_after:
                if _stale(row[1], now + g.keep):
                    c.execute("UPDATE greyclient SET expires = ? WHERE key = ?", (now + g.keep, client))
                return GreyResult("pass", 0.0, True, passes)
        row = c.execute("SELECT first, passed, expires FROM grey WHERE key = ? AND expires > ?", (triplet, now)).fetchone()
        if row is None:
            c.execute("INSERT OR REPLACE INTO grey (key, first, last, passed, expires) VALUES (?, ?, ?, 0, ?)",
                      (triplet, now, now, now + g.lifetime))
            return GreyResult("new", g.delay, False, passes)
        first, passed, expires = row
        if not passed and now - first < g.delay:
            return GreyResult("wait", first + g.delay - now, False, passes)
        if not passed or _stale(expires, now + g.keep):
            c.execute("UPDATE grey SET last = ?, passed = 1, expires = ? WHERE key = ?", (now, now + g.keep, triplet))
        if client and g.allow_after:        # the pass count is the auto-allowlist's: kept only when it is on
            passes += 1
            c.execute("INSERT INTO greyclient (key, passes, expires) VALUES (?, ?, ?) ON CONFLICT (key) "
                      "DO UPDATE SET passes = excluded.passes, expires = excluded.expires",
                      (client, passes, now + g.keep))
        return GreyResult("pass", 0.0, False, passes)

    async def greylist(self, triplet: str, client: str, g: Greylisting, now: float) -> GreyResult:
        result: GreyResult = await self._write(self._greylist, (triplet, client, g, now), now)
        return result

    # ---- key-value ----------------------------------------------------------

    @staticmethod
    def _get(c: sqlite3.Connection, key: str, now: float) -> Value:
        row = c.execute("SELECT value FROM kv WHERE key = ? AND expires > ?", (key, now)).fetchone()
        return Value(row[0] if row else None)

    async def get(self, key: str, now: float) -> Value:
        result: Value = await self._read(self._get, key, now)
        return result

    @staticmethod
    def _set(c: sqlite3.Connection, key: str, value: str, ttl: float, now: float) -> Done:
        c.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)", (key, value, now + ttl))
        return Done()

    async def set(self, key: str, value: str, ttl: float, now: float) -> Done:
        result: Done = await self._write(self._set, (key, value, ttl, now), now)
        return result

    @staticmethod
    def _incr(c: sqlite3.Connection, key: str, amount: float, ttl: float, now: float) -> Value:
        row = c.execute("SELECT value FROM kv WHERE key = ? AND expires > ?", (key, now)).fetchone()
        number = _number(row[0] if row else None) + amount
        c.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)", (key, _text(number), now + ttl))
        return Value(number)

    async def incr(self, key: str, amount: float, ttl: float, now: float) -> Value:
        result: Value = await self._write(self._incr, (key, amount, ttl, now), now)
        return result

    @staticmethod
    def _delete(c: sqlite3.Connection, key: str) -> Done:
        return Done(c.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0)

    async def delete(self, key: str) -> Done:
        result: Done = await self._write(self._delete, (key,))
        return result

    # ---- the service --------------------------------------------------------

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Refuse new operations, wait for those in flight (each bounded by
        ``busy_timeout``), then close every connection and stop the upkeep
        thread, in that thread (closing the file's last connection
        checkpoints: an fsync)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.busy_timeout + 0.5
        while (self._inflight or any(lane.queue for lane in self._lanes.values())) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        with self._lock:
            lanes = list(self._lanes.values())
            self._lanes.clear()
            self._last = None
        if self.upkeep is None:
            self._memory.close()
            return
        await asyncio.wrap_future(self.upkeep.stop([lane.conn for lane in lanes]))


def _number(text: str | None) -> float:
    if text is None:
        return 0.0
    try:
        return float(text)
    except ValueError:
        return 0.0


def _text(number: float) -> str:
    return str(int(number)) if number == int(number) else repr(number)
