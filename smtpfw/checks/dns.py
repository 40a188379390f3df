"""Production DNS lookups: DNSBL, RHSBL, PTR (FCrDNS), "resolvable" and
"addresses" (a name's A and AAAA records).

One ``Resolver`` per process: its cache and in-flight table are shared by all
SMTP sessions, so a burst of connections from one IP costs one query.  A
``DnsSession`` runs one SMTP session's lookups concurrently under an overall
time budget, so a slow DNS server delays a session by at most that budget.

Nothing here raises on DNS trouble: every problem becomes a ``failed`` answer
which the rules decide about (tempfail, ignore, ...).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Iterable

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename

from smtpfw import metrics

from .dnsclient import Negative, QueryFailed, UdpClient
from .dnsresult import PASS_CACHED, DnsAnswer, Lookup, LookupKind, failed
from .health import HealthBoard

if TYPE_CHECKING:
    from smtpfw.state.passes import PassCache

log = logging.getLogger("smtpfw.dns")

FAILURE_TTL = 5.0        # short, so a dead server is not hammered but recovers
LOG_INTERVAL = 60.0      # one warning per (zone, error) per interval
MAX_PTR_NAMES = 10       # forward-confirm at most this many PTR names
MAX_ADDRESSES = 16       # addresses kept per family (A, AAAA) of an "addresses" answer
BUDGET_EXCEEDED = "dns budget exceeded"

_LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")
_ERROR_NET = ipaddress.ip_network("127.255.255.0/24")   # Spamhaus error codes

_A, _AAAA, _TXT = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT
_MX, _PTR = dns.rdatatype.MX, dns.rdatatype.PTR


class _Failure(Exception):
    """A lookup cannot give a usable answer; the text ends up in DnsAnswer.error."""


class Resolver:
    """Caching, coalescing asynchronous resolver for every Lookup kind."""

    def __init__(
        self,
        nameservers: list[tuple[str, int]] | None = None,
        timeout: float = 2.0,
        cache_size: int = 10000,
        min_ttl: float = 0,
        max_ttl: float = 3600,
        negative_ttl: float = 300,
    ) -> None:
        if nameservers is None:
            try:
                res = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                log.warning("no usable /etc/resolv.conf, using 127.0.0.1")
                res = dns.asyncresolver.Resolver(configure=False)
                res.nameservers = ["127.0.0.1"]
        else:
            res = dns.asyncresolver.Resolver(configure=False)
            res.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in nameservers]
        # The whole query may take `timeout`; split it over the servers so a
        # dead first server still leaves time for the others (one round only).
        res.lifetime = timeout
        res.timeout = timeout / max(1, len(res.nameservers))
        res.cache = None          # we cache final answers ourselves
        res.search = []
        self._res = res           # what resolv.conf says; the queries go through self._udp
        self._udp = UdpClient([_address_port(ns, res.port) for ns in res.nameservers], res.timeout)
        self.timeout = timeout
        self.cache_size = cache_size
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self._cache: OrderedDict[Lookup, tuple[float, DnsAnswer]] = OrderedDict()
        self._inflight: dict[Lookup, asyncio.Task[DnsAnswer]] = {}
        self._wanted: dict[Lookup, int] = {}      # sessions still waiting for an in-flight lookup
        self.health = HealthBoard()               # DNS lists found unhealthy are skipped (checks/health.py)
        # DNSBL passes (dns.pass_ttl): a "clear" answer remembered in the state
        # store, for all workers and nodes, longer than the DNS answer's own TTL.
        self.passes: PassCache | None = None
        self._logged: dict[tuple[str, str], float] = {}

    # -- public -------------------------------------------------------------

    @property
    def nameservers(self) -> list[str]:
        """The addresses this resolver asks."""
        return [str(getattr(ns, "address", ns)) for ns in self._res.nameservers]

    def cached(self, lookup: Lookup) -> DnsAnswer | None:
        """The cached answer, if fresh, or a pass this worker knows of;
        synchronous so hot paths need no task."""
        answer = self._cached(lookup)
        if answer is None and self.passes is not None and lookup.kind is LookupKind.DNSBL \
                and self.passes.seen(_pass_key(lookup)):
            metrics.dns_pass_cached(lookup.zone)
            return PASS_CACHED
        return answer

    def _cached(self, lookup: Lookup) -> DnsAnswer | None:
        entry = self._cache.get(lookup)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._cache[lookup]
            return None
        self._cache.move_to_end(lookup)
        return entry[1]

    def submit(self, lookup: Lookup) -> asyncio.Future[DnsAnswer]:
        """Start ``lookup`` or join the identical one already in flight.

        The returned task never fails; do not cancel it (it is shared), await
        it through ``asyncio.shield``/``asyncio.wait`` instead, and call
        ``release`` when the answer is no longer wanted.  Must be called with
        a running event loop.
        """
        loop = asyncio.get_running_loop()
        hit = self.cached(lookup)
        if hit is not None:
            fut: asyncio.Future[DnsAnswer] = loop.create_future()
            fut.set_result(hit)
            return fut
        task = self._inflight.get(lookup)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(self._run(lookup))
            self._inflight[lookup] = task
            task.add_done_callback(lambda t, k=lookup: self._done(k, t))
        self._wanted[lookup] = self._wanted.get(lookup, 0) + 1
        return task

    def release(self, lookup: Lookup) -> None:
        """One waiter gave up on ``lookup`` (its session ended, or its budget
        was spent); the query is cancelled when nobody waits for it any more,
        so an abandoned session leaves no DNS work behind."""
        left = self._wanted.get(lookup, 0) - 1
        if left > 0:
            self._wanted[lookup] = left
            return
        self._wanted.pop(lookup, None)
        task = self._inflight.pop(lookup, None)
        if task is not None and not task.done():
            task.cancel()

    async def lookup(self, lookup: Lookup, *, passes: bool = True) -> DnsAnswer:
        """Answer ``lookup``; never raises except CancelledError.  With
        ``passes`` false the DNSBL pass cache is not consulted (the health
        checks must see what the list answers now)."""
        if not passes:
            return self._cached(lookup) or await self._run(lookup, use_passes=False)
        hit = self.cached(lookup)
        if hit is not None:
            return hit
        fut = self.submit(lookup)
        try:
            return await asyncio.shield(fut)
        finally:
            if not fut.done():
                self.release(lookup)
            else:
                self._wanted.pop(lookup, None)

    def clear(self) -> None:
        self._cache.clear()

    # -- internals ----------------------------------------------------------

    def _done(self, lookup: Lookup, task: asyncio.Task) -> None:
        if self._inflight.get(lookup) is task:
            del self._inflight[lookup]
            self._wanted.pop(lookup, None)

    async def _run(self, lookup: Lookup, *, use_passes: bool = True) -> DnsAnswer:
        passes = self.passes if use_passes and lookup.kind is LookupKind.DNSBL else None
        if passes is not None and await passes.passed(_pass_key(lookup)):
            metrics.dns_pass_cached(lookup.zone)
            return PASS_CACHED
        started = time.monotonic()
        try:
            answer, ttl = await self._resolve(lookup)
        except asyncio.CancelledError:
            raise
        except _Failure as e:
            answer, ttl = failed(str(e)), FAILURE_TTL
        except Exception as e:  # a bug or an odd dnspython error: still an answer
            answer, ttl = failed(_short_error(e)), FAILURE_TTL
        if answer.failed:
            self._warn(lookup, answer.error)
            ttl = FAILURE_TTL
        elif answer.error:   # an answer with a failed part (see _addresses): refresh soon
            self._warn(lookup, answer.error)
            ttl = FAILURE_TTL
        self._store(lookup, answer, ttl)
        metrics.dns_lookup(lookup.kind.value, lookup.zone, answer.status, time.monotonic() - started)
        if passes is not None and answer.status == "clear":
            await passes.remember(_pass_key(lookup))
        return answer

    def _store(self, lookup: Lookup, answer: DnsAnswer, ttl: float) -> None:
        if not answer.failed and not answer.error:
            ttl = min(max(ttl, self.min_ttl), self.max_ttl)
        if ttl <= 0 or self.cache_size <= 0:
            return
        self._cache[lookup] = (time.monotonic() + ttl, answer)
        self._cache.move_to_end(lookup)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _warn(self, lookup: Lookup, error: str) -> None:
        key = (lookup.zone or lookup.kind.value, error)
        now = time.monotonic()
        last = self._logged.get(key)
        if last is not None and now - last < LOG_INTERVAL:
            return
        if len(self._logged) > 1000:
            self._logged.clear()
        self._logged[key] = now
        where = f" in {lookup.zone}" if lookup.zone else ""
        log.warning("dns %s lookup of %s%s failed: %s (further such failures "
                    "silenced for %ds)", lookup.kind.value, lookup.name, where,
                    error, LOG_INTERVAL)

    async def _query(self, qname: dns.name.Name, rdtype) -> tuple[str, object, float]:
        """One query: ("ok", rrset, ttl) | ("nxdomain"|"nodata", None, neg_ttl).

        Raises _Failure for timeouts, SERVFAIL, REFUSED, network errors.
        """
        try:
            response = await self._udp.query(qname, rdtype)
        except QueryFailed as e:
            raise _Failure(str(e)) from None
        if isinstance(response, Negative):
            return ("nxdomain" if response.rcode == dns.rcode.NXDOMAIN else "nodata"), None, \
                self._negative_ttl(response.soa)
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return "nxdomain", None, self._negative_ttl(_soa_of(response))
        if rcode == dns.rcode.YXDOMAIN:
            raise _Failure("YXDOMAIN")
        try:
            chain = response.resolve_chaining()          # the answer, through any CNAMEs
        except dns.exception.DNSException as e:
            raise _Failure(_short_error(e)) from None
        if chain.answer is None:
            return "nodata", None, self._negative_ttl(_soa_of(response))
        return "ok", chain.answer, chain.answer.ttl

    def _negative_ttl(self, soa: tuple[int, int] | None) -> float:
        """negative_ttl, lowered to the zone's SOA (its TTL and MINIMUM) when it says so."""
        return self.negative_ttl if soa is None else min(self.negative_ttl, *soa)

    async def _resolve(self, lookup: Lookup) -> tuple[DnsAnswer, float]:
        kind = lookup.kind
        if kind is LookupKind.DNSBL:
            ip = _parse_ip(lookup.name)
            rev = ip.reverse_pointer.rsplit(".", 2)[0]   # drop in-addr.arpa / ip6.arpa
            return await self._list_query(_make_name(rev, lookup.zone))
        if kind is LookupKind.RHSBL:
            return await self._list_query(_make_name(_fit_below(_domain(lookup.name), lookup.zone), lookup.zone))
        if kind is LookupKind.PTR:
            return await self._ptr(_parse_ip(lookup.name))
        if kind is LookupKind.RESOLVABLE:
            return await self._resolvable(_make_name(_domain(lookup.name)))
        if kind is LookupKind.ADDRESSES:
            return await self._addresses(_make_name(_domain(lookup.name)))
        raise _Failure(f"unknown lookup kind {kind}")

    async def _list_query(self, qname: dns.name.Name) -> tuple[DnsAnswer, float]:
        status, rrset, ttl = await self._query(qname, _A)
        if status != "ok":
            return DnsAnswer("clear"), ttl
        codes = sorted({r.address for r in rrset}, key=ipaddress.ip_address)
        for code in codes:
            addr = ipaddress.ip_address(code)
            if addr not in _LOOPBACK_NET:
                raise _Failure(f"answer {code} outside 127.0.0.0/8")
            if addr in _ERROR_NET:
                raise _Failure(f"answer {code} is not a listing (error code)")
        txt = ""
        try:
            tstatus, trrset, tttl = await self._query(qname, _TXT)
        except _Failure:
            tstatus = ""
        if tstatus == "ok":
            txt = " ".join(
                b"".join(r.strings).decode("utf-8", "replace") for r in trrset)
            ttl = min(ttl, tttl)
        return DnsAnswer("listed", codes=tuple(codes), txt=txt), ttl

    async def _ptr(self, ip) -> tuple[DnsAnswer, float]:
        status, rrset, ttl = await self._query(dns.reversename.from_address(str(ip)), _PTR)
        if status != "ok":
            return DnsAnswer("none"), ttl
        names = sorted({r.target.to_text(omit_final_dot=True).lower() for r in rrset})
        if not names:
            return DnsAnswer("none"), ttl
        rdtype = _A if ip.version == 4 else _AAAA
        checked = [dns.name.from_text(n) for n in names[:MAX_PTR_NAMES]]
        results = await asyncio.gather(
            *(self._query(n, rdtype) for n in checked), return_exceptions=True)
        confirmed = False
        uncertain = False
        for res in results:
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                uncertain = True
                continue
            fstatus, frrset, _ = res
            if fstatus == "ok" and any(
                    ipaddress.ip_address(r.address) == ip for r in frrset):
                confirmed = True
        if not confirmed and uncertain:
            ttl = FAILURE_TTL   # maybe confirmed once DNS recovers
        return DnsAnswer("found", names=tuple(names), confirmed=confirmed), ttl

    async def _resolvable(self, qname: dns.name.Name) -> tuple[DnsAnswer, float]:
        status, rrset, ttl = await self._query(qname, _MX)
        if status == "nxdomain":
            return DnsAnswer("no"), ttl
        if status == "ok":
            if all(r.exchange == dns.name.root for r in rrset):
                return DnsAnswer("nullmx"), ttl
            return DnsAnswer("yes"), ttl
        a, aaaa = await asyncio.gather(
            self._query(qname, _A), self._query(qname, _AAAA), return_exceptions=True)
        oks = [r for r in (a, aaaa) if not isinstance(r, BaseException) and r[0] == "ok"]
        if oks:
            return DnsAnswer("yes"), min(r[2] for r in oks)
        for r in (a, aaaa):
            if isinstance(r, asyncio.CancelledError):
                raise r
            if isinstance(r, BaseException):
                raise _Failure(str(r) if isinstance(r, _Failure) else _short_error(r))
        return DnsAnswer("no"), min(ttl, a[2], aaaa[2])

    async def _addresses(self, qname: dns.name.Name) -> tuple[DnsAnswer, float]:
        """The A and AAAA records of ``qname``, asked concurrently: "found"
        (codes: the IPv4 addresses, then the IPv6 ones, each sorted, at most
        MAX_ADDRESSES of each), "none" (NXDOMAIN, or neither has any) or a
        failure (_Failure) when a query failed and none gave addresses."""
        results = await asyncio.gather(
            self._query(qname, _A), self._query(qname, _AAAA), return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
        codes: list[str] = []
        ttls: list[float] = []                 # of the parts answered (addresses or none)
        errors: list[tuple[str, str]] = []     # ("AAAA", "timeout") for the parts that failed
        for rdtype, r in zip((_A, _AAAA), results):
            if isinstance(r, BaseException):
                errors.append((dns.rdatatype.to_text(rdtype),
                               str(r) if isinstance(r, _Failure) else _short_error(r)))
                continue
            status, rrset, ttl = r
            ttls.append(ttl)
            if status == "ok":
                # A hostile zone may answer thousands of records (over TCP):
                # keep a bounded, deterministic part of them (the lowest).
                found = sorted({ipaddress.ip_address(rd.address) for rd in rrset})
                codes.extend(str(ip) for ip in found[:MAX_ADDRESSES])
        if codes:
            # Every part answered bounds how long the answer holds, a
            # negative one too: "no AAAA" (NODATA) is only true for its
            # negative TTL, after which the name may have IPv6 addresses.
            error = "; ".join(f"{rdtype} lookup failed: {text}" for rdtype, text in errors)
            answer = DnsAnswer("found", codes=tuple(codes), error=error)
            # With a part failed (A answered, AAAA timed out) the answer is
            # what DNS could tell, "found" with the addresses we have: a rule
            # looking for the client's IP may still find it there.  But it
            # may lack the client's address, so it must not be held for the
            # full TTL: it carries the failure in ``error``, and an answer
            # with an error is cached for FAILURE_TTL only (Resolver._run),
            # like a failure, so it is asked again once DNS has recovered.
            return answer, (FAILURE_TTL if errors else min(ttls))
        if errors:   # no addresses, and a part that might have had some failed
            raise _Failure(errors[0][1])
        return DnsAnswer("none"), min(ttls)


class DnsSession:
    """One SMTP session's lookups, run concurrently under one time budget.

    The budget starts at construction (connection time), so the total DNS
    delay a client can cause is bounded however many stages ask for lookups;
    once it is spent, or ``max_lookups`` distinct lookups were started, no new
    query is sent for this session (the answer is "dns budget exceeded"), and
    what it still waits for is released when it no longer needs it.
    """

    __slots__ = ("_resolver", "_deadline", "_answers", "_pending", "_started", "_max_lookups")

    def __init__(self, resolver: Resolver, budget: float = 10.0, max_lookups: int = 100) -> None:
        self._resolver = resolver
        self._deadline = time.monotonic() + budget
        self._answers: dict[Lookup, DnsAnswer] = {}
        self._pending: dict[Lookup, asyncio.Future[DnsAnswer]] = {}
        self._started = 0
        self._max_lookups = max_lookups

    @property
    def answers(self) -> dict[Lookup, DnsAnswer]:
        """Everything answered so far, as the rules saw it (for recording)."""
        self._collect()
        return dict(self._answers)

    def start(self, lookups: Iterable[Lookup]) -> None:
        """Begin lookups early (e.g. at connect) so they overlap the dialogue."""
        answers, pending, resolver = self._answers, self._pending, self._resolver
        for lk in lookups:
            if lk in answers or lk in pending:
                continue
            hit = resolver.health.skipped(lk) or resolver.cached(lk)
            if hit is not None:
                answers[lk] = hit
            elif self._started >= self._max_lookups or time.monotonic() >= self._deadline:
                answers[lk] = failed(BUDGET_EXCEEDED)
            else:
                self._started += 1
                pending[lk] = resolver.submit(lk)

    def at_hand(self, lookups: Iterable[Lookup]) -> dict[Lookup, DnsAnswer] | None:
        """The answers to ``lookups`` (started) if every one has come, else None."""
        answers = self._answers
        try:
            return {lk: answers[lk] for lk in lookups}
        except KeyError:
            return None

    async def results(self, lookups: Iterable[Lookup]) -> dict[Lookup, DnsAnswer]:
        """Answers for ``lookups``; whatever misses the deadline is failed."""
        lookups = list(lookups)
        self.start(lookups)
        answers = self._answers
        waiting = {self._pending[lk] for lk in lookups if lk not in answers}
        if waiting:
            timeout = self._deadline - time.monotonic()
            if timeout > 0:
                await asyncio.wait(waiting, timeout=timeout)
            self._collect()
            for lk in lookups:
                if lk not in answers:
                    # Fixed now so the record matches what the rules saw; a
                    # query other sessions share goes on and fills the cache.
                    answers[lk] = failed(BUDGET_EXCEEDED)
                    self._release(lk)
        return {lk: answers[lk] for lk in lookups}

    def close(self) -> None:
        """The session is over: give up every lookup it still waits for
        (queries shared with other sessions go on for them)."""
        for lk in list(self._pending):
            self._release(lk)

    def _release(self, lookup: Lookup) -> None:
        fut = self._pending.pop(lookup, None)
        if fut is not None and not fut.done():
            self._resolver.release(lookup)

    def _collect(self) -> None:
        done = [lk for lk, f in self._pending.items() if f.done()]
        for lk in done:
            fut = self._pending.pop(lk)
            if fut.cancelled():
                self._answers[lk] = failed("cancelled")
            else:
                self._answers[lk] = fut.result()


# -- helpers ----------------------------------------------------------------

def _pass_key(lookup: Lookup) -> str:
    return f"{lookup.zone}:{lookup.name}"


def _parse_ip(text: str):
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise _Failure("invalid IP") from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped   # ::ffff:a.b.c.d is an IPv4 client
    return ip


def _domain(text: str) -> str:
    name = text.strip().rstrip(".").lower()
    if not name or any(c.isspace() or c in "\\\"()" for c in name):
        raise _Failure("invalid domain")
    return name


def _fit_below(name: str, zone: str) -> str:
    """``name``, without as many leading labels as it takes for
    ``name.zone`` to be a legal DNS name (253 octets, labels of 63); the
    lookup fails ("invalid domain") only when no label is left.

    Domain lists hold registered domains (evil.example), which are short;
    a sender domain too long to query (a.b.c...x.evil.example, 250 octets)
    would otherwise make the lookup fail and count as "not listed".  Leading
    labels are what an attacker controls, so they are what is dropped.
    """
    room = 253 - len(zone.strip(".")) - 1
    labels = name.split(".")
    while labels and (len(".".join(labels)) > room or any(len(x) > 63 for x in labels)):
        labels.pop(0)
    if not labels:
        raise _Failure("invalid domain")
    return ".".join(labels)


def _make_name(name: str, zone: str = "") -> dns.name.Name:
    zone = zone.strip().strip(".").lower()
    text = f"{name}.{zone}." if zone else f"{name}."
    try:
        return dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        raise _Failure("invalid domain") from None


def _soa_of(response: dns.message.Message) -> tuple[int, int] | None:
    """The (TTL, MINIMUM) of the SOA in an answer's authority section."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return rrset.ttl, rrset[0].minimum
    return None


def _address_port(nameserver, default_port: int) -> tuple[str, int]:
    """A dnspython nameserver (an address, or a Do53Nameserver) as (address, port)."""
    if isinstance(nameserver, str):
        return nameserver, default_port
    return str(nameserver.address), int(getattr(nameserver, "port", default_port))


def _short_error(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return type(e).__name__
