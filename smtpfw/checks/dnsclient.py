"""DNS over UDP for the resolver: long-lived sockets, the query written as
bytes, the answer parsed once.

dnspython's asynchronous resolver opens a socket for every query and builds
and reads each message through its general machinery: about 0.6 ms of CPU
per lookup, which an uncached DNSBL lookup pays for every new client
(workload e in docs/performance.md).  Here a query costs a datagram on a
socket that is already open, a header and a question written by hand, and
one ``dns.message.from_wire`` of the answer.

What does not change: the servers are asked in order, each for its share
of the timeout; a SERVFAIL, REFUSED or unreadable answer moves on to the
next server; a truncated answer is asked again over TCP (dnspython's own
``asyncquery.tcp``).

A socket serves the queries that overlap, ``SOCKET_INFLIGHT`` at most (a
slow server's answers arrive together, and a socket's buffer holds only so
many: more queries in flight take more sockets); it is closed when none is
waiting on it (so none outlives its use, or its event loop), and a busy one
is replaced after ``SOCKET_QUERIES`` queries or ``SOCKET_SECONDS`` seconds.
Under load that is a socket per few hundred queries instead of one each.

Spoofing: each socket is connected to its server (the kernel drops
datagrams from anywhere else), an answer must carry the query's random ID
and echo its question, and the source port changes with every socket.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode

SOCKET_QUERIES = 200            # queries a socket carries before it is replaced (a new source port)
SOCKET_SECONDS = 30.0           # ... or this long
SOCKET_INFLIGHT = 64            # queries waiting on one socket at most (their answers may come at once)
RECEIVE_BUFFER = 1 << 20        # asked for each socket (the system may give less: net.core.rmem_max)
_RD = 0x0100                    # recursion desired, as dnspython's resolver asks
_IN = 1
_ids = random.SystemRandom()


class QueryFailed(Exception):
    """No server gave a usable answer; ``str()`` is what went wrong with the
    first server that answered at all (its rcode), else ``timeout`` or the
    socket error."""


class _Socket(asyncio.DatagramProtocol):
    """One connected UDP socket to one server and the queries waiting on it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future, bytes]] = {}
        self.sent = 0
        self.born = time.monotonic()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 12 or not data[2] & 0x80:          # not a response
            return
        entry = self.pending.get(int.from_bytes(data[:2], "big"))
        if entry is None:
            return
        fut, question = entry
        if data[12:12 + len(question)].lower() != question:   # not an answer to this question
            return
        del self.pending[int.from_bytes(data[:2], "big")]
        if not fut.done():
            fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error (the port is closed): every query on it failed."""
        self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("socket closed"))

    def _fail(self, exc: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for fut, _question in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def worn(self) -> bool:
        return self.sent >= SOCKET_QUERIES or time.monotonic() - self.born > SOCKET_SECONDS

    def retire(self) -> None:
        """No more new queries; closed when its last answer came."""
        self.closed = True
        if not self.pending and self.transport is not None:
            self.transport.close()


class UdpClient:
    """Queries to ``servers`` ((address, port), asked in order) for one event loop."""

    def __init__(self, servers: list[tuple[str, int]], timeout: float):
        self.servers = servers
        self.timeout = timeout                      # per server
        self._sockets: dict[tuple[str, int], list[_Socket]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def query(self, qname: dns.name.Name, rdtype: int) -> dns.message.Message | Negative:
        """The first usable answer (NOERROR or NXDOMAIN; YXDOMAIN too, for
        the caller to judge), an answer without records as a ``Negative``;
        raises QueryFailed."""
        question = b"".join(bytes((len(label),)) + label for label in qname.labels).lower() \
            + struct.pack(">HH", rdtype, _IN)
        first_error = ""
        for server in self.servers:
            try:
                response = await self._ask(server, question, qname, rdtype)
            except (asyncio.TimeoutError, dns.exception.Timeout):
                first_error = first_error or "timeout"
                continue
            except OSError as err:
                first_error = first_error or (err.strerror or type(err).__name__)
                continue
            except dns.exception.DNSException as err:     # an answer that does not parse
                first_error = first_error or type(err).__name__
                continue
            rcode = response.rcode
            if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN):
                return response.message if isinstance(response, _Parsed) else response
            first_error = dns.rcode.to_text(rcode) if not first_error or first_error == "timeout" else first_error
        raise QueryFailed(first_error or "no nameservers")

    async def _ask(self, server: tuple[str, int], question: bytes, qname: dns.name.Name,
                   rdtype: int) -> _Parsed | Negative:
        loop = asyncio.get_running_loop()
        sock = await self._socket(loop, server)
        qid = _ids.getrandbits(16)
        while qid in sock.pending:
            qid = _ids.getrandbits(16)
        fut = loop.create_future()
        sock.pending[qid] = (fut, question)
        sock.sent += 1
        assert sock.transport is not None
        sock.transport.sendto(struct.pack(">HHHHHH", qid, _RD, 1, 0, 0, 0) + question)
        timer = loop.call_later(self.timeout, _expire, fut)
        try:
            data = await fut
        finally:
            timer.cancel()
            if sock.pending.get(qid, (None,))[0] is fut:
                del sock.pending[qid]
            if not sock.pending:                # idle: closed, so no socket outlives its use (or its loop)
                sock.retire()
        if data[2] & 0x02:                          # truncated: ask again over TCP
            query = dns.message.make_query(qname, rdtype)
            return _Parsed(await dns.asyncquery.tcp(query, server[0], timeout=self.timeout, port=server[1]))
        return negative(data, len(question)) or _Parsed(dns.message.from_wire(data))

    async def _socket(self, loop: asyncio.AbstractEventLoop, server: tuple[str, int]) -> _Socket:
        """A socket to ``server`` with room for one more query: one already
        open, or a new one (the socket buffer holds only so many answers
        that arrive together, so each socket carries at most SOCKET_INFLIGHT)."""
        if loop is not self._loop:                  # a new event loop (tests, a replay): new sockets
            self._sockets, self._loop = {}, loop
        pool = self._sockets.setdefault(server, [])
        for sock in pool:
            if not sock.closed and len(sock.pending) < SOCKET_INFLIGHT:
                if not sock.worn():
                    return sock
                sock.retire()
        pool[:] = [sock for sock in pool if not sock.closed]
        _transport, new = await loop.create_datagram_endpoint(_Socket, remote_addr=server)
        try:
            new.transport.get_extra_info("socket").setsockopt(  # type: ignore[union-attr]
                socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except (OSError, AttributeError):
            pass                                    # the system's default and limit stand
        pool.append(new)
        return new

    def close(self) -> None:
        for pool in self._sockets.values():
            for sock in pool:
                sock.retire()
                if sock.transport is not None:
                    sock.transport.close()
        self._sockets = {}


class Negative:
    """An answer with no records (NXDOMAIN, or NOERROR and nothing of the
    type asked): its rcode and the SOA of its authority section as (TTL,
    MINIMUM), which bound how long the negative answer may be cached.  The
    usual DNSBL answer (not listed); read here without building a message."""

    __slots__ = ("rcode", "soa")

    def __init__(self, rcode: int, soa: tuple[int, int] | None):
        self.rcode = rcode
        self.soa = soa


class _Parsed:
    """A whole message, parsed by dnspython, with its rcode where Negative has it."""

    __slots__ = ("message", "rcode")

    def __init__(self, message: dns.message.Message):
        self.message = message
        self.rcode = message.rcode()


def negative(data: bytes, question_length: int) -> Negative | None:
    """``data`` as a Negative, if it is an answer with no answer records
    (after the one question of ``question_length`` bytes); None for anything
    else, or anything this short reading cannot vouch for (then dnspython
    reads the whole message)."""
    try:
        qdcount, ancount, nscount = struct.unpack_from(">HHH", data, 4)
        rcode = data[3] & 0x0F
        if qdcount != 1 or ancount or rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or data[2] & 0x78:
            return None                             # records, several questions, another rcode or opcode
        at = 12 + question_length
        soa = None
        for _ in range(nscount):
            at = _skip_name(data, at)
            rtype, _rclass, ttl, length = struct.unpack_from(">HHIH", data, at)
            at += 10
            if at + length > len(data):
                return None
            if rtype == 6 and length >= 22 and soa is None:     # SOA: its last 4 bytes are MINIMUM
                soa = (ttl, struct.unpack_from(">I", data, at + length - 4)[0])
            at += length
        return Negative(rcode, soa)
    except (struct.error, IndexError, ValueError):
        return None


def _skip_name(data: bytes, at: int) -> int:
    """Where the name at ``at`` ends (its labels, or up to a compression pointer)."""
    while True:
        length = data[at]
        if length == 0:
            return at + 1
        if length & 0xC0 == 0xC0:
            return at + 2
        if length & 0xC0:
            raise ValueError("bad label")
        at += 1 + length


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())
