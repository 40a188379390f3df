"""SPF (RFC 7208): may the client IP send mail for the MAIL FROM or HELO domain?

Evaluation is pyspf's (``import spf``), not ours: it is the implementation
that spf-engine, the Postfix policy server, is built on, it passes the RFC
7208 test suite (tests/test_auth_checks.py runs that suite through this
module over real DNS), and it enforces the processing limits of RFC 7208
4.6.4 itself: at most 10 mechanisms and modifiers that cause DNS lookups
(``include``, ``a``, ``mx``, ``ptr``, ``exists``, ``redirect``) and at most
2 "void" lookups (NXDOMAIN or no answer); past either the result is
``permerror``.  Writing an SPF evaluator again would mean re-earning all of
that.

pyspf is synchronous and resolves through a module-level hook,
``spf.DNSLookup``.  So a check runs in a small thread pool of its own, and
the hook is replaced (once, at import) by a dispatcher that, in our worker
threads, asks the dnspython resolver bound to that check: its nameservers
(``nameservers``, e.g. a loopback test server) and what is left of its time
budget.  Elsewhere (a thread that is not running one of our checks) the
dispatcher hands over to pyspf's own lookup, so another user of ``spf`` in
the same process is unaffected.

``timeout`` is the budget of the whole check, all its DNS lookups together
(pyspf's ``querytime``): a DNS server that does not answer gives
``temperror`` within about ``timeout`` seconds, never a stalled session.

Results are cached per process for ``CACHE_TTL`` seconds (``CACHE_SIZE``
entries at most), keyed by the client IP, the sender, the HELO name, the
identity and the nameservers; ``temperror`` is never cached.  The key has the
whole sender, not only its domain: macros such as ``%{l}`` and ``%{s}`` make
a domain's answer depend on the local part.

``build_resolver`` and ``parse_nameservers`` are shared with
smtpfw.checks.dkim and smtpfw.checks.dmarc.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf as _pyspf

__all__ = [
    "SpfResult", "SPF_RESULTS", "check_spf", "check_spf_helo", "clear_cache",
    "build_resolver", "parse_nameservers", "cname_loop", "BAD_NAME", "Nameservers",
    "DEFAULT_TIMEOUT", "CACHE_TTL", "CACHE_SIZE", "WORKERS",
]

log = logging.getLogger("smtpfw.spf")

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

DEFAULT_TIMEOUT = 10.0     # seconds for a whole check (RFC 7208 4.6.4 suggests at least 20 for a receiver that waits)
CACHE_TTL = 60.0           # seconds a result is reused
CACHE_SIZE = 10000         # results kept at most (least recently used dropped first)
WORKERS = 8                # threads running pyspf; a check waiting for one still keeps to its timeout

# Nameservers: "192.0.2.53", "192.0.2.53:5353", "[2001:db8::53]:53", "::1"
# or (host, port) as smtpfw.config keeps them; None = the system's resolv.conf.
Nameservers = Sequence["str | tuple[str, int]"] | None


# -- the result ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one SPF check (RFC 7208 section 2.6 results)."""

    result: str            # one of SPF_RESULTS
    identity: str          # "mailfrom" | "helo" (the HELO identity, also for the null sender <>)
    domain: str            # the domain whose SPF record was evaluated ("" when there was none to check)
    sender: str = ""       # MAIL FROM as given ("" for <>, and for a HELO check)
    explanation: str = ""  # why: the domain's exp= text for a fail, or the error for temperror/permerror

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def to_json(self) -> dict:
        d: dict = {"result": self.result, "identity": self.identity, "domain": self.domain}
        if self.sender:
            d["sender"] = self.sender
        if self.explanation:
            d["explanation"] = self.explanation
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SpfResult":
        return cls(d["result"], d["identity"], d.get("domain", ""), d.get("sender", ""),
                   d.get("explanation", ""))


# -- resolvers (shared with dkim.py and dmarc.py) --------------------------------

def parse_nameservers(nameservers: Iterable["str | tuple[str, int]"]) -> tuple[tuple[str, int], ...]:
    """Normalise nameserver specs to (address, port) pairs; port 53 by default."""
    out: list[tuple[str, int]] = []
    for ns in nameservers:
        if isinstance(ns, tuple):
            host, port = ns[0], int(ns[1])
        else:
            text = ns.strip()
            if text.startswith("["):                       # [v6]:port or [v6]
                host, _, rest = text[1:].partition("]")
                port = int(rest[1:]) if rest.startswith(":") else 53
            elif text.count(":") == 1:                      # v4:port or name:port
                host, _, p = text.partition(":")
                port = int(p)
            else:                                           # bare v4 or v6
                host, port = text, 53
        ipaddress.ip_address(host)   # ValueError for anything but an IP address
        out.append((host, port))
    return tuple(out)


def build_resolver(nameservers: Nameservers, timeout: float, *, asynchronous: bool = False,
                   cached: bool = False) -> Any:
    """A dnspython resolver on ``nameservers`` whose lookups last ``timeout`` at most.

    No search list.  No cache unless ``cached``: SPF caches its final
    results instead; DKIM keys and DMARC records (two queries a message
    otherwise) share one answer cache per set of servers, which keeps each
    answer for its TTL (dnspython's LRUCache, thread-safe).
    ``asynchronous`` gives a dns.asyncresolver.Resolver for code on the event loop.
    """
    cls = dns.asyncresolver.Resolver if asynchronous else dns.resolver.Resolver
    if nameservers is None:
        try:
            res = cls(configure=True)
        except dns.resolver.NoResolverConfiguration:
            res = cls(configure=False)
            res.nameservers = ["127.0.0.1"]
    else:
        res = cls(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in parse_nameservers(nameservers)]
    timeout = max(0.01, float(timeout))
    res.lifetime = timeout
    res.timeout = timeout
    res.cache = _answer_cache(nameservers) if cached else None
    res.search = []
    res.use_search_by_default = False
    return res


# A name DNS cannot carry (empty or long label, bad IDNA): nothing is there.
BAD_NAME = (dns.name.EmptyLabel, dns.name.BadEscape, dns.name.LabelTooLong, dns.name.NameTooLong,
            dns.name.IDNAException, UnicodeError)


def cname_loop(error: "dns.resolver.NoNameservers") -> bool:
    """Did every server answer with a CNAME chain that never ends (a loop)?

    dnspython reports that as a server failure; it is a permanent mistake in
    the zone, so callers treat the name as having no data (the RFC 7208
    suite's ptr-cname-loop expects exactly that).
    """
    errors = error.kwargs.get("errors") or []
    return bool(errors) and all(
        len(err) > 3 and isinstance(err[3], dns.message.ChainTooLong) for err in errors)


def _ns_key(nameservers: Nameservers) -> tuple:
    return () if nameservers is None else parse_nameservers(nameservers)


# -- pyspf's DNS hook ------------------------------------------------------------

_local = threading.local()            # .resolver, .deadline while a check runs in this thread
_pyspf_lookup = _pyspf.DNSLookup      # pyspf's own, for threads that are not ours


def _dns_lookup(name: str, qtype: str, strict: Any = True, timeout: float | None = None) -> list:
    """spf.DNSLookup replacement: [((name, type), value), ...] like pyspf's dnspython driver."""
    resolver = getattr(_local, "resolver", None)
    if resolver is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    left = _local.deadline - time.monotonic()
    if timeout:
        left = min(left, float(timeout))
    if left <= 0:
        raise _pyspf.TempError("DNS timeout (SPF time budget spent)")
    try:
        answer = resolver.resolve(name, qtype, lifetime=left, search=False,
                                  raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return []
    except BAD_NAME:
        return []                                  # not a name DNS can carry: nothing there
    except dns.exception.Timeout:
        raise _pyspf.TempError(f"DNS timeout looking up {name} {qtype}") from None
    except dns.resolver.NoNameservers as e:
        if cname_loop(e):
            return []                              # a CNAME loop is a broken name, not a passing fault
        raise _pyspf.TempError(f"DNS server failure looking up {name} {qtype}") from None
    except dns.exception.DNSException as e:
        raise _pyspf.TempError(f"DNS error looking up {name} {qtype}: {e}") from None
    out: list = []
    if answer.rrset is None:
        return out
    for rdata in answer.rrset:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), tuple(rdata.strings)))
    return out


_pyspf.DNSLookup = _dns_lookup


# -- the check -------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_cache: OrderedDict[tuple, tuple[float, SpfResult]] = OrderedDict()
_cache_lock = threading.Lock()

_MAP = {"unknown": "permerror", "error": "temperror", "ambiguous": "permerror"}


def clear_cache() -> None:
    """Forget every cached result and DNS answer (tests; a configuration reload)."""
    with _cache_lock:
        _cache.clear()
    clear_answers()


def clear_answers() -> None:
    """Forget the DNS answers cached for DKIM keys and DMARC records."""
    for answers in _ANSWER_CACHES.values():
        answers.flush()


_ANSWER_CACHES: dict[tuple, Any] = {}
ANSWER_CACHE_SIZE = 10_000


def _answer_cache(nameservers: Nameservers) -> Any:
    key = _ns_key(nameservers)
    answers = _ANSWER_CACHES.get(key)
    if answers is None:
        answers = _ANSWER_CACHES.setdefault(key, dns.resolver.LRUCache(ANSWER_CACHE_SIZE))
    return answers


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="smtpfw-spf")
        return _executor


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


def _checkable(domain: str) -> bool:
    """RFC 7208 4.3: a malformed or single-label domain gives "none" (no DNS asked)."""
    if not domain or domain.startswith("[") or "." not in domain:
        return False
    try:
        ipaddress.ip_address(domain)
        return False                                # a bare IP address is no domain
    except ValueError:
        return True


def _evaluate(ip: str, sender: str, helo: str, resolver: Any,
              timeout: float, receiver: str | None) -> tuple[str, str]:
    """Run pyspf in this (worker) thread; (result, explanation)."""
    _local.resolver = resolver
    _local.deadline = time.monotonic() + timeout
    try:
        # strict=True: RFC 7208 processing, limits are permerrors, no type-99 queries.
        q = _pyspf.query(i=ip, s=sender, h=helo, receiver=receiver, strict=True,
                         timeout=timeout, querytime=timeout)
        res, _code, exp = q.check()
    except _pyspf.TempError as e:
        return "temperror", f"SPF Temporary Error: {e}"
    except _pyspf.PermError as e:
        return "permerror", f"SPF Permanent Error: {e}"
    except Exception as e:          # pyspf on input it did not expect: a result, never an exception
        log.warning("SPF check of %s for %r failed: %s: %s", ip, sender or helo, type(e).__name__, e)
        return "permerror", f"SPF Permanent Error: {type(e).__name__}: {e}"
    finally:
        _local.resolver = None
    res = _MAP.get(res, res)
    return (res if res in SPF_RESULTS else "permerror"), exp or ""


async def _check(ip: str, sender: str, helo: str, identity: str, domain: str,
                 nameservers: Nameservers, timeout: float, receiver: str | None,
                 use_cache: bool) -> SpfResult:
    def result(res: str, explanation: str = "") -> SpfResult:
        return SpfResult(res, identity, domain, sender if identity == "mailfrom" else "", explanation)

    try:
        text = ip.strip().strip("[]")
        addr = ipaddress.ip_address(text[5:] if text[:5].lower() == "ipv6:" else text)
    except ValueError:
        return result("permerror", f"invalid client IP address {ip!r}")
    if not _checkable(domain):
        return result("none", "no domain to check")
    key = (str(addr), sender if identity == "mailfrom" else "", domain, identity,
           _ns_key(nameservers), receiver)
    now = time.monotonic()
    if use_cache:
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None:
                if hit[0] > now:
                    _cache.move_to_end(key)
                    return hit[1]
                del _cache[key]
    resolver = build_resolver(nameservers, timeout)
    # pyspf checks the HELO identity when it is given an empty sender.
    args = (str(addr), sender if identity == "mailfrom" else "", helo, resolver, timeout, receiver)
    loop = asyncio.get_running_loop()
    try:
        res, exp = await asyncio.wait_for(loop.run_in_executor(_pool(), _evaluate, *args), timeout + 0.5)
    except asyncio.TimeoutError:
        res, exp = "temperror", f"SPF Temporary Error: no result within {timeout:g}s"
    out = result(res, exp)
    if use_cache and res != "temperror":
        with _cache_lock:
            _cache[key] = (time.monotonic() + CACHE_TTL, out)
            _cache.move_to_end(key)
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return out


async def check_spf(ip: str, sender: str, helo: str, *, nameservers: Nameservers = None,
                    timeout: float = DEFAULT_TIMEOUT, receiver: str | None = None,
                    use_cache: bool = True) -> SpfResult:
    """SPF for the MAIL FROM identity; for the null sender (``""`` or
    ``"<>"``) the HELO identity, as RFC 7208 2.4 says.

    ``sender`` is the bare address (no angle brackets needed), ``helo`` the
    HELO/EHLO argument, ``receiver`` this host's name for the ``%{r}`` macro.
    Never raises for DNS trouble: that is ``temperror``.
    """
    sender = (sender or "").strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    local, at, domain = sender.rpartition("@")
    if at:
        sender = f"{local}@{domain.rstrip('.')}"     # a trailing dot is the same domain
    helo = (helo or "").strip().rstrip(".")
    if not sender:
        return await check_spf_helo(ip, helo, nameservers=nameservers, timeout=timeout,
                                    receiver=receiver, use_cache=use_cache)
    return await _check(ip, sender, helo, "mailfrom", _domain_of(sender), nameservers, timeout,
                        receiver, use_cache)


async def check_spf_helo(ip: str, helo: str, *, nameservers: Nameservers = None,
                         timeout: float = DEFAULT_TIMEOUT, receiver: str | None = None,
                         use_cache: bool = True) -> SpfResult:
    """SPF for the HELO identity (RFC 7208 2.3): ``postmaster@<helo>``.

    An address literal (``[192.0.2.1]``) or a name without a dot gives
    ``none`` without any DNS lookup.
    """
    helo = (helo or "").strip().rstrip(".")
    return await _check(ip, "", helo, "helo", helo.lower(), nameservers, timeout,
                        receiver, use_cache)
