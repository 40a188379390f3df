"""A small pipelined Redis client: what the state store needs, no more.

One connection per client (the ``RedisBackend`` of a process, on that
process's event loop; used from another event loop, as a test or a forked
worker may, it connects again there).  Every caller's command goes on it
without waiting for the others' replies: the commands of one turn of the
event loop are written together at its end, and the replies, which Redis
sends in the order of the commands, are matched to the callers in that
order (a queue of futures).  RESP2 is parsed by hand from what arrives;
bulk strings are given as ``str`` (UTF-8), integers as ``int``, arrays as
lists, a null as None, an error reply as a ``ReplyError`` raised to its
caller (the connection goes on).

What redis-py did per command and this does not: a connection taken from
and given back to a pool (with its lock and condition), a socket timeout
per read, its retry and event hooks, its RESP3-capable parser.  Measured in
docs/state.md ("Performance").

- **Connecting**: on the first call, and on the first call after the
  connection was lost (never in the background): TCP, then ``AUTH`` (the
  URL's user and password) and ``SELECT`` (the URL's db number, if not 0),
  all within ``connect_timeout``.  Callers that arrive meanwhile wait for
  the same connection.  A failed connect is that call's ``ConnectionError``.
- **Losing it**: every caller still waiting gets ``ConnectionError`` at
  once; the next call connects again.  A connection that has had a
  command waiting for ``stall`` seconds without a byte from Redis (a
  stopped server, a path that drops packets without a reset) is given up
  by the next call, the same way.
- **A caller that gives up** (its task cancelled, as the ``Store``'s
  timeout does): its future is cancelled, its place in the queue stays,
  and its reply is read and dropped when it comes, so the others' replies
  stay theirs.
- **No retries**: a command is sent once.  ``Store`` decides what a
  failure means (timeouts, the breaker, fail-open).  The one second
  attempt is ``evalsha``'s: ``EVAL`` after a ``NOSCRIPT`` reply (the
  server was restarted or its scripts flushed), which is not a failure.

URLs: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``.  Not supported here
(``RedisBackend`` keeps redis-py for them): ``rediss://`` (TLS),
``unix://`` sockets, query options (``?db=``, ``?protocol=3`` ...), Redis
Cluster, Sentinel.  ``supports(url)`` says which is which.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from typing import Any, Sequence
from urllib.parse import unquote, urlsplit

Reply = Any            # str | int | list | None | ReplyError (inside an array)


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-WRONGTYPE ...``): the
    command was refused; the connection is fine."""


class NoScriptError(ReplyError):
    """``-NOSCRIPT``: EVALSHA of a script the server does not have."""


class ProtocolError(ConnectionError):
    """What Redis sent is not RESP2 (or a reply came that nobody asked
    for): the connection is closed, its callers get this."""


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more data."""


_INCOMPLETE = _Incomplete()


def supports(url: str) -> bool:
    """True when ``RespClient`` can serve ``url`` (see the module's doc)."""
    try:
        u = urlsplit(url)
        if u.port is not None and not 0 < u.port < 65536:    # u.port raises ValueError on a bad port
            return False
    except ValueError:
        return False
    if u.scheme != "redis" or u.query or u.fragment or not u.hostname:
        return False
    path = u.path.strip("/")
    return path == "" or path.isdigit()


def pack(args: Sequence[Any]) -> bytes:
    """One command as RESP2: an array of bulk strings."""
    return b"*%d\r\n%s" % (len(args), bulks(args))


def bulks(args: Sequence[Any]) -> bytes:
    """``args`` as RESP2 bulk strings, one after the other (an array's items)."""
    out = []
    for a in args:
        if isinstance(a, str):
            b = a.encode()
        elif isinstance(a, bytes):
            b = a
        elif isinstance(a, int):
            b = b"%d" % a
        elif isinstance(a, float):
            b = repr(a).encode()
        else:
            raise TypeError(f"a Redis argument must be str, bytes, int or float, not {type(a).__name__}")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse(buf: bytes, pos: int) -> tuple[Reply, int]:
    """The reply that starts at ``pos``: (value, where the next starts).
    Raises ``_Incomplete`` when ``buf`` ends inside it, ``ProtocolError``
    when it is not RESP2."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        raise _INCOMPLETE
    kind = buf[pos]
    try:
        if kind == 36:                                   # $ bulk string
            n = int(buf[pos + 1:nl])
            if n < 0:
                return None, nl + 2
            start, end = nl + 2, nl + 2 + n
            if len(buf) < end + 2:
                raise _INCOMPLETE
            if buf[end:end + 2] != b"\r\n":
                raise ProtocolError(f"redis: a bulk string of {n} bytes not followed by CRLF")
            return buf[start:end].decode("utf-8", "surrogateescape"), end + 2
        if kind == 42:                                   # * array
            n = int(buf[pos + 1:nl])
            if n < 0:
                return None, nl + 2
            pos = nl + 2
            items = []
            for _ in range(n):
                item, pos = parse(buf, pos)
                items.append(item)
            return items, pos
        if kind == 58:                                   # : integer
            return int(buf[pos + 1:nl]), nl + 2
        if kind == 43:                                   # + simple string
            return buf[pos + 1:nl].decode("utf-8", "surrogateescape"), nl + 2
        if kind == 45:                                   # - error
            text = buf[pos + 1:nl].decode("utf-8", "replace")
            return (NoScriptError(text) if text.startswith("NOSCRIPT") else ReplyError(text)), nl + 2
    except ValueError as err:                            # int() of what is not a number
        raise ProtocolError(f"redis: malformed reply {bytes(buf[pos:nl + 2])[:80]!r}") from err
    raise ProtocolError(f"redis: unknown reply type {bytes(buf[pos:pos + 1])!r} in {bytes(buf[pos:nl + 2])[:80]!r}")


class _Connection(asyncio.Protocol):
    """One TCP connection: the futures of the commands sent on it, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str):
        self.loop = loop
        self.where = where
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.buf = b""
        self.out: list[bytes] = []                       # commands not yet written (until the end of this turn)
        self.lost: BaseException | None = None           # set once: the connection is unusable
        self.progress = 0.0                              # loop time of the last reply, or of the first wait since

    # ---- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport                       # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.give_up(self.lost or ConnectionError(f"redis {self.where}: connection lost"
                                                  + (f" ({exc})" if exc else "")))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        waiting = self.waiting
        pos, size = 0, len(buf)
        try:
            while pos < size:
                value, pos = parse(buf, pos)
                if not waiting:
                    raise ProtocolError(f"redis {self.where}: a reply nobody asked for")
                f = waiting.popleft()
                if not f.done():                         # done: its caller gave up; the reply is dropped
                    if isinstance(value, ReplyError):
                        f.set_exception(value)
                    else:
                        f.set_result(value)
        except _Incomplete:
            pass
        except ProtocolError as err:
            self.give_up(err)
            return
        self.buf = buf[pos:] if pos < size else b""
        self.progress = self.loop.time()

    def eof_received(self) -> bool | None:
        return None                                      # close: connection_lost follows

    # ---- for the client -----------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future:
        f = self.loop.create_future()
        transport = self.transport
        if transport is None or transport.is_closing():  # a write failed, or EOF: connection_lost is coming
            self.give_up(ConnectionError(f"redis {self.where}: connection lost"))
        if self.lost is not None:
            f.set_exception(copy(self.lost))
            return f
        if not self.waiting:
            self.progress = self.loop.time()
        self.waiting.append(f)
        if not self.out:                                 # the commands of this turn of the loop: one write
            self.loop.call_soon(self.flush)
        self.out.append(data)
        return f

    def flush(self) -> None:
        out = self.out
        if out and self.lost is None and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def give_up(self, err: BaseException) -> None:
        """Unusable from now on: every waiting caller gets ``err``."""
        if self.lost is None:
            self.lost = err
        if self.transport is not None:
            self.transport.abort()
        waiting, self.waiting = self.waiting, collections.deque()
        for f in waiting:
            if not f.done():
                f.set_exception(copy(self.lost))
        self.buf = b""
        self.out.clear()


class RespClient:
    """A pipelined client of one Redis server (see the module's doc).

    ``connect_timeout``: seconds for TCP, AUTH and SELECT together;
    ``stall``: seconds a command may wait without any reply before the
    next call gives the connection up."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, *, username: str | None = None,
                 password: str | None = None, db: int = 0, connect_timeout: float = 1.0, stall: float = 2.0):
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.connect_timeout, self.stall = connect_timeout, stall
        self.where = f"{host}:{port}"
        self.connections = 0                             # connections made (tests, logs)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future | None = None
        self._scripts: dict[str, bytes] = {}             # sha -> the script, for EVAL after NOSCRIPT

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "RespClient":
        if not supports(url):
            raise ValueError(f"not a redis://[[user]:password@]host[:port][/db] URL: {url!r}")
        u = urlsplit(url)
        path = u.path.strip("/")
        return cls(u.hostname or "127.0.0.1", u.port or 6379,
                   username=unquote(u.username) if u.username else None,
                   password=unquote(u.password) if u.password is not None else None,
                   db=int(path) if path else 0, **options)

    # ---- commands ------------------------------------------------------------

    async def call(self, *args: Any) -> Reply:
        """One command; its reply, or ``ReplyError`` / ``ConnectionError``."""
        return await self.send(pack(args))

    async def send(self, command: bytes) -> Reply:
        """``command`` already packed (``pack``)."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        if conn is None or conn.lost is not None or conn.loop is not loop or (
                conn.waiting and loop.time() - conn.progress > self.stall):
            conn = await self._connection(loop)
        return await conn.send(command)

    def script(self, text: str) -> "Script":
        return Script(self, text)

    async def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Reply:
        """The script registered as ``sha`` (``script``), by EVALSHA; by
        EVAL when the server does not have it (``NOSCRIPT``), which loads it."""
        n = 3 + len(keys) + len(args)
        rest = bulks((len(keys), *keys, *args))
        try:
            return await self.send(b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n%s" % (n, sha.encode(), rest))
        except NoScriptError:
            text = self._scripts[sha]
            return await self.send(b"*%d\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n%s" % (n, len(text), text, rest))

    # ---- the connection ----------------------------------------------------

    async def _connection(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        conn = self._conn
        if (conn is not None and conn.loop is not loop) or (
                self._connecting is not None and self._connecting.get_loop() is not loop):
            self._forget()                               # made on another event loop (tests): forget it
        elif conn is not None and conn.lost is None and conn.waiting and loop.time() - conn.progress > self.stall:
            conn.give_up(ConnectionError(f"redis {self.where}: no reply for {self.stall:g} s"))
        if self._connecting is None or self._connecting.done():
            self._connecting = loop.create_task(self._connect(loop))
            self._connecting.add_done_callback(_retrieve)
        # shielded: a caller that gives up does not stop the connect for the others
        connecting = self._connecting
        try:
            made: _Connection = await asyncio.shield(connecting)
        except ConnectionError as err:
            raise copy(err) from err.__cause__           # each caller its own exception
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if connecting.cancelled() and task is not None and not task.cancelling():
                raise ConnectionError(f"redis {self.where}: closed while connecting") from None
            raise                                        # the caller gave up
        if made.lost is not None:                        # lost again already
            raise copy(made.lost)
        return made

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        self._conn = None
        conn = _Connection(loop, self.where)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: conn, self.host, self.port)
                hello = []
                if self.password is not None:
                    hello.append(conn.send(pack(("AUTH", self.username, self.password) if self.username
                                                else ("AUTH", self.password))))
                if self.db:
                    hello.append(conn.send(pack(("SELECT", self.db))))
                for reply in await asyncio.gather(*hello, return_exceptions=True):   # pipelined
                    if isinstance(reply, BaseException):
                        raise reply
        except BaseException as err:
            lost: BaseException
            if isinstance(err, TimeoutError):            # asyncio.timeout's (an OSError too: first)
                lost = ConnectionError(f"redis {self.where}: not connected within {self.connect_timeout:g} s")
            elif isinstance(err, ConnectionError):       # refused, reset, ProtocolError
                lost = err
            elif isinstance(err, (OSError, ReplyError)):  # no route, a name that does not resolve; AUTH, SELECT
                lost = ConnectionError(f"redis {self.where}: {err}")
            else:                                        # cancelled (close()), or a bug
                conn.give_up(ConnectionError(f"redis {self.where}: connect interrupted"))
                raise
            conn.give_up(lost)
            if lost is err:
                raise
            raise lost from err
        self.connections += 1
        self._conn = conn
        return conn

    def _forget(self) -> None:
        """Drop a connection of another (finished) event loop without
        touching it: its loop may be closed."""
        conn, self._conn, self._connecting = self._conn, None, None
        if conn is not None:
            conn.lost = conn.lost or ConnectionError(f"redis {self.where}: made on another event loop")
            try:
                if conn.transport is not None and not conn.loop.is_closed():
                    conn.transport.abort()
            except RuntimeError:
                pass

    async def close(self) -> None:
        """Close the connection (the next call would open one again).
        Callers still waiting get ``ConnectionError``."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()
        conn, self._conn = self._conn, None
        if conn is None or conn.transport is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if conn.loop is not loop:
            self._conn = conn
            self._forget()
            return
        conn.lost = conn.lost or ConnectionError(f"redis {self.where}: closed")
        for f in conn.waiting:
            if not f.done():
                f.set_exception(copy(conn.lost))
        conn.waiting.clear()
        conn.out.clear()
        conn.transport.close()
        await asyncio.sleep(0)                           # let connection_lost run


class Script:
    """A Lua script run by EVALSHA (EVAL after NOSCRIPT)."""

    __slots__ = ("client", "sha")

    def __init__(self, client: RespClient, text: str):
        body = text.encode()
        self.client, self.sha = client, hashlib.sha1(body).hexdigest()
        client._scripts[self.sha] = body

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Reply:
        return await self.client.evalsha(self.sha, keys, args)


def copy(err: BaseException) -> BaseException:
    """A fresh exception like ``err`` for each caller (one instance raised in
    many tasks would collect all their tracebacks)."""
    try:
        new = type(err)(*err.args)
    except Exception:  # noqa: BLE001 -- an exception type with another signature
        return ConnectionError(str(err))
    new.__cause__ = err.__cause__
    return new


def _retrieve(task: asyncio.Future) -> None:
    """A connect's failure is its callers'; if all of them gave up, it is
    nobody's (no "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


__all__ = ["NoScriptError", "ProtocolError", "ReplyError", "RespClient", "Script", "pack", "parse", "supports"]
