"""A map whose entries live in a database or directory: what it asks, how
long it keeps the answers, and what it says when the store cannot answer.

A lookup is one query with the key bound as a parameter (smtpfw.maps.tables
.template).  Answers are cached per process and per map — an entry for
``cache_ttl``, no entry for ``negative_cache_ttl``, an error never — up to
``cache_size`` keys (least recently used dropped first); the same key asked
by many sessions at once is asked of the store once.  A lookup waits at most
``timeout``; then, or when the store fails, the answer is an error, and the
map's ``fail`` setting decides what rules see (smtpfw.lang.compiler).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import OrderedDict

from smtpfw.diagnostics import Code, Diagnostic, Span
from smtpfw.checks.tableresult import NOT_FOUND, TableAnswer, unavailable
from smtpfw.maps.tables.cf import TableConfig, read_config
from smtpfw.maps.tables.stores import (LdapStore, MysqlStore, PgsqlStore, SqliteStore, Store, StoreError,
                                       driver_missing, parse_hosts, shared_store)
from smtpfw.maps.tables.template import Piece, SqlQuery, TemplateError, compile_sql, expand, parse

log = logging.getLogger("smtpfw.maps")


class Table:
    """One declared map (``map NAME = pgsql "file.cf"``)."""

    def __init__(self, name: str, config: TableConfig, *, query: SqlQuery | None = None,
                 ldap: tuple | None = None, result_format: tuple[Piece, ...] = (("s",),),
                 domains: frozenset[str] = frozenset(), expansion_limit: int = 0, make_store=None):
        self.name, self.config, self.kind = name, config, config.kind
        self.settings = config.settings
        self.query, self.ldap = query, ldap            # ldap: (base pieces, filter pieces)
        self.result_format, self.domains, self.expansion_limit = result_format, domains, expansion_limit
        self._make_store = make_store
        self._cache: OrderedDict[str, tuple[float, TableAnswer]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self.asked = 0            # queries sent to the store (tests count cache hits by it)
        self.failures = 0

    def entries(self):
        """Nothing to read ahead: the entries are in the store (lint's W305 reads file maps only)."""
        return iter(())

    def __len__(self) -> int:
        return 0

    @property
    def fail_open(self) -> bool:
        return self.settings.fail == "open"

    def _store(self) -> Store:
        return self._make_store()

    def cached(self, key: str) -> TableAnswer | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry[1]

    def _keep(self, key: str, answer: TableAnswer) -> None:
        s = self.settings
        ttl = s.cache_ttl if answer.status == "found" else s.negative_cache_ttl if answer.status == "none" else 0
        if ttl <= 0 or s.cache_size <= 0:
            return
        self._cache[key] = (time.monotonic() + ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > s.cache_size:
            self._cache.popitem(last=False)

    async def ask(self, key: str) -> TableAnswer:
        """The answer for ``key``, from the cache or the store, within the
        map's timeout.  Never raises."""
        answer = self.cached(key)
        if answer is not None:
            return answer
        pending = self._inflight.get(key)
        if pending is None:
            pending = self._inflight[key] = asyncio.ensure_future(self._query(key))

            def forget(_done: asyncio.Future, key: str = key) -> None:
                self._inflight.pop(key, None)
            pending.add_done_callback(forget)
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.settings.timeout)
        except asyncio.TimeoutError:
            return unavailable(f"map {self.name}: no answer within {self.settings.timeout:g}s")

    async def _query(self, key: str) -> TableAnswer:
        if not self._eligible(key):
            return NOT_FOUND
        try:
            # a session waits ``timeout``; the query itself is given longer
            # (its answer is cached for the next sessions), but not forever:
            # a connection stuck on a frozen server is cancelled and closed
            values = await asyncio.wait_for(self._values(key), self.settings.timeout * 5 + 5)
        except asyncio.TimeoutError:
            return self._failed(f"no answer within {self.settings.timeout * 5 + 5:g}s; the connection was closed")
        except StoreError as exc:
            return self._failed(str(exc))
        except Exception as exc:                       # a driver's surprise: an error answer, logged
            log.exception("map %s: lookup failed", self.name)
            return self._failed(f"{type(exc).__name__}: {exc}")
        if values is None:
            answer = NOT_FOUND
        else:
            answer = self._format(key, values)
        self._keep(key, answer)
        return answer

    def _failed(self, why: str) -> TableAnswer:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            log.warning("map %s (%s): %s (%d failures)", self.name, self.kind, why, self.failures)
        return unavailable(f"map {self.name}: {why}")

    def _eligible(self, key: str) -> bool:
        """Postfix's ``domain`` setting: only user@domain keys in those
        domains.  A key with a NUL is never asked (no entry): no store keeps
        one, and PostgreSQL refuses the query."""
        if "\x00" in key:
            return False
        if not self.domains:
            return True
        local, at, domain = key.rpartition("@")
        return bool(at and local and domain in self.domains)

    async def _values(self, key: str) -> list[str] | None:
        """The store's values for ``key``; None when an expansion suppresses the lookup."""
        if self.ldap is not None:
            base_pieces, filter_pieces = self.ldap
            from ldap3.utils.conv import escape_filter_chars
            from ldap3.utils.dn import escape_rdn
            base = expand(base_pieces, key, escape=escape_rdn)
            flt = expand(filter_pieces, key, escape=escape_filter_chars)
            if base is None or flt is None:
                return None
            if not flt.startswith("("):
                flt = f"({flt})"
            store = self._store()
            self.asked += 1
            return await store.search(base, flt)          # type: ignore[attr-defined]
        assert self.query is not None
        params = self.query.bind(key)
        if params is None:
            return None
        self.asked += 1
        return await self._store().query(self.query.text, params)

    def _format(self, key: str, values: list[str]) -> TableAnswer:
        out = []
        for v in values:
            text = expand(self.result_format, key, result=v)
            if text:                                       # a suppressed or empty result is no result
                out.append(text)
        if self.expansion_limit and len(out) > self.expansion_limit:
            return self._failed(f"{len(out)} results for {key!r}, more than expansion_limit {self.expansion_limit}")
        return TableAnswer("found", ", ".join(out)) if out else NOT_FOUND


# ---- loading ----------------------------------------------------------------

def load_table(name: str, path: str, shown: str, kind: str) -> tuple[Table | None, list[Diagnostic]]:
    """Read ``path`` (a Postfix-format settings file) as a ``kind`` map named
    ``name``.  Opens no connection: the first lookup does."""
    config, diags = read_config(path, shown, kind)
    if config is None:
        return None, diags
    missing = driver_missing(kind)
    if missing:
        diags.append(Diagnostic(Code.E306_TABLE_CONFIG_ERROR, missing, Span.point(shown, 1, 1)))
        return None, diags
    try:
        table = _build(name, config, os.path.dirname(path))
    except _Bad as bad:
        diags.append(Diagnostic(Code.E306_TABLE_CONFIG_ERROR, bad.message, config.span(bad.param), help=bad.help))
        return None, diags
    return table, diags


class _Bad(Exception):
    def __init__(self, param: str, message: str, help: str | None = None):
        super().__init__(message)
        self.param, self.message, self.help = param, message, help


def _template(config: TableConfig, name: str, default: str = "", text: str | None = None) -> tuple[Piece, ...]:
    try:
        return parse(config.params.get(name, default) if text is None else text)
    except TemplateError as exc:
        raise _Bad(name, f"`{name}`: {exc}") from None


def _int(config: TableConfig, name: str, default: int) -> int:
    text = config.params.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _Bad(name, f"`{name} = {text}` is not a whole number") from None
    if value < 0:
        raise _Bad(name, f"`{name} = {text}` is negative")
    return value


def _build(name: str, config: TableConfig, base_dir: str) -> Table:
    p, kind, s = config.params, config.kind, config.settings
    result_format = _template(config, "result_format", "%s")
    domains = frozenset(d.lower().rstrip(".") for d in p.get("domain", "").replace(",", " ").split())
    if any("/" in d or ":" in d for d in domains):
        raise _Bad("domain", "`domain` takes domain names; a file or table there is not supported by smtpfw",
                   help="list the domains: domain = example.com, example.org")
    limit = _int(config, "expansion_limit", 0)
    common = dict(result_format=result_format, domains=domains, expansion_limit=limit)
    if kind == "ldap":
        return _build_ldap(name, config, common)
    text = p.get("query") or _legacy_query(p)
    try:
        query = compile_sql(text, kind)
    except TemplateError as exc:
        raise _Bad("query", f"`query`: {exc}") from None
    if not query.params:
        raise _Bad("query", "`query` does not use the key (no %s, %u, %d ...): every lookup would give the same answer",
                   help="e.g. query = SELECT 1 FROM users WHERE email = '%s'")
    if kind == "sqlite":
        dbpath = os.path.join(base_dir, p["dbpath"])
        make = lambda: shared_store(("sqlite", dbpath), lambda: SqliteStore(dbpath, s.timeout))  # noqa: E731
    else:
        default_port = 5432 if kind == "pgsql" else 3306
        try:
            hosts = parse_hosts(p.get("hosts", ""), default_port)
        except ValueError as exc:
            raise _Bad("hosts", f"`hosts`: {exc}") from None
        cls = PgsqlStore if kind == "pgsql" else MysqlStore
        ident = (kind, tuple(hosts), p.get("user", ""), p.get("password", ""), p["dbname"], s.pool_size, s.timeout)
        make = lambda: shared_store(ident, lambda: cls(hosts, s.pool_size, s.timeout, user=p.get("user", ""),  # noqa: E731
                                                       password=p.get("password", ""), dbname=p["dbname"]))
    return Table(name, config, query=query, make_store=make, **common)    # type: ignore[arg-type]


def _legacy_query(p: dict[str, str]) -> str:
    """Postfix's pre-2.2 form: table, select_field, where_field, additional_conditions."""
    return (f"SELECT {p['select_field']} FROM {p['table']} WHERE {p['where_field']} = '%s' "
            f"{p.get('additional_conditions', '')}").strip()


def _build_ldap(name: str, config: TableConfig, common: dict) -> Table:
    p, s = config.params, config.settings
    # "dc=example, dc=org", as Postfix files often write it: ldap3 wants no
    # spaces around the commas between RDNs (an escaped comma stays)
    base = _template(config, "search_base", text=re.sub(r"(?<!\\)\s*,\s*", ",", p["search_base"].strip()))
    flt = _template(config, "query_filter", "mailacceptinggeneralid=%s")
    attrs = [a for a in p.get("result_attribute", "maildrop").replace(",", " ").split() if a]
    if not attrs:
        raise _Bad("result_attribute", "`result_attribute` names no attribute")
    scope = p.get("scope", "sub").lower()
    if scope not in ("sub", "one", "base"):
        raise _Bad("scope", f"`scope = {scope}`: sub, one or base")
    bind = p.get("bind", "yes").lower()
    if bind not in ("yes", "no", "none"):
        raise _Bad("bind", f"`bind = {bind}`: yes (with bind_dn and bind_pw) or no (anonymous); "
                           "SASL binds are not supported")
    if p.get("version", "3") != "3":
        raise _Bad("version", "smtpfw speaks LDAP version 3 only")
    port = _int(config, "server_port", 389)
    urls = []
    for host in p.get("server_host", "localhost").replace(",", " ").split():
        if host.startswith("ldapi://"):
            raise _Bad("server_host", "`ldapi://` (LDAP over a Unix socket) is not supported by smtpfw",
                       help="use ldap://127.0.0.1 or ldaps://host (the certificate is verified)")
        if host.startswith(("ldap://", "ldaps://")):
            urls.append(host)
        else:
            urls.append(f"ldap://{host}" + ("" if ":" in host else f":{port}"))
    bind_dn = p.get("bind_dn", "") if bind == "yes" else ""
    bind_pw = p.get("bind_pw", "") if bind == "yes" else ""
    size_limit = _int(config, "size_limit", 0)
    ident = ("ldap", tuple(urls), bind_dn, bind_pw, scope, tuple(attrs), size_limit, s.pool_size, s.timeout)
    make = lambda: shared_store(ident, lambda: LdapStore(urls, s.pool_size, s.timeout, bind_dn=bind_dn,  # noqa: E731
                                                         bind_pw=bind_pw, scope=scope, attributes=attrs,
                                                         size_limit=size_limit))
    return Table(name, config, ldap=(base, flt), make_store=make, **common)
