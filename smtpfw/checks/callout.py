"""Recipient verification by asking the MTA behind (a callout).

A firewall that accepts mail for users who do not exist makes the MTA
behind bounce it, and the bounce goes to a forged sender: backscatter.
Exim (`verify = recipient/callout`), Postfix (`reject_unverified_recipient`)
and qpsmtpd/Haraka (qmail-deliverable) ask the mail store instead; so does
this.  A rule that tests ``rcpt.verified`` makes the recipient a fact
(provider "callout"): the downstream is asked ``MAIL FROM:<>``, ``RCPT
TO:<address>``, ``RSET`` on a kept connection, never ``DATA``, so no mail
is sent.  2xx is "yes", 5xx "no", anything else (4xx, a timeout, a refused
connection) "unknown", and the ruleset decides what each means.  Answers are
cached per process (yes for ``callout.positive_ttl``, no for
``callout.negative_ttl``, unknown not at all), identical questions in flight
are asked once, and a session waits at most ``callout.timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Iterable

log = logging.getLogger("smtpfw.callout")


@dataclass(frozen=True, slots=True)
class Callout:
    """The fact key: is this recipient deliverable downstream?"""

    provider: ClassVar[str] = "callout"
    address: str                      # lower-case

    def to_json(self) -> dict:
        return {"address": self.address}

    @classmethod
    def from_json(cls, d: dict) -> "Callout":
        return cls(d["address"])


@dataclass(frozen=True, slots=True)
class CalloutAnswer:
    status: str                       # "yes" | "no" | "unknown"
    reply: str = ""                   # the downstream's reply, or why unknown

    def to_json(self) -> dict:
        return {"status": self.status, "reply": self.reply} if self.reply else {"status": self.status}

    @classmethod
    def from_json(cls, d: dict) -> "CalloutAnswer":
        return cls(d["status"], d.get("reply", ""))


def unknown(why: str) -> CalloutAnswer:
    return CalloutAnswer("unknown", why)


class Verifier:
    """The process's callouts to one downstream: connections kept for
    reuse, answers cached, questions in flight shared."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0, helo: str = "smtpfw",
                 positive_ttl: float = 3600.0, negative_ttl: float = 600.0, cache_size: int = 10000,
                 pool_size: int = 4):
        self.host, self.port, self.timeout, self.helo = host, port, timeout, helo
        self.positive_ttl, self.negative_ttl, self.cache_size = positive_ttl, negative_ttl, cache_size
        self.pool_size = pool_size
        self._cache: OrderedDict[str, tuple[float, CalloutAnswer]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task] = {}
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.asked = 0                    # RCPTs actually sent downstream (tests count cache hits by it)

    def cached(self, address: str) -> CalloutAnswer | None:
        entry = self._cache.get(address)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._cache[address]
            return None
        return entry[1]

    def submit(self, address: str) -> asyncio.Future:
        task = self._inflight.get(address)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._verify(address))
            self._inflight[address] = task
            task.add_done_callback(lambda _t, a=address: self._inflight.pop(a, None))
        return task

    async def _verify(self, address: str) -> CalloutAnswer:
        try:
            answer = await asyncio.wait_for(self._ask(address), self.timeout)
        except asyncio.TimeoutError:
            answer = unknown(f"no answer from the downstream within {self.timeout:g} s")
        except (OSError, EOFError, ValueError) as err:
            answer = unknown(f"downstream: {err.strerror if isinstance(err, OSError) and err.strerror else err}")
        ttl = {"yes": self.positive_ttl, "no": self.negative_ttl}.get(answer.status, 0)
        if ttl > 0:
            self._cache[address] = (time.monotonic() + ttl, answer)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return answer

    async def _ask(self, address: str) -> CalloutAnswer:
        conn = self._idle.pop() if self._idle else await self._connect()
        reader, writer = conn
        try:
            mail = await _command(reader, writer, "MAIL FROM:<>")
            self.asked += 1
            rcpt = await _command(reader, writer, f"RCPT TO:<{address}>") if mail[0] == "2" else ""
            rset = await _command(reader, writer, "RSET")
        except BaseException:
            writer.close()
            raise
        if mail[0] != "2":
            writer.close()
            return unknown(f"downstream refused the callout's MAIL FROM:<>: {mail}")
        if rset[0] == "2" and len(self._idle) < self.pool_size:
            self._idle.append(conn)
        else:
            writer.close()
        status = {"2": "yes", "5": "no"}.get(rcpt[0], "unknown")
        return CalloutAnswer(status, rcpt)

    async def _connect(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        greeting = await _reply(reader)
        if greeting[0] != "2":
            writer.close()
            raise ValueError(f"greeting {greeting}")
        writer.write(f"EHLO {self.helo}\r\n".encode())
        ehlo = await _reply(reader)
        if ehlo[0] != "2":
            writer.close()
            raise ValueError(f"EHLO answered {ehlo}")
        return reader, writer

    def close(self) -> None:
        for _reader, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> str:
    writer.write(line.encode("utf-8") + b"\r\n")
    return await _reply(reader)


async def _reply(reader: asyncio.StreamReader) -> str:
    """One SMTP reply (its last line, which has the code and the final text)."""
    while True:
        line = (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            raise EOFError("the downstream closed the connection")
        if len(line) < 4 or line[3] != "-":
            return line


class CalloutSession:
    """One session's callouts (a fact source, provider "callout")."""

    def __init__(self, verifier: Verifier | None, why_not: str = ""):
        self.verifier = verifier
        self.why_not = why_not
        self._pending: dict[Callout, asyncio.Future] = {}

    def start(self, keys: Iterable[Callout]) -> None:
        if self.verifier is None:
            return
        for key in keys:
            if key not in self._pending and self.verifier.cached(key.address) is None:
                self._pending[key] = self.verifier.submit(key.address)

    async def results(self, keys: Iterable[Callout]) -> dict:
        keys = list(keys)
        verifier = self.verifier
        if verifier is None:
            return {k: unknown(self.why_not) for k in keys}
        self.start(keys)
        out = {}
        for key in keys:
            hit = verifier.cached(key.address)
            if hit is None:
                hit = await asyncio.shield(self._pending.pop(key))
            out[key] = hit
        return out

    def close(self) -> None:
        self._pending.clear()
