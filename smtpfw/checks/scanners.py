"""Content scanners: ClamAV's clamd and SpamAssassin's spamd, each asked
over its own wire protocol.

    r = await clamd_scan("unix:/run/clamav/clamd.ctl", message, timeout=10, max_bytes=25 * 2**20)
    r.status      # "clean" | "infected" | "error" | "skipped";  r.virus
    r = await spamd_check("127.0.0.1:783", message, timeout=10, max_bytes=512 * 1024)
    r.status      # "spam" | "ham" | "error" | "skipped";  r.score, r.required, r.tests

**A failure is an answer, not an exception.**  A scanner that refuses the
connection, is gone, hangs up, answers garbage or does not answer within
``timeout`` gives a ``ScanResult`` with status "error" and a ``reason``
naming the scanner, its address and what went wrong, e.g. ``clamd at
127.0.0.1:3310: no answer within 1 s (waiting for the reply)``.  The whole
call -- name resolution, connecting, sending, waiting -- takes at most
``timeout`` seconds, then the connection is aborted.  The ruleset decides
what an error means (accept, tempfail).  Only arguments that are wrong
whatever the scanner does (an address that is not an address, a timeout
that is not positive, a negative ``max_bytes``, a user name with spaces or
control characters) raise ``ValueError``, before any I/O; ``parse_address``
lets a configuration be checked when it is loaded.

**Too large is "skipped".**  A message longer than ``max_bytes`` is not
sent at all: the result has status "skipped" and reason ``larger than N
bytes``, so a rule can tell "not scanned" from "scanned and clean" (and
from "the scanner failed").  Big mail is rarely spam and costs the scanners
most (spamc skips messages over 500 KB by default, ``spamc -s``), and clamd
refuses a stream over its own ``StreamMaxLength`` (25 MB by default): keep
``max_bytes`` for clamd at or below it, or such messages come back as
errors ("clamd: INSTREAM size limit exceeded").

Addresses: ``unix:/path/to/socket``, ``host:port``, ``[ipv6]:port``.

clamd
-----
The INSTREAM command, null-terminated variant: ``zINSTREAM\\0``, the
message in chunks each preceded by its length (4 bytes, big-endian), a
zero length to end; the reply is ``stream: OK\\0``, ``stream: <name>
FOUND\\0`` or ``<text> ERROR\\0``.  clamd understands MIME itself: it decodes
a base64 attachment and scans what is inside, so the whole message is sent
as it is.  When a stream goes over ``StreamMaxLength`` clamd replies
``INSTREAM size limit exceeded. ERROR`` and hangs up while we may still be
sending; the reply is read concurrently with sending, so it is not lost
behind a broken pipe.

The protocol is implemented here (a few lines over asyncio streams) rather
than taken from PyPI: the widely used clients, ``clamd`` (last release
1.0.2, 2014) and ``pyclamd`` (0.4.0, 2017), are blocking and unmaintained;
younger ones (``aioclamd``, ``clamav-client``, ``clamdpy``) would be a
dependency for what is one command, and each has its own idea of errors
and timeouts where this needs one deadline and an "error" result.

spamd
-----
SPAMC/1.5, the SYMBOLS command::

    SYMBOLS SPAMC/1.5\\r\\n
    Content-length: <bytes>\\r\\n
    User: <user>\\r\\n                  (only when ``user`` is given)
    \\r\\n
    <message>

answered by ``SPAMD/1.1 0 EX_OK``, a ``Spam: True ; 1000.0 / 5.0`` header
(verdict ; score / required score), a blank line and the names of the rules
that hit, comma-separated.  A non-zero code (``SPAMD/1.0 76 Bad header
line``) is an error with spamd's text as the reason.

Own code here too, rather than aiospamc: aiospamc (1.2.0, 2025) is maintained and
complete (all commands, SSL, its CLI), but it imports loguru at package
level and brings further dependencies, reports failures as its own
exception hierarchy with separate connection/response timeouts, where this
needs one deadline for the whole exchange and an "error" result -- and
SYMBOLS is one request and one small reply, some forty lines below.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("smtpfw.scanners")

SCANNERS = ("clamd", "spamd")
STATUSES: dict[str, frozenset[str]] = {
    "clamd": frozenset({"clean", "infected", "error", "skipped"}),
    "spamd": frozenset({"spam", "ham", "error", "skipped"}),
}

CLAMD_CHUNK = 64 * 1024            # bytes per INSTREAM chunk
REPLY_LIMIT = 64 * 1024            # the longest reply line (or spamd reply body) accepted
_LENGTH = struct.Struct(">I")


# -- results --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a scanner said about a message.

    ``scanner``: "clamd" or "spamd" ("" for a scan nothing could run: an
    "error").  ``status``: for clamd "clean" or
    "infected" (``virus`` is the name clamd reported, e.g.
    "Eicar-Test-Signature"), for spamd "spam" or "ham" (``score`` and
    ``required`` are spamd's score and its required score, ``tests`` the
    names of the rules that hit, in spamd's order); for both "error" (no
    verdict: ``reason`` says why) and "skipped" (larger than ``max_bytes``,
    not sent: ``reason`` says so).  ``score``/``required`` are None when
    spamd gave no score (clamd results, errors, skipped messages)."""

    scanner: str
    status: str
    virus: str = ""
    score: float | None = None
    required: float | None = None
    tests: tuple[str, ...] = ()
    reason: str = ""

    def __post_init__(self) -> None:
        # scanner "" is a scan no source could run (replay, `smtpfw test`): an error, of whichever scanner
        allowed = STATUSES.get(self.scanner) if self.scanner else frozenset({"error"})
        if allowed is None:
            raise ValueError(f"unknown scanner {self.scanner!r} (one of {', '.join(SCANNERS)})")
        if self.status not in allowed:
            raise ValueError(f"unknown {self.scanner} status {self.status!r} (one of {', '.join(sorted(allowed))})")
        if not isinstance(self.tests, tuple):
            object.__setattr__(self, "tests", tuple(self.tests))

    @property
    def answered(self) -> bool:
        """The scanner gave a verdict (not "error", not "skipped")."""
        return self.status not in ("error", "skipped")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"scanner": self.scanner, "status": self.status}
        if self.virus:
            d["virus"] = self.virus
        if self.score is not None:
            d["score"] = self.score
        if self.required is not None:
            d["required"] = self.required
        if self.tests:
            d["tests"] = list(self.tests)
        if self.reason:
            d["reason"] = self.reason
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScanResult:
        score, required = d.get("score"), d.get("required")
        return cls(d["scanner"], d["status"], d.get("virus", ""),
                   None if score is None else float(score), None if required is None else float(required),
                   tuple(d.get("tests", ())), d.get("reason", ""))


def _error(scanner: str, address: str, why: str) -> ScanResult:
    return ScanResult(scanner, "error", reason=f"{scanner} at {address}: {why}")


def _skipped(scanner: str, max_bytes: int) -> ScanResult:
    return ScanResult(scanner, "skipped", reason=f"larger than {max_bytes} bytes")


# -- addresses ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ScannerAddress:
    """A unix socket (``path``) or a TCP ``host`` and ``port``."""

    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_PORT = re.compile(r"[0-9]{1,5}")


def parse_address(text: str) -> ScannerAddress:
    """``unix:/path``, ``host:port`` or ``[ipv6]:port``; ValueError saying
    what is wrong otherwise."""
    forms = "expected unix:/path/to/socket, host:port or [ipv6]:port"
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path or "\0" in path:
            raise ValueError(f"bad scanner address {text!r}: no socket path after unix: ({forms})")
        return ScannerAddress(path=path)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"bad scanner address {text!r}: {forms}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"bad scanner address {text!r}: {forms}")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"bad scanner address {text!r}: no host ({forms})")
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad scanner address {text!r}: the port must be a number from 1 to 65535")
    return ScannerAddress(host=host, port=int(port_text))


def _check_args(address: str, timeout: float, max_bytes: int) -> ScannerAddress:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int, not {max_bytes!r}")
    return parse_address(address)


# -- one exchange under one deadline ----------------------------------------------

class _Failure(Exception):
    """No verdict; the message is the reason."""


def _show(data: bytes, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


Send = Callable[[bytes], Awaitable[None]]


def _receive_failure(exc: BaseException, lost: OSError | None) -> _Failure:
    if isinstance(exc, _Failure):
        return exc
    if isinstance(exc, asyncio.IncompleteReadError):
        how = f"connection lost ({_os_error(lost)})" if lost is not None else "the connection was closed"
        if exc.partial:
            return _Failure(f"{how} in the middle of the reply {_show(exc.partial)}")
        return _Failure(f"{how} without a reply")
    if isinstance(exc, asyncio.LimitOverrunError):
        return _Failure(f"reply line longer than {REPLY_LIMIT} bytes")
    raise exc


async def _connect(address: ScannerAddress) -> socket.socket:
    loop = asyncio.get_running_loop()
    if address.path:
        targets: list[tuple[int, int, int, Any]] = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, address.path)]
    else:
        targets = [(family, kind, proto, sockaddr) for family, kind, proto, _, sockaddr
                   in await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)]
    last: OSError = OSError(f"{address.host} has no address")
    for family, kind, proto, sockaddr in targets:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last = e
        except BaseException:
            sock.close()
            raise
    raise last


async def _exchange(address: ScannerAddress, timeout: float, send: Callable[[Send], Awaitable[None]],
                    receive: Callable[[asyncio.StreamReader], Awaitable[ScanResult]]) -> ScanResult:
    """Connect, then ``send`` and ``receive`` at the same time, all of it
    within ``timeout``.  Raises _Failure.

    A scanner may answer and hang up before it has read everything (clamd
    over its StreamMaxLength), so the reply is read while sending, and a
    failed send does not stop the reading: the socket is driven with the
    loop's sock_* calls rather than a stream transport, which stops
    reading on the first failed write and would drop a reply that is
    already in the socket's buffer."""
    loop = asyncio.get_running_loop()
    stage = "connecting"
    sock: socket.socket | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                sock = await _connect(address)
            except OSError as e:
                raise _Failure(f"cannot connect ({_os_error(e)})") from None
            connected = sock
            reader = asyncio.StreamReader(limit=REPLY_LIMIT)
            lost: list[OSError] = []

            async def pump() -> None:
                try:
                    while data := await loop.sock_recv(connected, 65536):
                        reader.feed_data(data)
                except OSError as e:      # after what was read: a reset does not hide a reply already here
                    lost.append(e)
                reader.feed_eof()

            async def write(data: bytes) -> None:
                await loop.sock_sendall(connected, data)

            stage = "sending the message"
            pumping = asyncio.ensure_future(pump())
            sending = asyncio.ensure_future(send(write))
            receiving = asyncio.ensure_future(receive(reader))
            try:
                await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
                send_error = sending.exception() if sending.done() else None
                if not receiving.done():
                    stage = "waiting for the reply"
                    await asyncio.wait({receiving})
                receive_error = receiving.exception()
                if receive_error is None:
                    return receiving.result()
                failure = _receive_failure(receive_error, lost[0] if lost else None)
                if isinstance(send_error, OSError):
                    raise _Failure(f"{failure} (sending failed: {_os_error(send_error)})")
                raise failure
            finally:
                for task in (pumping, sending, receiving):
                    task.cancel()
                await asyncio.gather(pumping, sending, receiving, return_exceptions=True)
    except TimeoutError:
        raise _Failure(f"no answer within {timeout:g} s ({stage})") from None
    finally:
        if sock is not None:
            sock.close()


async def _guarded(scanner: str, address: str, run: Awaitable[ScanResult]) -> ScanResult:
    try:
        return await run
    except _Failure as f:
        return _error(scanner, address, str(f))
    except Exception as e:           # a bug here must not take a session down with it
        log.exception("%s at %s: unexpected failure", scanner, address)
        return _error(scanner, address, f"internal error: {type(e).__name__}: {e}")


# -- clamd ------------------------------------------------------------------------

_FOUND = re.compile(r"stream: (.+) FOUND")


async def clamd_scan(address: str, message: bytes, *, timeout: float, max_bytes: int) -> ScanResult:
    """clamd's verdict on ``message`` (INSTREAM): "clean", "infected"
    (``virus``), "error" (``reason``) or "skipped" (longer than
    ``max_bytes``, not sent).  Never raises for anything the scanner does;
    returns within ``timeout`` seconds."""
    addr = _check_args(address, timeout, max_bytes)
    if len(message) > max_bytes:
        return _skipped("clamd", max_bytes)

    async def send(write: Send) -> None:
        # one write per chunk, its length and (the first) the command or (the
        # last) the terminator with it: no small segments for Nagle to hold
        head = b"zINSTREAM\0"
        for offset in range(0, len(message), CLAMD_CHUNK):
            chunk = message[offset:offset + CLAMD_CHUNK]
            last = offset + CLAMD_CHUNK >= len(message)
            await write(head + _LENGTH.pack(len(chunk)) + chunk + (_LENGTH.pack(0) if last else b""))
            head = b""
        if not message:
            await write(head + _LENGTH.pack(0))

    async def receive(reader: asyncio.StreamReader) -> ScanResult:
        return _clamd_verdict(await reader.readuntil(b"\0"))

    return await _guarded("clamd", address, _exchange(addr, timeout, send, receive))


def _clamd_verdict(raw: bytes) -> ScanResult:
    text = raw.rstrip(b"\0").decode("utf-8", "replace").strip()
    if text == "stream: OK":
        return ScanResult("clamd", "clean")
    found = _FOUND.fullmatch(text)
    if found:
        return ScanResult("clamd", "infected", virus=found.group(1))
    if text.endswith(" ERROR"):
        why = text[:-len(" ERROR")].strip()
        if "size limit exceeded" in why:
            why += " (the message is over clamd's StreamMaxLength: keep max_bytes at or below it)"
        raise _Failure(f"clamd: {why}")
    raise _Failure(f"unexpected reply {_show(raw)}")


# -- spamd ------------------------------------------------------------------------

_STATUS_LINE = re.compile(r"SPAMD/(\d+\.\d+) +(\d+)(?: +(.*))?")
_NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?)"
_SPAM_HEADER = re.compile(rf"(true|false|yes|no) *; *{_NUMBER} */ *{_NUMBER}", re.IGNORECASE)
_SYMBOL = re.compile(r"[\x21-\x7e]{1,200}")


def _check_user(user: str | None) -> bytes | None:
    if user is None:
        return None
    if (not isinstance(user, str) or not user or len(user) > 255
            or any(c.isspace() or not c.isprintable() for c in user)):
        raise ValueError(f"a spamd user is a non-empty name without spaces or control characters, not {user!r}")
    return user.encode("utf-8")


async def spamd_check(address: str, message: bytes, *, timeout: float, user: str | None = None,
                      max_bytes: int) -> ScanResult:
    """spamd's verdict on ``message`` (SPAMC/1.5 SYMBOLS), checked for
    ``user`` (spamd's default user when None): "spam" or "ham" with
    ``score``, ``required`` and ``tests``; "error" (``reason``) or
    "skipped" (longer than ``max_bytes``, not sent).  Never raises for
    anything the scanner does; returns within ``timeout`` seconds."""
    addr = _check_args(address, timeout, max_bytes)
    user_bytes = _check_user(user)
    if len(message) > max_bytes:
        return _skipped("spamd", max_bytes)

    async def send(write: Send) -> None:
        head = b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n" % len(message)
        if user_bytes is not None:
            head += b"User: " + user_bytes + b"\r\n"
        await write(head + b"\r\n" + message)

    return await _guarded("spamd", address, _exchange(addr, timeout, send, _spamd_reply))


async def _spamd_reply(reader: asyncio.StreamReader) -> ScanResult:
    raw = await reader.readuntil(b"\n")
    status = _STATUS_LINE.fullmatch(raw.decode("latin-1").strip())
    if not status:
        raise _Failure(f"unexpected reply {_show(raw)}")
    code, text = int(status.group(2)), (status.group(3) or "").strip()
    if code != 0:
        raise _Failure(f"spamd: {code} {text}".rstrip())
    headers: dict[str, str] = {}
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise
            break                              # closed after the headers: no body
        if line.strip() == b"":
            break
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name.strip():
            raise _Failure(f"bad header line in the reply {_show(line)}")
        headers[name.strip().lower()] = value.strip()
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isascii() or not length_text.isdigit() or int(length_text) > REPLY_LIMIT:
            raise _Failure(f"bad Content-length in the reply: {length_text!r}")
        body = await reader.readexactly(int(length_text))
    else:                                      # to the end of the connection
        body = b""
        while chunk := await reader.read(REPLY_LIMIT):
            body += chunk
            if len(body) > REPLY_LIMIT:
                raise _Failure(f"reply longer than {REPLY_LIMIT} bytes")
    spam = _SPAM_HEADER.fullmatch(headers.get("spam", ""))
    if not spam:
        if "spam" not in headers:
            raise _Failure(f"no Spam header in the reply (headers: {', '.join(headers) or 'none'})")
        raise _Failure(f"bad Spam header in the reply: {headers['spam']!r}")
    verdict = spam.group(1).lower() in ("true", "yes")
    score, required = float(spam.group(2)) + 0.0, float(spam.group(3)) + 0.0   # + 0.0: no -0.0
    tests = tuple(t.strip() for t in body.decode("utf-8", "replace").split(",") if t.strip())
    bad = [t for t in tests if not _SYMBOL.fullmatch(t)]
    if bad:
        raise _Failure(f"unexpected rule names in the reply: {_show(body)}")
    return ScanResult("spamd", "spam" if verdict else "ham", score=score, required=required, tests=tests)
