"""Relay each message to a downstream MTA over SMTP, without spooling.

Like qpsmtpd's ``smtp-forward`` / Haraka's ``queue/smtp_forward``: the client
is kept waiting at the end of DATA while the message is relayed, and it is
answered with the downstream's verdict.  So the firewall never owns a queue:
either the downstream took the message (250) or the client still has it.

Result mapping (``ForwardDelivery.deliver``):

* every RCPT accepted and the final reply 2xx -> 250 2.0.0 + downstream text.
  That final 250 is *final*: nothing afterwards (pooling, RSET, QUIT, a
  dropped connection) can turn it into a failure, or the client would retry
  and the mail would arrive twice.
* a 4xx anywhere, a timeout, a refused/dropped connection, a malformed reply
  -> 451 with enhanced code 4.4.1 (no answer / connection refused), 4.4.2
  (connection dropped) or 4.3.0 (anything else), and a text naming the
  downstream problem but not the downstream: clients must not learn the
  internal topology, so its address is only logged ("forward to HOST:PORT").
* a 5xx at MAIL, at DATA or after the data -> passed through: downstream's
  code and enhanced code (554 / 5.0.0 when it gave none / an odd code).
* recipients: if all are refused with 5xx, the first 5xx is passed on; if all
  are refused and some with 4xx, 451.  If *some* recipients are refused (4xx
  or 5xx) while others are accepted, the message is **not sent at all** (the
  transaction is RSET, or the connection dropped when a pipelined DATA was
  already answered 354) and the answer is 451 4.3.0 "downstream refused some
  recipients".  The front end answers DATA once for all recipients, so it can
  neither report per-recipient results nor deliver to a subset without the
  retry delivering twice to the others; a tempfail makes the client retry the
  whole message, which is the only choice that neither loses nor duplicates
  mail.  (The front end is expected to check recipients with the same
  policy as the downstream, so this is rare.)
* a timeout waiting for the reply after the data (or a connection lost at
  that point) is reported as 451: the downstream may nevertheless have taken
  the message, so the client's retry may deliver a duplicate.  That is the
  classic SMTP duplicate window (RFC 1047) and is the safe side of it.

Connections: idle connections are kept and reused (LIFO) for later
messages: ``pool_size`` of them, or under load as many as the most
deliveries that were in flight at once within the last ``_PEAK_WINDOW``
seconds, so that 100 concurrent sessions do not open and QUIT a downstream
connection per message.  (When the last delivery in flight finishes, only
the previous window's peak counts: a single burst leaves ``pool_size``.)
A pool_size of 0 turns pooling off.  After a completed transaction a new
MAIL is legal, after an aborted one RSET is sent first.  Idle connections older than
``idle_timeout`` (30 s) are closed lazily.  When a *reused* connection turns
out to be dead before any message content was sent (EOF/reset while sending
MAIL or reading its reply, or a 421 to MAIL), the message is retried once on
a brand-new connection: nothing can have been delivered.

PIPELINING (RFC 2920) is used when advertised: MAIL, all RCPTs and DATA go in
one write and the replies are read in order; else commands go in lockstep.
Each step (connect, greeting, EHLO, a command group, the data, the final
reply) has its own ``timeout``.  The number of concurrent downstream
connections is not capped: it follows the number of concurrent deliveries.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections import deque

from smtpfw import linescan
from smtpfw.delivery.message import DeliveryResult, Message

log = logging.getLogger("smtpfw.delivery.forward")

_MAX_REPLY_LINES = 200
_PEAK_WINDOW = 2.0        # seconds over which the pool remembers peak concurrency
_STREAM_LIMIT = 1 << 16
_LINE_BREAK = re.compile("[\r\n\0]")      # what would end or break a command line
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")

# MAIL parameter -> the EHLO keyword that must be advertised to pass it on.
_PARAM_EXTENSION = {
    "BODY": "8BITMIME",
    "SMTPUTF8": "SMTPUTF8",
    "RET": "DSN",
    "ENVID": "DSN",
}
_DROPPED_PARAMS = {"SIZE", "AUTH"}   # SIZE recomputed; AUTH= meaningless here


# --------------------------------------------------------------------------
# Wire helpers


def dot_stuff(data: bytes, dot_lines: bool | None = None) -> bytes:
    """RFC 5321 4.5.2 transparency, plus the terminating ``.CRLF``.

    ``data`` should end with CRLF (one is added when it does not).  Every
    ``"."`` that starts a line gets another ``"."``.  A bare LF is treated as
    a line end too ("\\n." is stuffed), so a malformed message can never make
    a downstream that accepts bare LF see an early end of data (SMTP
    smuggling); for well-formed CRLF data this is the standard stuffing.
    """
    if dot_lines is None:                  # ``data`` has a line starting with a dot (None: look)
        dot_lines = linescan.has_dot_line(data)
    out = data.replace(b"\n.", b"\n..") if dot_lines else data
    if out[:1] == b".":
        out = b"." + out
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out + b".\r\n"


class _Reply:
    __slots__ = ("code", "lines")

    def __init__(self, code: int, lines: list[str]) -> None:
        self.code = code
        self.lines = lines

    @property
    def enhanced(self) -> str | None:
        m = _ENHANCED.match(self.lines[0]) if self.lines else None
        if m and int(m.group(1)) == self.code // 100:
            return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        return None

    @property
    def text(self) -> str:
        """The reply text, enhanced codes stripped, lines joined by spaces."""
        parts = []
        for line in self.lines:
            m = _ENHANCED.match(line)
            if m and int(m.group(1)) == self.code // 100:
                line = line[m.end():]
            line = line.strip()
            if line:
                parts.append(line)
        return " ".join(parts)

    def __str__(self) -> str:
        enh = self.enhanced
        text = self.text
        return f"{self.code} {enh} {text}".strip() if enh else f"{self.code} {text}".strip()


class _DownstreamError(Exception):
    """A failure whose result is already decided; the connection is dead.
    ``detail`` (the downstream's own words: its greeting names its host) is
    logged, not sent to the client."""

    def __init__(self, result: DeliveryResult, detail: str = "") -> None:
        super().__init__(result.text)
        self.result = result
        self.detail = detail


class _Stale(Exception):
    """A reused connection was found dead before any content was sent."""


class _Malformed(Exception):
    """The downstream sent something that is not an SMTP reply."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line)
        self.line = line


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Conn(asyncio.Protocol):
    """One downstream connection: the bytes the downstream sent, parsed
    into replies as they arrive.  A wait for replies is one future and one
    timer, and replies already read (a pipelined group's) need neither:
    cheaper per message than a stream reader's line-by-line reads under a
    timeout context."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.ext: dict[str, str] = {}
        self.uses = 0
        self.last_used = 0.0
        self.dead = False
        self.closed: asyncio.Future | None = None   # done when the connection is gone
        self._buf = bytearray()
        self._lines: list[str] = []      # lines of a multi-line reply read so far
        self._code = 0                   # the reply's code: its first line's
        self.idle = False                # in the pool: anything the downstream says now ends it
        self._ready: deque[_Reply] = deque()
        self._error: BaseException | None = None    # the first thing wrong after the replies in _ready
        self._eof = False
        self._waiter: asyncio.Future | None = None
        self._want = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._loop = loop = asyncio.get_running_loop()
        self.closed = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self.idle:                    # unasked (a 421 before it times out, or worse): not reusable
            self.close()
            return
        buf = self._buf
        buf += data
        if self._error is None:
            self._parse()
        elif len(buf) > _STREAM_LIMIT:
            buf.clear()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc) -> None:
        self._eof = True
        if exc is not None and self._error is None:
            self._error = exc
        self.transport = None
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        self._wake()

    # ---- replies ---------------------------------------------------------------

    def _parse(self) -> None:
        buf, lines = self._buf, self._lines
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            if end + 1 - start > _STREAM_LIMIT:
                self._error = _Malformed(b"<over-long line>")
                break
            line = bytes(buf[start:end + 1])
            start = end + 1
            head, sep = line[:3], line[3:4]
            if len(head) != 3 or not head.isdigit() or sep not in (b" ", b"-", b"\r", b"\n") or (
                    not lines and not 200 <= int(head) <= 599):
                self._error = _Malformed(line)
                break
            if not lines:
                self._code = int(head)
            lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace").replace("\r", " "))
            if sep != b"-":
                self._ready.append(_Reply(self._code, lines))
                self._lines = lines = []
            elif len(lines) >= _MAX_REPLY_LINES:
                self._error = _Malformed(b"<too many reply lines>")
                break
        del buf[:start]
        if self._error is None and len(buf) > _STREAM_LIMIT:
            self._error = _Malformed(b"<over-long line>")

    def _wake(self) -> None:
        fut = self._waiter
        if fut is not None and not fut.done() and (
                len(self._ready) >= self._want or self._error is not None or self._eof):
            fut.set_result(None)

    async def replies(self, count: int, timeout: float) -> list[_Reply]:
        """The next ``count`` replies, within ``timeout`` seconds.  Raises
        TimeoutError, _Malformed, EOFError (the downstream closed first) or
        the OSError the connection ended with."""
        ready = self._ready
        if len(ready) < count and self._error is None and not self._eof:
            loop = self._loop or asyncio.get_running_loop()    # the latter makes a getpid() system call each time
            fut = self._waiter = loop.create_future()
            self._want = count
            timer = loop.call_later(timeout, _expire, fut)
            try:
                await fut
            finally:
                timer.cancel()
                self._waiter = None
        if len(ready) < count:
            if self._error is not None:
                raise self._error
            raise EOFError()
        return [ready.popleft() for _ in range(count)]

    # ---- the connection --------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.transport.write(data)

    def usable(self) -> bool:
        return not (self.dead or self.transport is None or self.transport.is_closing() or self._eof
                    or self._error is not None or self._ready or self._buf or self._lines)

    def close(self, quit: bool = False) -> None:
        if self.dead:
            return
        self.dead = True
        transport = self.transport
        if transport is None:
            return
        try:
            if quit and not transport.is_closing():
                transport.write(b"QUIT\r\n")
            transport.close()
        except Exception:  # noqa: BLE001 - closing a broken socket
            pass


# --------------------------------------------------------------------------


class ForwardDelivery:
    """Forward messages to ``host:port`` over SMTP.  See the module docstring
    for the result mapping and the pooling/retry rules."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 30.0,
        pool_size: int = 8,
        helo_name: str | None = None,
        *,
        idle_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)
        self.pool_size = max(0, int(pool_size))
        self.idle_timeout = float(idle_timeout)
        name = helo_name or socket.gethostname() or "localhost"
        if any(c in name for c in "\r\n \t"):
            raise ValueError(f"bad helo_name {name!r}")
        self.helo_name = name
        self._idle: deque[_Conn] = deque()
        self._active = 0                 # deliveries in flight
        self._peak = [0, 0, None]        # most in flight: this window, the last one; window start
        self._closed = False
        self._where = f"{host}:{port}"

    def __repr__(self) -> str:
        return f"ForwardDelivery({self.host!r}, {self.port})"

    # -- public -------------------------------------------------------------

    async def deliver(self, msg: Message) -> DeliveryResult:
        self._active += 1
        peak = self._peak
        if self._active > peak[0]:
            peak[0] = self._active
        try:
            return await self._deliver(msg)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - deliver() must never raise
            log.exception("forwarding to %s failed", self._where)
            return DeliveryResult(451, "4.3.0", "internal error forwarding to downstream; try again later")
        finally:
            self._active -= 1

    async def close(self) -> None:
        self._closed = True
        conns = list(self._idle)
        self._idle.clear()
        for conn in conns:
            conn.close(quit=True)
        waits = [c.closed for c in conns if c.closed is not None]
        if waits:
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*waits, return_exceptions=True)
            except TimeoutError:
                pass

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # -- transaction driver -------------------------------------------------

    async def _deliver(self, msg: Message) -> DeliveryResult:
        bad = _check_envelope(msg)
        if bad is not None:
            return bad
        payload = dot_stuff(msg.data, msg.dot_lines)
        sender = _addr(msg.sender)
        rcpts = [_addr(r) for r in msg.recipients]
        smtputf8_needed = not (sender.isascii() and all(r.isascii() for r in rcpts))

        for attempt in (0, 1):
            conn = self._take_idle() if attempt == 0 else None
            try:
                if conn is None:
                    conn = await self._connect()
                result, keep = await self._transaction(
                    conn, msg, sender, rcpts, payload, smtputf8_needed)
            except _Stale:
                log.info("pooled connection to %s was stale; retrying on a new one", self._where)
                conn.close()
                continue
            except _DownstreamError as exc:
                if conn is not None:
                    conn.close()
                log.warning("forward to %s: %s%s", self._where, exc.result.text,
                            f" ({exc.detail})" if exc.detail else "")
                return exc.result
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            if keep:
                self._release(conn)
            else:
                conn.close()
            if result.code // 100 == 4:
                log.warning("forward to %s: %s %s %s", self._where, result.code, result.enhanced, result.text)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _transaction(self, conn: _Conn, msg: Message, sender: str,
                           rcpts: list[str], payload: bytes,
                           smtputf8_needed: bool) -> tuple[DeliveryResult, bool]:
        """Run one mail transaction on ``conn``; returns (result, keep conn).

        Raises ``_DownstreamError`` (connection unusable) or ``_Stale``.
        """
        ext = conn.ext
        if smtputf8_needed and "SMTPUTF8" not in ext:
            return DeliveryResult(
                554, "5.6.7",
                "downstream does not support SMTPUTF8; cannot relay non-ASCII addresses"), True

        params = _mail_params(msg, ext)
        enc = _encode
        mail_cmd = b"MAIL FROM:<" + enc(sender) + b">" + params + b"\r\n"
        rcpt_cmds = [b"RCPT TO:<" + enc(r) + b">\r\n" for r in rcpts]
        reused = conn.uses > 0

        if "PIPELINING" in ext:
            # One write for MAIL, every RCPT and DATA; replies in order.
            mail = await self._mail_step(conn, b"".join((mail_cmd, *rcpt_cmds, b"DATA\r\n")), reused)
            if mail.code == 421:
                return _tempfail(mail, "MAIL"), False
            replies = await self._read_replies(conn, len(rcpts) + 1, "RCPT/DATA")
            rcpt_replies, data = replies[:-1], replies[-1]
            failure = _envelope_failure(mail, rcpt_replies)
            if failure is not None:
                if data.code == 354:
                    # DATA was accepted but we must not send the message:
                    # drop the connection so the downstream discards it
                    # ("." would deliver an empty message).
                    return failure, False
                if any(r.code == 421 for r in replies):
                    return failure, False
                return failure, await self._rset(conn)
        else:
            mail = await self._mail_step(conn, mail_cmd, reused)
            if mail.code // 100 != 2:
                return _reply_failure(mail, "MAIL"), mail.code != 421 and await self._rset(conn)
            rcpt_replies = []
            for cmd in rcpt_cmds:
                reply = await self._command(conn, cmd, "RCPT")
                if reply.code == 421:
                    return _tempfail(reply, "RCPT"), False
                rcpt_replies.append(reply)
            failure = _envelope_failure(mail, rcpt_replies)
            if failure is not None:
                return failure, await self._rset(conn)
            data = await self._command(conn, b"DATA\r\n", "DATA")

        if data.code != 354:
            if data.code // 100 in (2, 3):      # 2xx to DATA: protocol error
                return _protocol_failure(data, "DATA"), False
            return _reply_failure(data, "DATA"), data.code != 421 and await self._rset(conn)

        # Message content.  From here on nothing is retried.
        final = await self._command(conn, payload, "end of DATA")
        if final.code // 100 == 2:
            # FINAL: the downstream owns the message now.
            return DeliveryResult(250, "2.0.0", final.text or "Message accepted by downstream"), True
        if final.code // 100 not in (4, 5):
            return _protocol_failure(final, "end of DATA"), False
        # A failed DATA ends the transaction: a new MAIL is legal.
        return _reply_failure(final, "end of DATA"), final.code != 421

    # -- steps ----------------------------------------------------------------

    async def _mail_step(self, conn: _Conn, data: bytes, reused: bool) -> _Reply:
        """Send MAIL (maybe with the pipelined rest) and read MAIL's reply.
        On a reused connection, death here means a stale pooled connection."""
        try:
            reply = await self._command(conn, data, "MAIL")
        except _DownstreamError as exc:
            if reused and exc.result.enhanced == "4.4.2":
                raise _Stale() from exc
            raise
        if reused and reply.code == 421:
            raise _Stale()
        return reply

    async def _command(self, conn: _Conn, data: bytes, stage: str) -> _Reply:
        """Write ``data`` and read one reply, within one ``timeout``."""
        try:
            conn.write(data)
        except ConnectionError as exc:
            raise self._dropped(stage, exc) from None
        return (await self._read_replies(conn, 1, stage))[0]

    async def _read_replies(self, conn: _Conn, count: int, stage: str) -> list[_Reply]:
        try:
            return await conn.replies(count, self.timeout)
        except TimeoutError:
            raise self._no_answer(stage) from None
        except _Malformed as exc:
            raise self._malformed(stage, exc.line) from None
        except EOFError:
            raise self._dropped(stage, None) from None
        except (ConnectionError, OSError) as exc:
            raise self._dropped(stage, exc) from None

    async def _rset(self, conn: _Conn) -> bool:
        """RSET after an aborted transaction; True if the connection is
        still good for another one.  Never raises (except cancellation)."""
        try:
            reply = await self._command(conn, b"RSET\r\n", "RSET")
        except _DownstreamError:
            return False
        return reply.code // 100 == 2

    # -- connections ----------------------------------------------------------

    def _take_idle(self) -> _Conn | None:
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        limit = now - self.idle_timeout
        while idle and idle[0].last_used < limit:     # oldest first
            idle.popleft().close(quit=True)
        while idle:
            conn = idle.pop()                          # most recent
            conn.idle = False
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn) -> None:
        conn.uses += 1
        keep = self.pool_size
        if keep:
            peak, now = self._peak, time.monotonic()
            if peak[2] is None:
                peak[2] = now
            elif now - peak[2] > _PEAK_WINDOW:
                peak[:] = [self._active, peak[0], now]
            others = self._active - 1           # deliveries still in flight besides this one
            keep = max(keep, peak[1], peak[0] if others > 0 else 0)
        if self._closed or len(self._idle) >= keep or not conn.usable():
            conn.close(quit=True)
        else:
            conn.last_used = time.monotonic()
            conn.idle = True
            self._idle.append(conn)
        while len(self._idle) > keep:           # the burst is over: back to pool_size
            self._idle.popleft().close(quit=True)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, conn = await loop.create_connection(_Conn, self.host, self.port)
        except TimeoutError:
            raise _DownstreamError(DeliveryResult(
                451, "4.4.1", "downstream MTA unavailable: connect timed out")) from None
        except ConnectionRefusedError:
            raise _DownstreamError(DeliveryResult(
                451, "4.4.1", "downstream MTA unavailable: connection refused")) from None
        except OSError as exc:
            raise _DownstreamError(DeliveryResult(
                451, "4.4.1", f"downstream MTA unavailable: {exc.strerror or exc}")) from None
        try:
            greeting = (await self._read_replies(conn, 1, "greeting"))[0]
            if greeting.code != 220:
                raise _DownstreamError(DeliveryResult(
                    451, "4.3.0", "downstream MTA refused the session"), str(greeting))
            ehlo = await self._command(conn, b"EHLO " + self.helo_name.encode() + b"\r\n", "EHLO")
            if ehlo.code // 100 == 2:
                conn.ext = _parse_ehlo(ehlo)
            elif ehlo.code // 100 == 5 and ehlo.code != 554:
                helo = await self._command(conn, b"HELO " + self.helo_name.encode() + b"\r\n", "HELO")
                if helo.code // 100 != 2:
                    raise _DownstreamError(DeliveryResult(
                        451, "4.3.0", "downstream MTA refused HELO"), str(helo))
            else:
                raise _DownstreamError(DeliveryResult(
                    451, "4.3.0", "downstream MTA refused EHLO"), str(ehlo))
        except BaseException:
            conn.close()
            raise
        return conn

    # -- errors -----------------------------------------------------------------

    def _no_answer(self, stage: str) -> _DownstreamError:
        return _DownstreamError(DeliveryResult(
            451, "4.4.1",
            f"no answer from downstream MTA within {self.timeout:g}s at {stage}"))

    def _dropped(self, stage: str, exc: BaseException | None) -> _DownstreamError:
        why = f" ({exc.strerror or exc})" if isinstance(exc, OSError) else ""
        return _DownstreamError(DeliveryResult(
            451, "4.4.2", f"downstream MTA dropped the connection at {stage}{why}"))

    def _malformed(self, stage: str, line: bytes) -> _DownstreamError:
        shown = line[:80].decode("ascii", "backslashreplace").rstrip("\r\n")
        return _DownstreamError(DeliveryResult(
            451, "4.3.0", f"malformed reply from downstream MTA at {stage}"), repr(shown))


# --------------------------------------------------------------------------
# Start-up check


def check_downstream(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` cannot take mail right now, or None: resolved,
    connected to, greeted with 220 (then QUIT).  Blocking; for start-up."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        return f"cannot resolve {host}: {getattr(err, 'strerror', None) or err}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            greeting = sock.recv(512)
            if greeting[:3] == b"220":
                sock.sendall(b"QUIT\r\n")
                return None
            shown = greeting[:80].decode("ascii", "backslashreplace").strip()
            return f"no 220 greeting ({shown or 'connection closed'})"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as err:
        return f"cannot connect: {err.strerror or err}"


# --------------------------------------------------------------------------
# Pure helpers


def _addr(address: str) -> str:
    if len(address) >= 2 and address[0] == "<" and address[-1] == ">":
        return address[1:-1]
    return address


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _check_envelope(msg: Message) -> DeliveryResult | None:
    if not msg.recipients:
        return DeliveryResult(554, "5.5.1", "no valid recipients")
    for address in (msg.sender, *msg.recipients):
        if _LINE_BREAK.search(address):
            return DeliveryResult(553, "5.1.3", "invalid address")
    for opt in msg.mail_options:
        if _LINE_BREAK.search(opt) or " " in opt:
            return DeliveryResult(555, "5.5.4", "invalid MAIL parameter")
    return None


def _parse_ehlo(reply: _Reply) -> dict[str, str]:
    ext: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, rest = line.strip().partition(" ")
        if keyword:
            ext[keyword.upper()] = rest.strip()
    return ext


def _mail_params(msg: Message, ext: dict[str, str]) -> bytes:
    params = []
    for opt in msg.mail_options:
        key, eq, value = opt.partition("=")
        key = key.upper()
        if key in _DROPPED_PARAMS:
            continue
        if key == "BODY" and value.upper() not in ("7BIT", "8BITMIME"):
            continue          # BINARYMIME needs BDAT, which we do not speak
        if _PARAM_EXTENSION.get(key, key) in ext:
            params.append(f" {key}{eq}{value}".encode("utf-8", "surrogateescape"))
    if "SIZE" in ext:
        params.append(b" SIZE=%d" % len(msg.data))
    return b"".join(params)


def _tempfail(reply: _Reply, stage: str) -> DeliveryResult:
    return DeliveryResult(451, "4.3.0", f"downstream MTA tempfailed {stage}: {reply}")


def _protocol_failure(reply: _Reply, stage: str) -> DeliveryResult:
    return DeliveryResult(451, "4.3.0", f"unexpected reply from downstream MTA at {stage}: {reply}")


def _reply_failure(reply: _Reply, stage: str) -> DeliveryResult:
    """Map a non-success reply: 4xx -> 451, 5xx -> passed through."""
    klass = reply.code // 100
    if klass == 4:
        return _tempfail(reply, stage)
    if klass == 5:
        return DeliveryResult(reply.code, reply.enhanced or "5.0.0",
                              reply.text or f"rejected by downstream at {stage}")
    return _protocol_failure(reply, stage)


def _envelope_failure(mail: _Reply, rcpts: list[_Reply]) -> DeliveryResult | None:
    """None when MAIL and every RCPT were accepted, else the result."""
    if mail.code // 100 != 2:
        return _reply_failure(mail, "MAIL")
    refused = [r for r in rcpts if r.code // 100 != 2]
    if not refused:
        return None
    if len(refused) < len(rcpts):
        return DeliveryResult(
            451, "4.3.0",
            f"downstream refused some recipients ({len(refused)} of {len(rcpts)}, "
            f"first: {refused[0]}); nothing delivered, try again later")
    # All refused: a 5xx only if every refusal is permanent.
    if all(r.code // 100 == 5 for r in refused):
        return _reply_failure(refused[0], "RCPT")
    first_temp = next((r for r in refused if r.code // 100 != 5), refused[0])
    if first_temp.code // 100 == 4:
        return _tempfail(first_temp, "RCPT")
    return _protocol_failure(first_temp, "RCPT")
