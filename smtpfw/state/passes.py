"""The pregreet pass cache: a client that waited for its turn once is not
made to wait again for a while (Postfix postscreen's ``postscreen_greet_ttl``,
"PASS OLD").  Kept in the state store, so every worker and node sees it; a
store that cannot answer means "not known", and the client is tested again,
which costs it the wait, never its mail."""

from __future__ import annotations

import time
from typing import Callable

from smtpfw.state.store import Store

PREFIX = "pass:greet:"


class GreetPasses:
    def __init__(self, store: Store, ttl: float, clock: Callable[[], float] = time.time):
        self.store, self.ttl, self.clock = store, ttl, clock

    async def passed(self, client_ip: str) -> bool:
        answer = await self.store.get(PREFIX + client_ip, now=self.clock())
        return answer.available and answer.value is not None

    async def remember(self, client_ip: str) -> None:
        await self.store.set(PREFIX + client_ip, "1", self.ttl, now=self.clock())
