"""The pregreet pass cache: a client that waited for its turn once is not
made to wait again for a while (Postfix postscreen's ``postscreen_greet_ttl``,
"PASS OLD").  Kept in the state store, so every worker and node sees it.

Each worker also remembers the passes it has seen (until they expire), so a
returning client costs no store read at all: the benchmark found the read
(a hand-off to the store's thread and back) the whole cost of the test for
clients in the cache.  A store that cannot answer follows ``state.fail``:
open (the default) lets the client skip the wait, as a store outage must
not make every good client wait; closed tests it again.
"""

from __future__ import annotations

import time
from typing import Callable

from smtpfw.state.store import Store

PREFIX = "pass:greet:"
LOCAL_MAX = 100_000                 # passes a worker keeps in memory (oldest first out)


class GreetPasses:
    def __init__(self, store: Store, ttl: float, clock: Callable[[], float] = time.time, *,
                 fail_open: bool = True):
        self.store, self.ttl, self.clock, self.fail_open = store, ttl, clock, fail_open
        self._local: dict[str, float] = {}          # client -> when its pass expires
        self.store_reads = 0

    async def passed(self, client_ip: str) -> bool:
        now = self.clock()
        until = self._local.get(client_ip)
        if until is not None:
            if until > now:
                return True
            del self._local[client_ip]
        self.store_reads += 1
        answer = await self.store.get(PREFIX + client_ip, now=now)
        if not answer.available:
            return self.fail_open
        if answer.value is None:
            return False
        try:                                       # the value is when the pass expires
            until = float(answer.value)
        except ValueError:
            until = now
        if until > now:
            self._keep(client_ip, until)           # another worker's pass: remembered here too
        return True

    async def remember(self, client_ip: str) -> None:
        until = self.clock() + self.ttl
        self._keep(client_ip, until)
        await self.store.set(PREFIX + client_ip, repr(until), self.ttl, now=until - self.ttl)

    def _keep(self, client_ip: str, until: float) -> None:
        self._local.pop(client_ip, None)
        self._local[client_ip] = until
        if len(self._local) > LOCAL_MAX:
            self._local.pop(next(iter(self._local)))
