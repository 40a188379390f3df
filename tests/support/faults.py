"""Fault-injection helpers for the reliability tests (tests/test_reliability_*).

``FaultDownstream`` is the loopback ``Downstream`` with three additions:

* **per-transaction faults**: a sender address containing ``fault-<mode>``
  (``m42.a1.fault-tempfail_data@client.test``) runs that one transaction in
  ``<mode>``, whatever the global ``mode`` is, so concurrent clients can each
  pick their own fault from a seeded RNG and know exactly which one they got;
* **reply-lost modes**, the real duplicate window of SMTP (RFC 1047):
  ``take_then_hang`` records the message and never answers the end of data,
  ``take_then_drop`` records it and drops the connection without a reply;
  ``slow_250`` records it and answers 250 only after ``slow_seconds``;
* **restart on the same port**: ``restart()`` / ``stop()`` + ``start()``
  keep the port and the recorded messages; ``outages`` lists the
  (down, up) monotonic times, so a test can tell which attempts overlapped
  an outage.  The port is chosen below the kernel's ephemeral range: while
  the downstream is down, an outgoing connection could otherwise be given
  its port as a source port, and the restart would fail to bind.

Also here: memory probes for the oversized-DATA test and plugins that
misbehave in ways tests/support/plugins.py does not cover.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import re
import socket
import sys
import threading
import time

from smtpfw.plugins import Plugin, PluginResult
from smtpfw.verdict import Decision, Outcome
from tests.support.downstream import MODES, Downstream, _path

EXTRA_MODES = frozenset({"take_then_hang", "take_then_drop", "slow_250"})
_FAULT = re.compile(r"fault-([a-z0-9_]+)")
_transaction_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar("fault_mode", default=None)


def fault_sender(tag: str, mode: str, domain: str = "client.test") -> str:
    """A sender address that makes FaultDownstream run ``mode`` for it."""
    return f"{tag}.fault-{mode}@{domain}"


class _FaultReader:
    """Wraps the downstream session's StreamReader: sees each command line
    and picks the transaction's fault mode from the MAIL FROM address."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.in_data = False
        self.sender = ""
        self.rcpts: list[str] = []

    async def readline(self) -> bytes:
        line = await self._reader.readline()
        if not self.in_data:
            verb = line[:4].upper()
            if verb == b"MAIL":
                self.sender = _path(line[4:].decode("utf-8", "surrogateescape").rstrip("\r\n"))
                self.rcpts = []
                m = _FAULT.search(self.sender)
                _transaction_mode.set(m.group(1) if m else None)
            elif verb == b"RCPT":
                self.rcpts.append(_path(line[4:].decode("utf-8", "surrogateescape").rstrip("\r\n")))
            elif verb in (b"RSET", b"EHLO", b"HELO"):
                _transaction_mode.set(None)
        return line

    def __getattr__(self, name):
        return getattr(self._reader, name)


class FaultDownstream(Downstream):
    def __init__(self, mode: str = "accept", *, slow_seconds: float = 1.0, **kw) -> None:
        self._global_mode = "accept"
        super().__init__(mode, **kw)
        self.slow_seconds = slow_seconds
        self.outages: list[list[float]] = []
        self.port = _port_outside_ephemeral_range()
        self.taken_without_reply = 0      # messages recorded whose 250 was never sent

    # The mode is per transaction when the sender asks for one.
    @property
    def mode(self) -> str:
        return _transaction_mode.get() or self._global_mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES | EXTRA_MODES:
            raise ValueError(f"unknown mode {value!r}")
        self._global_mode = value

    # -- same port across restarts ------------------------------------------

    def start(self) -> "FaultDownstream":
        if self._thread is not None:
            return self
        super().start()
        if self.outages and len(self.outages[-1]) == 1:
            self.outages[-1].append(time.monotonic())
        return self

    async def _bind(self) -> None:
        # a restart binds the port it had before (0 the first time)
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=1 << 20,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._thread is None:
            return
        self.outages.append([time.monotonic()])
        super().stop()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        for _ in range(100):          # the port may linger a moment
            try:
                self.start()
                return
            except OSError:
                time.sleep(0.05)
        self.start()

    def overlaps_outage(self, start: float, end: float, margin: float = 0.05) -> bool:
        for window in self.outages:
            down = window[0] - margin
            up = (window[1] if len(window) > 1 else float("inf")) + margin
            if start <= up and end >= down:
                return True
        return False

    # -- per-transaction faults ---------------------------------------------

    async def _client(self, reader, writer) -> None:
        await super()._client(_FaultReader(reader), writer)

    async def _read_data(self, reader, writer):
        mode = self.mode
        reader.in_data = True
        try:
            data = await super()._read_data(reader, writer)
        finally:
            reader.in_data = False
        if data is None:
            return None
        if mode in ("take_then_hang", "take_then_drop"):
            with self._lock:
                self._messages.append((reader.sender, list(reader.rcpts), data))
                self.taken_without_reply += 1
            if mode == "take_then_drop":
                writer.transport.abort()
            else:
                await self._sink(reader)
            return None
        if mode == "slow_250":
            await asyncio.sleep(self.slow_seconds)
        return data


def _port_outside_ephemeral_range() -> int:
    """A free loopback port below net.ipv4.ip_local_port_range (0 if none)."""
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    return 0


# ---- memory ---------------------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_kb() -> int | None:
    return _status_kb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs).  False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_kb() -> int | None:
    return _status_kb("VmHWM")


class RssSampler:
    """Samples VmRSS every ``interval`` s in a thread; ``peak`` in KiB."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_kb() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb() or 0)
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_kb() or 0)


# ---- plugins that misbehave (see tests/test_reliability_plugins.py) -------

class RejectWith250(Plugin):
    """A refusal carrying a success code: must not reach the client as 250."""

    async def run(self, stage, state, message):
        return PluginResult(decision=Decision(Outcome.REJECT, 250, "2.0.0", "fine, really"))


class TempfailWith550(Plugin):
    async def run(self, stage, state, message):
        return PluginResult(decision=Decision(Outcome.TEMPFAIL, 550, "5.7.1", "make up your mind"))


class OutcomeIsAString(Plugin):
    async def run(self, stage, state, message):
        return PluginResult(decision=Decision("reject", 550, "5.7.1", "not an Outcome"))


class CodeIsAString(Plugin):
    async def run(self, stage, state, message):
        return PluginResult(decision=Decision(Outcome.REJECT, "550", "5.7.1", "code is text"))


class TextIsNotText(Plugin):
    async def run(self, stage, state, message):
        return PluginResult(decision=Decision(Outcome.REJECT, 550, "5.7.1", 12345))


class CallsSysExit(Plugin):
    """Library code that calls sys.exit() must not stop the server."""

    async def run(self, stage, state, message):
        sys.exit(3)


class RaisesKeyboardInterrupt(Plugin):
    async def run(self, stage, state, message):
        raise KeyboardInterrupt
