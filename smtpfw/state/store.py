"""The state store: one interface, atomic operations, never an exception.

Rules that keep state across sessions (rate limits, concurrency,
greylisting, reputation, pass caches) talk to a ``Store``.  A ``Store``
wraps a *back end* (``smtpfw.state.sqlite.SqliteBackend``, the embedded
default, or ``smtpfw.state.redis.RedisBackend``) and adds what the rule
layer needs to stay up when the back end is not:

- every operation has a timeout (``timeout``, seconds);
- a circuit breaker: after ``failures`` consecutive failures (errors or
  timeouts) the store is *open* for ``cooldown`` seconds and answers at
  once without asking the back end; then one operation is let through
  (half-open) and its success closes the breaker again;
- every result says whether it is ``available``.  An unavailable result
  carries the reason and the *fail-open* answer (a hit allowed, a slot
  acquired, greylisting passed, a value absent), so a caller that looks
  no further fails open, the default; the rule layer's fail-closed
  setting tests ``available`` and tempfails instead.  Nothing raises to
  the caller, nothing hangs.  An operation that timed out may still have
  been done by the back end (Redis runs what it had received): an
  unavailable result means "unknown", not "not done".

Every operation is one atomic step in the back end (a check-and-increment
never reads and then writes), and the clock is an argument (``now``,
seconds since the epoch as a float): live sessions pass ``time.time()``,
dry-run passes the recording's time, so replay is deterministic.  Expiry is
decided by ``now`` too; the back ends' own expiry (Redis TTLs, SQLite
purges) only collects what is already dead.

The semantics are in docs/state.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal, Protocol, Sequence, TypeVar

log = logging.getLogger("smtpfw.state")

GreyVerdict = Literal["new", "wait", "pass"]

# Rate-limit arithmetic is in floats; a burst of exactly ``limit`` must fit
# (20 * (60/20) may be 60.000000000000007).
EPSILON = 1e-9
# Each caller brings its clock (``now``), read before its operation reaches
# the back end: concurrent sessions may arrive a few milliseconds out of
# order.  A hit over by less than this (and less than half a unit's drain
# time, so no whole extra unit ever fits) is let through; without it the
# last of exactly ``limit`` concurrent hits could be refused by a clock read
# a millisecond early.
SKEW = 0.05


# ---- what the operations take and give -------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """``limit`` per ``window`` seconds: a bucket that holds ``limit`` and
    drains continuously at ``limit / window`` per second (GCRA)."""

    limit: int
    window: float

    def __post_init__(self) -> None:
        if self.limit <= 0 or not self.window > 0:
            raise ValueError(f"a bucket needs a positive limit and window, not {self.limit} per {self.window}")

    @property
    def name(self) -> str:
        """The bucket's identity in the store ("20/60"): a bucket whose
        limit or window changes starts empty."""
        return f"{self.limit}/{self.window:g}"

    @property
    def interval(self) -> float:
        """Seconds one unit takes to drain."""
        return self.window / self.limit


@dataclass(frozen=True, slots=True)
class RateResult:
    """``allowed``: the hit fits in every bucket (and was counted).
    ``counts``: each bucket's level after this call (units in the bucket,
    fractional as it drains), in the order of the buckets asked.
    ``retry_after``: seconds until the same hit would fit (0 if allowed)."""

    allowed: bool
    counts: tuple[float, ...]
    retry_after: float = 0.0
    limits: tuple[int, ...] = ()
    available: bool = True
    reason: str = ""

    @property
    def fraction(self) -> float:
        """The fullest bucket's level as a fraction of its limit (0.8 is
        "80 % of the limit")."""
        return max((c / lim for c, lim in zip(self.counts, self.limits)), default=0.0)


@dataclass(frozen=True, slots=True)
class SlotResult:
    """``acquired``: the holder has a slot (new or renewed); ``count``: the
    slots held on the key after this call."""

    acquired: bool
    count: int = 0
    available: bool = True
    reason: str = ""

    def __bool__(self) -> bool:
        return self.acquired


@dataclass(frozen=True, slots=True)
class GreyResult:
    """``verdict``: "new" (first seen now: tempfail), "wait" (seen, the
    delay has not passed: tempfail), "pass".  ``retry_after``: seconds left
    of the delay ("new", "wait").  ``allowlisted``: passed because the
    client is on the auto-allowlist.  ``passes``: the client's passes."""

    verdict: GreyVerdict
    retry_after: float = 0.0
    allowlisted: bool = False
    passes: int = 0
    available: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Value:
    """A key-value read or write: ``value`` is None when the key is absent
    or expired; ``incr`` gives the new number."""

    value: str | float | None
    available: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Done:
    """An operation with nothing to say but whether it happened."""

    ok: bool = True
    available: bool = True
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


# A passed triplet's (or an allowlisted client's) expiry is written again
# only when it would move by more than this: a write on every pass was most
# of a pass's cost, and an entry kept 35 days is kept as long, give or take
# an hour.
GREY_REFRESH = 3600.0


@dataclass(frozen=True, slots=True)
class Greylisting:
    """Greylisting settings (postgrey's names in brackets).

    ``delay``: seconds before a retry passes [--delay, 300];
    ``lifetime``: seconds a pending triplet waits for its retry before it
    is forgotten [--retry-window, 2 days];
    ``keep``: seconds a passed triplet, and a client's pass count, are
    kept after their last pass [--max-age, 35 days];
    ``allow_after``: passes after which the client is auto-allowlisted,
    0 for never [--auto-whitelist-clients, 5]."""

    delay: float = 300.0
    lifetime: float = 2 * 86400.0
    keep: float = 35 * 86400.0
    allow_after: int = 5


# ---- the back-end interface --------------------------------------------------


class Backend(Protocol):
    """What a back end implements.  Each method is one atomic step and may
    raise (``Store`` turns failures into unavailable results)."""

    name: str

    async def hit(self, key: str, buckets: Sequence[Bucket], cost: float, now: float,
                  force: bool) -> RateResult: ...

    async def peek(self, key: str, buckets: Sequence[Bucket], now: float) -> RateResult: ...

    async def acquire(self, key: str, limit: int, ttl: float, now: float, holder: str) -> SlotResult: ...

    async def release(self, key: str, holder: str) -> Done: ...

    async def holders(self, key: str, now: float) -> int: ...

    async def greylist(self, triplet: str, client: str, g: Greylisting, now: float) -> GreyResult: ...

    async def get(self, key: str, now: float) -> Value: ...

    async def set(self, key: str, value: str, ttl: float, now: float) -> Done: ...

    async def incr(self, key: str, amount: float, ttl: float, now: float) -> Value: ...

    async def delete(self, key: str) -> Done: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


# ---- shared arithmetic (both back ends implement the same; SQLite in
# Python with these, Redis in Lua that mirrors them) ----------------------------


def gcra(buckets: Sequence[Bucket], tats: Sequence[float], cost: float, now: float,
         force: bool = False) -> tuple[bool, list[float], tuple[float, ...], float]:
    """One hit on buckets whose theoretical arrival times are ``tats`` (0 for
    an empty bucket): (allowed, the new tats, the levels, retry_after)."""
    new, retry, allowed = [], 0.0, True
    for b, tat in zip(buckets, tats):
        t = max(tat, now) + cost * b.interval
        new.append(t)
        over = t - now - b.window
        if over > max(EPSILON * b.window, min(SKEW, b.interval / 2)):
            allowed = False
            # a cost larger than the limit never fits: wait a whole window
            retry = max(retry, b.window if cost > b.limit else over)
    if not allowed and not force:
        new = [max(t, now) for t in tats]
    return allowed, new, levels(buckets, new, now), (0.0 if allowed else retry)


def levels(buckets: Sequence[Bucket], tats: Sequence[float], now: float) -> tuple[float, ...]:
    return tuple(max(0.0, t - now) / b.interval for b, t in zip(buckets, tats))


# ---- the store the rule layer uses -------------------------------------------


@dataclass
class OpStats:
    calls: int = 0                    # operations asked of the back end
    failures: int = 0                 # ... that failed or timed out
    shed: int = 0                     # operations answered "unavailable" by the open breaker
    seconds: float = 0.0
    max_seconds: float = 0.0

    def add(self, seconds: float, failed: bool) -> None:
        self.calls += 1
        self.failures += failed
        self.seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)

    @property
    def mean_ms(self) -> float:
        return 1000 * self.seconds / self.calls if self.calls else 0.0


@dataclass
class Breaker:
    """Consecutive failures open the breaker for ``cooldown`` seconds
    (monotonic clock: this is about the back end, not rule time)."""

    failures: int = 3
    cooldown: float = 5.0
    clock: Callable[[], float] = time.monotonic
    consecutive: int = 0
    open_until: float = 0.0
    trial: bool = False               # one operation in flight while half-open
    opened: int = 0                   # times it opened (for the logs and tests)

    def admit(self) -> bool:
        if self.open_until == 0.0:
            return True
        if self.clock() < self.open_until or self.trial:
            return False
        self.trial = True                 # half-open: let this one through
        return True

    def success(self) -> None:
        if self.open_until:
            log.info("state store: back end answers again, circuit closed")
        self.consecutive, self.open_until, self.trial = 0, 0.0, False

    def failure(self) -> None:
        self.consecutive += 1
        if self.trial or self.consecutive >= self.failures:
            if not self.open_until or self.trial:
                self.opened += 1
            self.open_until = self.clock() + self.cooldown
        self.trial = False

    @property
    def state(self) -> str:
        if not self.open_until:
            return "closed"
        return "open" if self.clock() < self.open_until else "half-open"


class Deadlines:
    """The timeouts of a store's operations, on one timer.

    ``asyncio.timeout`` arms and cancels a timer per operation (about 15 µs
    under uvloop: a third of what the rule layer adds to a stateful hook).
    Here an operation notes its task and deadline in a dict, and one timer,
    armed for the earliest deadline while anything is in flight, cancels
    the tasks whose deadline has passed; the operation sees the
    CancelledError and ``expired`` tells it whether it was this timeout's
    (taken back, as ``asyncio.timeout`` does) or its caller's.  Under a
    steady flow of operations that is one timer per ``timeout`` seconds,
    not one per operation."""

    __slots__ = ("inflight", "timer", "loop")

    def __init__(self) -> None:
        self.inflight: dict[object, list] = {}      # token -> [task, deadline, fired, cancelling]
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def watch(self, seconds: float) -> object:
        try:
            task = asyncio.current_task()
        except RuntimeError:                        # no running loop (a coroutine driven by hand)
            task = None
        if task is None:                            # not in a task: nothing to cancel (never the case live)
            return None
        loop = task.get_loop()
        if loop is not self.loop:                   # a store used from a new loop (tests): forget the old one's
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.loop = None, loop
            self.inflight = {t: e for t, e in self.inflight.items() if e[0].get_loop() is loop}
        deadline = loop.time() + seconds
        token = object()
        self.inflight[token] = [task, deadline, False, task.cancelling()]
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = loop.call_at(deadline, self._sweep)
        return token

    def expired(self, token: object) -> bool:
        """After a CancelledError: True when it was this timeout's (the
        cancellation is taken back), False when the caller was cancelled."""
        entry = self.inflight.get(token)
        if entry is None or not entry[2]:
            return False
        return entry[0].uncancel() <= entry[3]

    def done(self, token: object) -> None:
        self.inflight.pop(token, None)

    def _sweep(self) -> None:
        self.timer = None
        loop = self.loop
        assert loop is not None
        now = loop.time()
        earliest = math.inf
        for entry in self.inflight.values():
            if entry[2]:
                continue
            if entry[1] <= now:
                entry[2] = True
                entry[0].cancel()
            else:
                earliest = min(earliest, entry[1])
        if earliest < math.inf:
            self.timer = loop.call_at(earliest, self._sweep)


T = TypeVar("T")


def _no_rate(buckets: tuple[Bucket, ...], why: str) -> RateResult:
    """A rate limit's answer when the store could not be asked (fail-open)."""
    return RateResult(True, (0.0,) * len(buckets), 0.0, tuple(b.limit for b in buckets), False, why)


class Store:
    """The state store of one process: shared by its sessions, safe to use
    from many tasks at once on the event loop it was first used on."""

    def __init__(self, backend: Backend, *, timeout: float = 0.25, failures: int = 3,
                 cooldown: float = 5.0, greylisting: Greylisting = Greylisting()):
        self.backend = backend
        self.timeout = timeout
        self.breaker = Breaker(failures, cooldown)
        self.greylisting = greylisting
        self.stats: dict[str, OpStats] = {}
        self.last_error = ""
        self.log_every = 10.0
        self._logged = -math.inf
        self._deadlines = Deadlines()

    @property
    def name(self) -> str:
        return self.backend.name

    def _stats(self, op: str) -> OpStats:
        stats = self.stats.get(op)
        if stats is None:
            stats = self.stats[op] = OpStats()
        return stats

    async def _call(self, op: str, make: Callable[[], Awaitable[T]], unavailable: Callable[[str], T]) -> T:
        if not self.breaker.admit():
            self._stats(op).shed += 1
            return unavailable(f"state store ({self.name}) unavailable: circuit open after "
                               f"{self.breaker.consecutive} failures ({self.last_error})")
        start = time.perf_counter()
        failed = True
        watch = self._deadlines.watch(self.timeout)
        try:
            result = await make()
            failed = False
            return result
        except asyncio.CancelledError:
            if not self._deadlines.expired(watch):
                self.breaker.trial = False
                raise
            why = f"no answer within {self.timeout:g} s"
        except Exception as err:  # a back end's failure of any kind becomes "unavailable"
            why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        finally:
            self._deadlines.done(watch)
            self._stats(op).add(time.perf_counter() - start, failed)
            if not failed:
                self.breaker.success()
        was = self.breaker.opened
        self.breaker.failure()
        self.last_error = why
        # one line when the breaker opens, else at most one every log_every
        # seconds: a dead back end must not flood the log (stats count all)
        clock = time.monotonic()
        if self.breaker.opened != was:
            log.warning("state store (%s): %s failed: %s; circuit open for %g s", self.name, op, why,
                        self.breaker.cooldown)
            self._logged = clock
        elif clock - self._logged >= self.log_every:
            log.warning("state store (%s): %s failed: %s", self.name, op, why)
            self._logged = clock
        return unavailable(f"state store ({self.name}) unavailable: {why}")

    # ---- rate limits -------------------------------------------------------

    async def hit(self, key: str, buckets: Sequence[Bucket], cost: float = 1, *, now: float,
                  force: bool = False) -> RateResult:
        """Count ``cost`` on every bucket of ``key`` if it fits in all of
        them (``allowed``); a refused hit counts nothing, unless ``force``
        (then it is counted anyway and the buckets may overflow)."""
        buckets = tuple(buckets)
        return await self._call("hit", lambda: self.backend.hit(key, buckets, cost, now, force),
                                lambda why: _no_rate(buckets, why))

    async def peek(self, key: str, buckets: Sequence[Bucket], *, now: float) -> RateResult:
        """The buckets' levels now, counting nothing; ``allowed``: one more
        unit would fit."""
        buckets = tuple(buckets)
        return await self._call("peek", lambda: self.backend.peek(key, buckets, now),
                                lambda why: _no_rate(buckets, why))

    # ---- concurrency -------------------------------------------------------

    async def acquire(self, key: str, limit: int, ttl: float, *, now: float, holder: str) -> SlotResult:
        """Take one of ``limit`` slots on ``key`` for ``holder`` until
        ``now + ttl`` (acquiring again renews it); False when all are held."""
        return await self._call("acquire", lambda: self.backend.acquire(key, limit, ttl, now, holder),
                                lambda why: SlotResult(True, 0, False, why))

    async def release(self, key: str, holder: str) -> Done:
        return await self._call("release", lambda: self.backend.release(key, holder),
                                lambda why: Done(False, False, why))

    async def holders(self, key: str, *, now: float) -> int | None:
        """Slots held on ``key`` now; None when the store is unavailable."""
        return await self._call("holders", lambda: self.backend.holders(key, now), lambda why: None)

    # ---- greylisting -------------------------------------------------------

    async def greylist(self, triplet: str, *, now: float, client: str = "",
                       delay: float | None = None, lifetime: float | None = None,
                       settings: Greylisting | None = None) -> GreyResult:
        """Greylist ``triplet`` (the caller builds it: client network,
        sender, recipient); ``client`` (the network) carries the
        auto-allowlist, and keeps its entries on one Redis Cluster slot."""
        g = settings or self.greylisting
        if delay is not None or lifetime is not None:
            g = Greylisting(g.delay if delay is None else delay, g.lifetime if lifetime is None else lifetime,
                            g.keep, g.allow_after)
        return await self._call("greylist", lambda: self.backend.greylist(triplet, client, g, now),
                                lambda why: GreyResult("pass", 0.0, False, 0, False, why))

    # ---- key-value with TTL ------------------------------------------------

    async def get(self, key: str, *, now: float) -> Value:
        return await self._call("get", lambda: self.backend.get(key, now), lambda why: Value(None, False, why))

    async def set(self, key: str, value: str, ttl: float, *, now: float) -> Done:
        """Set ``key`` to ``value`` until ``now + ttl``."""
        return await self._call("set", lambda: self.backend.set(key, str(value), ttl, now),
                                lambda why: Done(False, False, why))

    async def incr(self, key: str, amount: float = 1, ttl: float = 86400.0, *, now: float) -> Value:
        """Add ``amount`` to the number at ``key`` (absent: 0) and keep it
        until ``now + ttl`` (every change renews the TTL); the new number."""
        return await self._call("incr", lambda: self.backend.incr(key, amount, ttl, now),
                                lambda why: Value(None, False, why))

    async def delete(self, key: str) -> Done:
        return await self._call("delete", lambda: self.backend.delete(key), lambda why: Done(False, False, why))

    # ---- the service -------------------------------------------------------

    async def ping(self) -> Done:
        async def do() -> Done:
            await self.backend.ping()
            return Done()
        return await self._call("ping", do, lambda why: Done(False, False, why))

    def describe_stats(self) -> dict[str, Any]:
        return {op: {"calls": s.calls, "failures": s.failures, "shed": s.shed, "mean_ms": round(s.mean_ms, 3),
                     "max_ms": round(1000 * s.max_seconds, 3)} for op, s in sorted(self.stats.items())}

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.backend.close(), max(self.timeout, 1.0))
        except Exception as err:  # closing a dead back end is not an error worth raising
            log.debug("state store (%s): close: %s", self.name, err)


def ceil_ms(seconds: float) -> int:
    """A back-end TTL in milliseconds, at least 1."""
    return max(1, math.ceil(seconds * 1000))


__all__ = ["GREY_REFRESH", "Backend", "Breaker", "Bucket", "Deadlines", "Done", "GreyResult", "GreyVerdict", "Greylisting", "OpStats",
           "RateResult", "SlotResult", "Store", "Value", "gcra", "levels"]
