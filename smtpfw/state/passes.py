"""Pass caches: a client that passed a test once is not tested again for a
while.  Two use them: the pregreet test (Postfix postscreen's
``postscreen_greet_ttl``, "PASS OLD": the client does not wait again) and
the DNSBL lookups (``postscreen_dnsbl_ttl``: a client address no list named
is not looked up again).  Kept in the state store, so every worker and node
sees them, and the embedded store keeps them across restarts.

Each worker also remembers the passes it has seen (until they expire), so a
returning client costs no store read at all: the benchmark found the read
(a hand-off to the store's thread and back) the whole cost of the test for
clients in the cache.  A store that cannot answer gives ``fail_open``: for
the pregreet test open (the default, ``state.fail``) lets the client skip
the wait, as a store outage must not make every good client wait; for
DNSBL passes it is always closed: the lookup is simply made.
"""

from __future__ import annotations

import time
from typing import Callable

from smtpfw.state.store import Store

GREET_PREFIX = "pass:greet:"
DNSBL_PREFIX = "pass:dnsbl:"
LOCAL_MAX = 100_000                 # passes a worker keeps in memory (oldest first out)


class PassCache:
    """Passes of one test, by key (a client IP, or ZONE:IP), for ``ttl`` seconds."""

    def __init__(self, store: Store, ttl: float, clock: Callable[[], float] = time.time, *,
                 prefix: str = GREET_PREFIX, fail_open: bool = True):
        self.store, self.ttl, self.clock = store, ttl, clock
        self.prefix, self.fail_open = prefix, fail_open
        self._local: dict[str, float] = {}          # key -> when its pass expires
        self.store_reads = 0

    def seen(self, key: str) -> bool:
        """A pass this worker already knows of: answered without the store."""
        until = self._local.get(key)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self._local[key]
        return False

    async def passed(self, key: str) -> bool:
        if self.seen(key):
            return True
        now = self.clock()
        self.store_reads += 1
        answer = await self.store.get(self.prefix + key, now=now)
        if not answer.available:
            return self.fail_open
        if answer.value is None:
            return False
        try:                                       # the value is when the pass expires
            until = float(answer.value)
        except ValueError:
            until = now
        if until > now:
            self._keep(key, until)                 # another worker's pass: remembered here too
        return True

    async def remember(self, key: str) -> None:
        until = self.clock() + self.ttl
        self._keep(key, until)
        await self.store.set(self.prefix + key, repr(until), self.ttl, now=until - self.ttl)

    def _keep(self, key: str, until: float) -> None:
        self._local.pop(key, None)
        self._local[key] = until
        if len(self._local) > LOCAL_MAX:
            self._local.pop(next(iter(self._local)))


def greet_passes(store: Store, ttl: float, *, fail_open: bool = True) -> PassCache:
    """The pregreet test's passes, by client IP."""
    return PassCache(store, ttl, prefix=GREET_PREFIX, fail_open=fail_open)


def dnsbl_passes(store: Store, ttl: float) -> PassCache:
    """DNSBL passes, by ZONE:IP; a store that cannot answer means "ask DNS"."""
    return PassCache(store, ttl, prefix=DNSBL_PREFIX, fail_open=False)
