"""A buffered connection on asyncio's public Protocol API: what the SMTP
front end reads commands and messages from and writes replies to.

It exists so the front end owns its input buffer: the DATA reader scans it
in place and leaves pipelined commands where they are, STARTTLS drops
plaintext that was sent ahead of the handshake (RFC 3207 5), and nothing
reaches into another library's private attributes.  Flow control both
ways: reading pauses while the buffer is full, writing waits while the
client does not read.

Writes: a reply written while more input is already buffered (a pipelined
command group, RFC 2920) is held and leaves with the replies that follow
it, in one write (one TLS record under STARTTLS): at the latest when the
session waits for input, closes, starts TLS or the event loop turns once.
A reply written with nothing buffered leaves at once.
"""

from __future__ import annotations

import asyncio
import ssl

READ_PAUSE = 256 * 1024        # stop reading from the socket above this much buffered input


class LineTooLong(Exception):
    """A line longer than the limit; it was read and thrown away."""


class Stream(asyncio.Protocol):
    """The byte side of one connection.  ``run()`` (a subclass's session)
    starts as a task once the connection is made."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False                     # the client sent EOF (or the connection is gone)
        self.lost = False                    # the connection is gone
        self.tls = False
        self.task: asyncio.Task | None = None
        self._reading_paused = False
        self._data_waiter: asyncio.Future | None = None
        self._drain_waiter: asyncio.Future | None = None
        self._writing_paused = False
        self._held: list[bytes] = []         # replies held while pipelined input is buffered
        self._flush_soon: asyncio.Handle | None = None

    async def run(self) -> None:
        raise NotImplementedError

    # ---- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport) -> None:
        if self.transport is not None:        # loop.start_tls does not call it; just in case
            return
        self.transport = transport
        self.task = self.loop.create_task(self.run())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_PAUSE and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return not self.tls                   # keep writing after a half-close; TLS cannot

    def connection_lost(self, exc) -> None:
        self.lost = self.eof = True
        self.transport = None
        self._held.clear()
        self._wake_reader()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- reading ---------------------------------------------------------------

    def _wake_reader(self) -> None:
        waiter, self._data_waiter = self._data_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self) -> bool:
        """Wait until more input arrives; False at EOF.  Held replies leave
        first: the client may be waiting for them."""
        if self._held:
            self.flush()
        if self.eof:
            return False
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._data_waiter = self.loop.create_future()
        await self._data_waiter
        return True

    def consumed(self) -> None:
        """The reader took from the buffer: read from the socket again if
        reading was paused for a full buffer."""
        if self._reading_paused and len(self.buffer) <= READ_PAUSE and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    async def readline(self, limit: int) -> bytes:
        """One line, its LF included.  A longer line than ``limit`` is read
        to its end and dropped (``LineTooLong``); EOF inside a line ends the
        session (``ConnectionResetError``)."""
        scanned = 0
        while True:
            end = self.buffer.find(b"\n", scanned)
            if end != -1 and end < limit:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                self.consumed()
                return line
            if end != -1 or len(self.buffer) >= limit:
                await self._discard_line()
                raise LineTooLong()
            scanned = len(self.buffer)
            if not await self.more():
                raise ConnectionResetError("EOF inside a line")

    async def _discard_line(self) -> None:
        while True:
            end = self.buffer.find(b"\n")
            if end != -1:
                del self.buffer[:end + 1]
                self.consumed()
                return
            self.buffer.clear()
            self.consumed()
            if not await self.more():
                raise ConnectionResetError("EOF inside an over-long line")

    def discard_input(self) -> None:
        self.buffer.clear()
        self.consumed()

    # ---- writing ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.buffer:
            # Pipelined input is waiting: hold this reply for the ones that follow.
            self._held.append(data)
            if self._flush_soon is None:
                self._flush_soon = self.loop.call_soon(self.flush)
        elif self._held:
            self._held.append(data)
            self.flush()
        else:
            transport.write(data)

    def flush(self) -> None:
        """Send the held replies now, in one write."""
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        held, self._held = self._held, []
        transport = self.transport
        if held and transport is not None and not transport.is_closing():
            transport.write(held[0] if len(held) == 1 else b"".join(held))

    async def drain(self) -> None:
        """Wait while the client does not read what we wrote."""
        if self.lost:
            raise ConnectionResetError("connection lost")
        if self._writing_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def close(self) -> None:
        if self._held:
            self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._held.clear()
        if self.transport is not None:
            self.transport.abort()

    def write_buffer_size(self) -> int:
        if self.transport is None:
            return 0
        return self.transport.get_write_buffer_size() + sum(map(len, self._held))

    async def start_tls(self, context: ssl.SSLContext, timeout: float | None) -> None:
        """The TLS handshake (server side) on this connection; raises if it
        fails or takes longer than ``timeout``.  Input sent before it is
        dropped, as RFC 3207 5 asks."""
        if self._held:
            self.flush()                      # the "220 Ready" goes in plain text
        self.discard_input()
        transport = await self.loop.start_tls(self.transport, self, context, server_side=True,
                                              ssl_handshake_timeout=timeout)
        self.transport = transport
        self.tls = True
