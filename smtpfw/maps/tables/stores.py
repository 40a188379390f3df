"""The connections to the stores maps query: SQLite (stdlib), PostgreSQL
(asyncpg), MySQL/MariaDB (aiomysql), LDAP (ldap3).

Why these drivers (docs/maps.md says more): asyncpg and aiomysql speak
their protocol on the event loop, so a slow database holds a coroutine, not
a worker thread; both are maintained, widely used, and install from wheels
(asyncpg) or as pure Python (aiomysql, on PyMySQL) without a C client
library.  No maintained asyncio LDAP client installs without libldap's
headers (bonsai needs them), so LDAP uses ldap3 — pure Python, strict RFC
4510, with the RFC 4515 escaping Postfix applies — in a few threads of its
own.  The drivers are extras (``pip install 'smtpfw[pgsql,mysql,ldap]'``):
a ruleset that declares such a map without its driver installed is told so.

Every store runs one query and returns its values: every non-empty column
of every row (Postfix's rule), as text.  A connection that failed, timed
out or was cancelled is closed, never reused: it may be mid-answer.
Connections are kept per process, by what they connect to, so a reloaded
ruleset keeps its connections.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit


class StoreError(Exception):
    """The store could not answer (its message says why, for the log)."""


def _values(rows: Sequence[Sequence[Any]]) -> list[str]:
    out = []
    for row in rows:
        for v in row:
            if v is None:
                continue
            if isinstance(v, (bytes, bytearray, memoryview)):
                v = bytes(v).decode("utf-8", errors="replace")
            text = str(v)
            if text:
                out.append(text)
    return out


def parse_hosts(text: str, default_port: int) -> list[tuple[str, int | str]]:
    """Postfix's ``hosts``: ``host``, ``host:port``, ``inet:host:port``,
    ``unix:/path`` (``(host, port)`` or ``("unix", path)``), separated by
    spaces or commas; localhost by default."""
    out: list[tuple[str, int | str]] = []
    for item in text.replace(",", " ").split():
        if item.startswith("unix:"):
            out.append(("unix", item[5:]))
            continue
        item = item.removeprefix("inet:")
        if item.startswith("[") and "]" in item:           # [::1]:5432
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        try:
            out.append((host, int(port) if port else default_port))
        except ValueError:
            raise ValueError(f"`{item}` is not host[:port]") from None
    return out or [("localhost", default_port)]


class Store:
    """One connection target; ``query`` gives the values or raises StoreError."""

    async def query(self, sql: str, params: list[str]) -> list[str]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class SqliteStore(Store):
    """A SQLite file, opened read-only, and opened again when another file
    is renamed over it (how a table is usually replaced).  Queries run on the event loop's
    thread: a local read is microseconds, and a write lock held by another
    process makes it wait at most the map's timeout (capped at 0.5 s) before
    the lookup fails."""

    def __init__(self, dbpath: str, timeout: float):
        self.dbpath, self.timeout = dbpath, min(timeout, 0.5)
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None

    def _connect(self) -> sqlite3.Connection:
        try:                                   # a file replaced (a new copy renamed over it) is opened again
            st = os.stat(self.dbpath)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if current != self._file:
            self._drop()
            self._file = current
        if self._conn is None:
            try:
                conn = sqlite3.connect(f"file:{self.dbpath}?mode=ro", uri=True, timeout=self.timeout,
                                       check_same_thread=False)
                conn.execute("PRAGMA query_only = ON")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {self.dbpath}: {exc}") from None
            self._conn = conn
        return self._conn

    async def query(self, sql: str, params: list[str]) -> list[str]:
        try:
            return _values(self._connect().execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            self._drop()
            raise StoreError(f"{self.dbpath}: {exc}") from None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        self._drop()


class _Pooled(Store):
    """Connections kept for reuse, at most ``size`` at once; the hosts
    are tried in order until one connects (Postfix's ``hosts``)."""

    def __init__(self, hosts: list[tuple[str, int | str]], size: int, timeout: float):
        self.hosts, self.timeout, self.size = hosts, timeout, size
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(size)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _open(self, host: str, port: int | str) -> Any:
        raise NotImplementedError

    async def _run(self, conn: Any, sql: str, params: list[str]) -> list[str]:
        raise NotImplementedError

    def _discard(self, conn: Any) -> None:
        raise NotImplementedError

    async def _connect(self) -> Any:
        problems = []
        for host, port in self.hosts:
            try:
                return await asyncio.wait_for(self._open(host, port), self.timeout)
            except Exception as exc:                    # drivers raise their own kinds
                problems.append(f"{host}:{port}: {_why(exc)}")
        raise StoreError("cannot connect: " + "; ".join(problems))

    async def query(self, sql: str, params: list[str]) -> list[str]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:              # connections belong to one loop (a test's, a worker's)
            self._idle, self._loop = [], loop
            self._slots = asyncio.Semaphore(self.size)
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                values = await self._run(conn, sql, params)
            except BaseException as exc:
                self._discard(conn)
                if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                    raise
                raise StoreError(_why(exc)) from None
            self._idle.append(conn)
            return values

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class PgsqlStore(_Pooled):
    def __init__(self, hosts, size, timeout, *, user: str, password: str, dbname: str):
        super().__init__(hosts, size, timeout)
        import asyncpg                                     # noqa: F401  (checked at load: driver_missing)
        self.user, self.password, self.dbname = user, password, dbname

    async def _open(self, host, port):
        import asyncpg
        if host == "unix":                                 # a socket directory or file: asyncpg takes the dir
            path = str(port)
            directory, name = (os.path.dirname(path), os.path.basename(path)) if not os.path.isdir(path) else (path, "")
            pg_port = int(name.rsplit(".", 1)[-1]) if name.startswith(".s.PGSQL.") else 5432
            return await asyncpg.connect(host=directory, port=pg_port, user=self.user or None,
                                         password=self.password or None, database=self.dbname, timeout=self.timeout,
                                         statement_cache_size=100)
        return await asyncpg.connect(host=host, port=int(port), user=self.user or None, password=self.password or None,
                                     database=self.dbname, timeout=self.timeout, statement_cache_size=100)

    async def _run(self, conn, sql, params):
        return _values(await conn.fetch(sql, *params))

    def _discard(self, conn):
        conn.terminate()


class MysqlStore(_Pooled):
    """Autocommit: a kept connection inside one transaction would keep
    reading the snapshot of its first query (REPEATABLE READ), never a change."""

    def __init__(self, hosts, size, timeout, *, user: str, password: str, dbname: str):
        super().__init__(hosts, size, timeout)
        import aiomysql                                    # noqa: F401
        self.user, self.password, self.dbname = user, password, dbname

    async def _open(self, host, port):
        import aiomysql
        common = dict(user=self.user, password=self.password, db=self.dbname, autocommit=True,
                      connect_timeout=self.timeout, charset="utf8mb4")
        if host == "unix":
            return await aiomysql.connect(unix_socket=str(port), **common)
        return await aiomysql.connect(host=host, port=int(port), **common)

    async def _run(self, conn, sql, params):
        async with conn.cursor() as cur:
            await cur.execute(sql, params)
            return _values(await cur.fetchall())

    def _discard(self, conn):
        conn.close()


class LdapStore(Store):
    """ldap3 in threads of its own (at most ``size``): each search holds one
    thread and one connection; a connection whose search failed or timed out
    is closed by its thread when the search ends."""

    def __init__(self, urls: list[str], size: int, timeout: float, *, bind_dn: str, bind_pw: str,
                 scope: str, attributes: list[str], size_limit: int):
        import ldap3
        self.ldap3 = ldap3
        self.urls, self.timeout = urls, timeout
        self.bind_dn, self.bind_pw = bind_dn, bind_pw
        self.scope = {"sub": ldap3.SUBTREE, "one": ldap3.LEVEL, "base": ldap3.BASE}[scope]
        self.attributes, self.size_limit = attributes, size_limit
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="smtpfw-ldap")
        self._idle: list[Any] = []

    def _connect(self):
        ldap3 = self.ldap3
        servers = []
        for url in self.urls:                  # ldap://host:port/ (ldap3 reads a trailing / as part of the port)
            parts = urlsplit(url)
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED) if parts.scheme == "ldaps" else None   # the system's CAs
            servers.append(ldap3.Server(parts.hostname or "localhost", port=parts.port, use_ssl=tls is not None,
                                        tls=tls, connect_timeout=self.timeout))
        pool = ldap3.ServerPool(servers, ldap3.FIRST, active=1, exhaust=False) if len(servers) > 1 else servers[0]
        conn = ldap3.Connection(pool, user=self.bind_dn or None, password=self.bind_pw or None,
                                # whole seconds (ldap3 packs it into SO_RCVTIMEO); a session waits only
                                # the map's timeout regardless (Table.ask)
                                receive_timeout=max(1, math.ceil(self.timeout)), raise_exceptions=True, read_only=True,
                                auto_referrals=False)
        conn.open()
        conn.bind()
        return conn

    def _search(self, base: str, flt: str) -> list[str]:
        conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._connect()
            conn.search(base, flt, self.scope, attributes=self.attributes, size_limit=self.size_limit,
                        time_limit=max(1, int(self.timeout)))
            values = []
            for entry in conn.response or ():
                if entry.get("type") != "searchResEntry":
                    continue
                attrs = entry.get("raw_attributes") or {}
                for name in self.attributes:
                    for v in _attr(attrs, name):
                        values.append(v)
        except Exception as exc:
            if conn is not None:
                try:
                    conn.unbind()
                except Exception:
                    pass
            if isinstance(exc, self.ldap3.core.exceptions.LDAPNoSuchObjectResult):
                return []
            raise StoreError(_why(exc)) from None
        self._idle.append(conn)
        return _values([values])

    async def search(self, base: str, flt: str) -> list[str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._search, base, flt)

    async def query(self, sql: str, params: list[str]) -> list[str]:      # not used: ldap searches
        raise StoreError("an LDAP map is searched, not queried")

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.unbind()
            except Exception:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)


def _attr(attrs: dict, name: str) -> list[str]:
    """An attribute's values; LDAP attribute names are case-insensitive."""
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return [bytes(v).decode("utf-8", errors="replace") for v in values]
    return []


DRIVERS = {"pgsql": "asyncpg", "mysql": "aiomysql", "ldap": "ldap3"}


def driver_missing(kind: str) -> str | None:
    """Why ``kind`` maps cannot be used here (their driver is not installed), or None."""
    module = DRIVERS.get(kind)
    if module is None:
        return None
    import importlib.util
    if importlib.util.find_spec(module) is None:
        return (f"{kind} maps need the Python package {module}, which is not installed: "
                f"pip install 'smtpfw[{kind}]'")
    return None


_STORES: dict[tuple, Store] = {}


def shared_store(key: tuple, make) -> Store:
    """The process's store for ``key`` (what it connects to), made once."""
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = make()
    return store


async def close_stores() -> None:
    """Close every store's connections (server shutdown)."""
    stores = list(_STORES.values())
    _STORES.clear()
    for store in stores:
        try:
            await store.close()
        except Exception:
            pass
