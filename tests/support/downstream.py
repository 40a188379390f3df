"""A fault-injecting SMTP server on loopback, for delivery tests.

Raw asyncio (not aiosmtpd) so faults can be injected at any byte.  It runs in
a background thread with its own event loop, so both sync and async tests can
use it::

    with Downstream() as ds:
        ...  ForwardDelivery("127.0.0.1", ds.port) ...
        assert ds.messages == [(sender, [rcpt], data)]

``mode`` (settable at construction and at run time) selects a fault:

* ``"accept"``          accept everything (default)
* ``"tempfail_mail"``   451 at MAIL
* ``"tempfail_rcpt"``   451 at every RCPT
* ``"reject_rcpt"``     550 at every RCPT (or only those in ``reject_rcpts``
                        when that set is non-empty; the set also applies in
                        any other mode)
* ``"tempfail_data"``   451 after the end of data
* ``"reject_data"``     554 after the end of data
* ``"hang"``            after the greeting, never reply again
* ``"hang_data"``       never answer the final reply after the data
* ``"drop_mid_data"``   close the connection in the middle of the data
                        (nothing recorded)
* ``"drop_after_250"``  record the message, send 250, close at once
* ``"no_greeting"``     accept TCP, send nothing

``drop_on_mail = n`` makes the next ``n`` MAIL commands close the connection
without a reply (a stale pooled connection, as seen by the client).

Counters: ``connections`` (accepted TCP connections), ``pipelined`` (commands
read while the next command was already buffered: a pipelining client),
``commands`` (every command line, decoded, in arrival order).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from tests.support.loopthread import start_loop_thread, stop_loop_thread

MODES = frozenset({
    "accept", "tempfail_mail", "tempfail_rcpt", "reject_rcpt", "tempfail_data",
    "reject_data", "hang", "hang_data", "drop_mid_data", "drop_after_250",
    "no_greeting",
})


def closed_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` with (almost certainly) nothing listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Downstream:
    def __init__(
        self,
        mode: str = "accept",
        *,
        pipelining: bool = True,
        reject_rcpts: set[str] | frozenset[str] | None = None,
        size_limit: int = 10 * 1024 * 1024,
        smtputf8: bool = False,
        ehlo: bool = True,
        hostname: str = "downstream.test",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.pipelining = pipelining
        self.reject_rcpts = set(reject_rcpts or ())
        self.size_limit = size_limit
        self.smtputf8 = smtputf8
        self.ehlo = ehlo
        self.hostname = hostname
        self.drop_on_mail = 0
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0
        self.pipelined = 0
        self._lock = threading.Lock()
        self._messages: list[tuple[str, list[str], bytes]] = []
        self._commands: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self._queued = 0

    # -- public API -----------------------------------------------------------

    @property
    def messages(self) -> list[tuple[str, list[str], bytes]]:
        with self._lock:
            return list(self._messages)

    @property
    def commands(self) -> list[str]:
        with self._lock:
            return list(self._commands)

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= count:
                return True
            time.sleep(0.01)
        return len(self.messages) >= count

    def start(self) -> "Downstream":
        if self._thread is not None:
            return self
        self._loop, self._thread = start_loop_thread(self._bind, self._shutdown, "downstream-smtp")
        return self

    async def _bind(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        stop_loop_thread(self._loop, self._thread)
        self._thread = None

    def drop_connections(self) -> None:
        """Close every open client connection (server side), now."""
        if self._loop is None:
            return
        done = threading.Event()

        def close_all() -> None:
            for w in list(self._writers):
                w.close()
            done.set()

        self._loop.call_soon_threadsafe(close_all)
        done.wait(5)

    def __enter__(self) -> "Downstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- server side ------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _log(self, line: bytes) -> None:
        with self._lock:
            self._commands.append(line.decode("utf-8", "replace").rstrip("\r\n"))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "no_greeting":
            await self._sink(reader)
            return

        def send(text: str) -> None:
            writer.write(text.encode() + b"\r\n")

        send(f"220 {self.hostname} ESMTP test downstream")
        sender: str | None = None
        rcpts: list[str] = []
        while True:
            line = await reader.readline()
            if not line:
                return
            if reader._buffer:  # type: ignore[attr-defined]  # more already sent
                self.pipelined += 1
            self._log(line)
            if self.mode == "hang":
                await self._sink(reader)
                return
            cmd = line.decode("utf-8", "surrogateescape").rstrip("\r\n")
            verb = cmd[:4].upper()
            arg = cmd[4:]
            if verb == "EHLO":
                if not self.ehlo:
                    send("502 5.5.2 EHLO not implemented")
                    continue
                ext = [self.hostname]
                if self.pipelining:
                    ext.append("PIPELINING")
                ext += ["8BITMIME", f"SIZE {self.size_limit}", "ENHANCEDSTATUSCODES"]
                if self.smtputf8:
                    ext.append("SMTPUTF8")
                for item in ext[:-1]:
                    send(f"250-{item}")
                send(f"250 {ext[-1]}")
                sender, rcpts = None, []
            elif verb == "HELO":
                send(f"250 {self.hostname}")
                sender, rcpts = None, []
            elif verb == "MAIL":
                if self.drop_on_mail > 0:
                    self.drop_on_mail -= 1
                    writer.close()
                    return
                if self.mode == "tempfail_mail":
                    send("451 4.7.1 Try again later (MAIL)")
                elif sender is not None:
                    send("503 5.5.1 Nested MAIL command")
                else:
                    sender = _path(arg)
                    send("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpt = _path(arg)
                if sender is None:
                    send("503 5.5.1 Need MAIL first")
                elif self.mode == "tempfail_rcpt":
                    send("451 4.2.0 Try again later (RCPT)")
                elif rcpt in self.reject_rcpts or (
                        self.mode == "reject_rcpt" and not self.reject_rcpts):
                    send(f"550 5.1.1 <{rcpt}>: Recipient address rejected")
                else:
                    rcpts.append(rcpt)
                    send("250 2.1.5 Ok")
            elif verb == "DATA":
                if sender is None or not rcpts:
                    send("554 5.5.1 No valid recipients")
                    continue
                send("354 End data with <CR><LF>.<CR><LF>")
                data = await self._read_data(reader, writer)
                if data is None:
                    return
                mode = self.mode
                if mode == "tempfail_data":
                    send("451 4.3.0 Try again later (DATA)")
                elif mode == "reject_data":
                    send("554 5.7.1 Message rejected")
                elif mode == "hang_data":
                    await self._sink(reader)
                    return
                else:
                    with self._lock:
                        self._messages.append((sender, list(rcpts), data))
                        self._queued += 1
                        qid = f"Q{self._queued:06d}"
                    send(f"250 2.0.0 Ok: queued as {qid}")
                    if mode == "drop_after_250":
                        await writer.drain()
                        writer.close()
                        return
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                send("250 2.0.0 Ok")
            elif verb == "NOOP":
                send("250 2.0.0 Ok")
            elif verb == "QUIT":
                send("221 2.0.0 Bye")
                await writer.drain()
                return
            else:
                send("500 5.5.2 Command not recognized")
            await writer.drain()

    async def _read_data(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bytes | None:
        """Read dot-stuffed data up to CRLF.CRLF; return it unstuffed."""
        await writer.drain()
        chunks: list[bytes] = []
        while True:
            line = await reader.readline()
            if not line:
                return None
            if self.mode == "drop_mid_data":
                writer.transport.abort()
                return None
            if line == b".\r\n":
                return b"".join(chunks)
            if line.startswith(b"."):
                line = line[1:]
            chunks.append(line)

    @staticmethod
    async def _sink(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass


def _path(arg: str) -> str:
    """``FROM:<a@b> SIZE=1`` -> ``a@b``."""
    _, _, rest = arg.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        return rest[1:rest.find(">")] if ">" in rest else rest[1:]
    return rest.split(" ", 1)[0]
