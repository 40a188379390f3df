"""State as facts: what a rule's `limit.NAME.*` and `greylist` fields ask
the state store, and the source that asks it.

These facts are not read-only: asking counts (a rate-limit hit is one
atomic check-and-count) or writes (a greylisting triplet is noted).  So
they are *lazy*: the engine asks for one only when a rule's condition
reaches it (``FactMissing``), and Policy gives back what a refused hook
counted (``refund``).  Each key names the hook run it belongs to, so a
hook that runs again (the next recipient) counts again.

The clock is the source's: ``time.time`` live, the recording's time in a
replay, so a dry-run of stateful rules is deterministic.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

from smtpfw.state.store import Bucket, GreyResult, RateResult, SlotResult, Store


@dataclass(frozen=True, slots=True)
class RateKey:
    """One count on limit ``name`` for ``key`` (the values it is keyed by),
    made by hook run ``run`` of a session."""

    provider: ClassVar[str] = "state"
    name: str
    key: str
    buckets: tuple[tuple[int, float], ...]    # (limit, window seconds)
    cost: float
    run: str                                  # session id and hook run: one count per run

    def to_json(self) -> dict:
        return {"kind": "rate", "name": self.name, "key": self.key, "buckets": [list(b) for b in self.buckets],
                "cost": self.cost, "run": self.run}

    @property
    def store_key(self) -> str:
        return f"{self.name}|{self.key}"


@dataclass(frozen=True, slots=True)
class SlotKey:
    """A slot of concurrency limit ``name`` for ``key``, held by session
    ``holder`` until it ends (or ``ttl`` seconds)."""

    provider: ClassVar[str] = "state"
    name: str
    key: str
    limit: int
    holder: str
    ttl: float
    run: str

    def to_json(self) -> dict:
        return {"kind": "slot", "name": self.name, "key": self.key, "limit": self.limit, "holder": self.holder,
                "ttl": self.ttl, "run": self.run}

    @property
    def store_key(self) -> str:
        return f"{self.name}|{self.key}"


@dataclass(frozen=True, slots=True)
class CounterKey:
    """A read of counter ``name`` for ``key`` by hook run ``run``."""

    provider: ClassVar[str] = "state"
    name: str
    key: str
    run: str

    def to_json(self) -> dict:
        return {"kind": "counter", "name": self.name, "key": self.key, "run": self.run}

    @property
    def store_key(self) -> str:
        return counter_store_key(self.name, self.key)


@functools.lru_cache(maxsize=256)
def _buckets(spec: tuple[tuple[int, float], ...]) -> tuple[Bucket, ...]:
    """A limit's buckets, made once per ruleset's limit, not per hit."""
    return tuple(Bucket(limit, window) for limit, window in spec)


def counter_store_key(name: str, key: str) -> str:
    return f"counter|{name}|{key}"


@dataclass(frozen=True, slots=True)
class CounterAnswer:
    """A counter's value (0 when absent or expired)."""

    value: int
    available: bool = True
    reason: str = ""

    def to_json(self) -> dict:
        d: dict = {"value": self.value}
        if not self.available:
            d["available"], d["reason"] = False, self.reason
        return d


@dataclass(frozen=True, slots=True)
class GreyKey:
    """The greylisting triplet of one recipient."""

    provider: ClassVar[str] = "state"
    network: str
    sender: str
    rcpt: str
    run: str

    def to_json(self) -> dict:
        return {"kind": "greylist", "network": self.network, "sender": self.sender, "rcpt": self.rcpt,
                "run": self.run}

    @property
    def triplet(self) -> str:
        return f"{self.network}|{self.sender}|{self.rcpt}"


def key_from_json(d: dict) -> RateKey | SlotKey | GreyKey | CounterKey:
    if d.get("kind") == "greylist":
        return GreyKey(d["network"], d["sender"], d["rcpt"], d.get("run", ""))
    if d.get("kind") == "counter":
        return CounterKey(d["name"], d["key"], d.get("run", ""))
    if d.get("kind") == "slot":
        return SlotKey(d["name"], d["key"], int(d["limit"]), d["holder"], float(d["ttl"]), d.get("run", ""))
    return RateKey(d["name"], d["key"], tuple((int(b[0]), float(b[1])) for b in d["buckets"]),
                   float(d.get("cost", 1)), d.get("run", ""))


@dataclass(frozen=True, slots=True)
class RateAnswer:
    """What a limit said: ``exceeded`` (this count did not fit), the fullest
    bucket's ``count`` and ``percent`` of its limit after it, ``retry``
    seconds until it would fit; ``available`` False when the store could not
    be asked (``reason`` says why)."""

    exceeded: bool
    count: int
    percent: int
    retry: int
    available: bool = True
    reason: str = ""
    counted: bool = False            # the store counted it (what a refund gives back)

    def to_json(self) -> dict:
        d: dict = {"exceeded": self.exceeded, "count": self.count, "percent": self.percent, "retry": self.retry}
        if not self.available:
            d["available"], d["reason"] = False, self.reason
        if self.counted:
            d["counted"] = True
        return d


@dataclass(frozen=True, slots=True)
class GreyAnswer:
    """What greylisting said: ``verdict`` new, wait or pass; ``retry``
    seconds left of the delay."""

    verdict: str
    retry: int = 0
    allowlisted: bool = False
    available: bool = True
    reason: str = ""

    def to_json(self) -> dict:
        d: dict = {"verdict": self.verdict, "retry": self.retry}
        if self.allowlisted:
            d["allowlisted"] = True
        if not self.available:
            d["available"], d["reason"] = False, self.reason
        return d


def value_from_json(d: dict) -> RateAnswer | GreyAnswer | CounterAnswer:
    if "value" in d:
        return CounterAnswer(int(d["value"]), bool(d.get("available", True)), d.get("reason", ""))
    if "verdict" in d:
        return GreyAnswer(d["verdict"], int(d.get("retry", 0)), bool(d.get("allowlisted", False)),
                          bool(d.get("available", True)), d.get("reason", ""))
    return RateAnswer(bool(d["exceeded"]), int(d.get("count", 0)), int(d.get("percent", 0)), int(d.get("retry", 0)),
                      bool(d.get("available", True)), d.get("reason", ""), bool(d.get("counted", False)))


def unavailable(reason: str) -> Any:
    """What a rule sees of a state fact that could not be had at all (no
    store configured): the fail-open answer."""
    return _Unavailable(reason)


class _Unavailable:
    """Either kind's fail-open answer, for a key whose kind is not known."""

    def __init__(self, reason: str):
        self.reason = reason
        self.available = False
        self.exceeded = False
        self.count = self.percent = self.retry = self.value = 0
        self.verdict = "pass"
        self.allowlisted = False
        self.counted = False

    def to_json(self) -> dict:
        return {"exceeded": False, "count": 0, "percent": 0, "retry": 0, "available": False, "reason": self.reason}


class StateFacts:
    """A session's state source over the process's ``Store``.  ``fail``:
    "open" (a store that cannot answer lets the mail through, logged) or
    "closed" (it counts as over the limit / greylisted: the rule's own
    tempfail answers)."""

    def __init__(self, store: Store, *, fail: str = "open", clock: Callable[[], float] = time.time,
                 release: bool = True, slot_ttl: float | None = None):
        """``release``: give the session's concurrency slots back when it
        ends (live); a replay keeps them for the recorded session's length
        instead (``slot_ttl``), so sessions that overlapped in time count."""
        self.store = store
        self.fail_closed = fail == "closed"
        self.clock = clock
        self.release = release
        self.slot_ttl = slot_ttl
        self.held: dict[str, SlotKey] = {}      # store key -> the key of the hook run that took the slot
        self.releasing: set = set()             # release tasks under way (shutdown waits for them)

    def start(self, keys: Iterable[Any]) -> None:
        pass                                  # lazy: asked only when a rule reaches it

    async def results(self, keys: Iterable[Any]) -> dict:
        out: dict = {}
        now = self.clock()
        for key in keys:
            if isinstance(key, GreyKey):
                out[key] = self._grey(await self.store.greylist(key.triplet, now=now, client=key.network))
            elif isinstance(key, CounterKey):
                got = await self.store.get(key.store_key, now=now)
                value = int(float(got.value)) if got.value is not None else 0
                out[key] = CounterAnswer(value, got.available, got.reason)
            elif isinstance(key, SlotKey):
                ttl = self.slot_ttl if self.slot_ttl is not None else key.ttl
                slot = await self.store.acquire(key.store_key, key.limit, ttl, now=now, holder=key.holder)
                # Noted for release whatever the answer: an acquire that timed
                # out may still have taken the slot (releasing one not held
                # does nothing).  The first hook run that asked owns it.
                self.held.setdefault(key.store_key, key)
                out[key] = self._slot(slot, key)
            else:
                buckets = _buckets(key.buckets)
                out[key] = self._rate(await self.store.hit(key.store_key, buckets, key.cost, now=now), key)
        return out

    async def refund(self, keys: Iterable[Any], answers: dict) -> None:
        """Give back the counts of ``keys`` (their hook was refused)."""
        now = self.clock()
        for key in keys:
            answer = answers.get(key)
            if isinstance(key, RateKey) and isinstance(answer, RateAnswer) and answer.counted:
                buckets = _buckets(key.buckets)
                await self.store.hit(key.store_key, buckets, -key.cost, now=now, force=True)
            elif isinstance(key, SlotKey) and self.release and self.held.get(key.store_key) == key:
                # only the hook run that took the slot gives it back: a later
                # hook that read it again (and was refused) leaves it held
                del self.held[key.store_key]
                await self.store.release(key.store_key, key.holder)

    async def commit(self, effects: Iterable[tuple[str, float, float]]) -> None:
        """The writes rules decided (`count NAME`): (store key, amount, keep seconds)."""
        now = self.clock()
        for key, amount, keep in effects:
            await self.store.incr(key, amount, keep, now=now)

    def close(self) -> None:
        """The session ended: its concurrency slots are free again (in the
        background: closing does not wait on the store)."""
        if not self.release or not self.held:
            return
        held, self.held = list(self.held.values()), {}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return                              # no loop any more: the slots' TTL frees them
        for key in held:
            task = loop.create_task(self.store.release(key.store_key, key.holder))
            self.releasing.add(task)
            task.add_done_callback(self.releasing.discard)

    def _slot(self, slot: SlotResult, key: SlotKey) -> RateAnswer:
        if not slot.available:
            if self.fail_closed:
                return RateAnswer(True, 0, 0, 60, False, slot.reason)
            return RateAnswer(False, 0, 0, 0, False, slot.reason)
        return RateAnswer(not slot.acquired, slot.count, int(100 * slot.count / key.limit + 0.5),
                          0 if slot.acquired else 60)

    def _rate(self, r: RateResult, key: RateKey) -> RateAnswer:
        if not r.available:
            if self.fail_closed:
                return RateAnswer(True, 0, 0, 60, False, r.reason)
            return RateAnswer(False, 0, 0, 0, False, r.reason)
        fullest = max(range(len(r.counts)), key=lambda i: r.counts[i] / r.limits[i], default=0)
        count = r.counts[fullest] if r.counts else 0.0
        return RateAnswer(not r.allowed, int(count + 0.999), int(100 * r.fraction + 0.5),
                          int(r.retry_after + 0.999), counted=r.allowed)

    def _grey(self, g: GreyResult) -> GreyAnswer:
        if not g.available:
            if self.fail_closed:
                return GreyAnswer("wait", 60, False, False, g.reason)
            return GreyAnswer("pass", 0, False, False, g.reason)
        return GreyAnswer(g.verdict, int(g.retry_after + 0.999), g.allowlisted)
