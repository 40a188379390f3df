"""DKIM (RFC 6376, RFC 8463 ed25519) and ARC (RFC 8617) verification.

The cryptography and canonicalisation are dkimpy's (``import dkim``): the
maintained Python implementation of DKIM signing and verifying, rsa-sha256
and ed25519-sha256, with ARC verify and seal in the same package; the
dkimpy-milter is built on it.  What this module adds is what a firewall
needs around it:

* A result per signature as RFC 8601 names them.  dkimpy answers True or
  False and swallows key and DNS errors, so the DNS function handed to it
  (``dnsfunc``) notes what the key lookup found, and the outcome is read from
  that: ``pass``; ``fail`` (the signature or the body hash does not verify);
  ``neutral`` (the signature header is malformed or not usable, or was not
  verified because of the size cap); ``permerror`` (no key record, a
  malformed, revoked or too small key, rsa-sha1 which RFC 8301 forbids);
  ``temperror`` (the key lookup timed out or the server failed).  An
  unsigned message gives an empty tuple: ``dkim=none``.
* DNS through a dnspython resolver on the configured ``nameservers`` (a
  loopback server in the tests), within one time budget, ``timeout``, for
  all the key lookups of a call.
* Bounded cost: dkimpy is synchronous and CPU-bound, so it runs in a small
  thread pool of its own (``WORKERS`` threads), never on the event loop; at
  most ``MAX_SIGNATURES`` signatures are verified (the topmost, i.e. the
  newest; later ones are not reported); a message larger than ``MAX_SIZE``
  bytes is not verified at all (each signature reports ``neutral``,
  "message too large"): hashing a body costs time in proportion to its size
  and is done again per signature.  ARC verifies at most ``MAX_ARC_SETS``
  sets (RFC 8617 5.1.1 sets that limit at 50; a longer chain fails).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import dkim as _dkim
import dkim.util as _dkim_util
import dns.exception
import dns.resolver

from .spf import BAD_NAME, Nameservers, build_resolver, cname_loop

__all__ = [
    "DkimSignature", "ArcResult", "verify_dkim", "verify_arc", "DKIM_RESULTS", "ARC_RESULTS",
    "DEFAULT_TIMEOUT", "MAX_SIGNATURES", "MAX_SIZE", "MAX_ARC_SETS", "MIN_KEY_BITS", "WORKERS",
]

DKIM_RESULTS = ("pass", "fail", "neutral", "temperror", "permerror", "none")
ARC_RESULTS = ("pass", "fail", "none")

DEFAULT_TIMEOUT = 10.0          # seconds for all key lookups of one call together
MAX_SIGNATURES = 5              # DKIM-Signature fields verified per message, topmost first
MAX_SIZE = 32 * 1024 * 1024     # bytes: larger messages are not verified
MAX_ARC_SETS = 50               # RFC 8617 5.1.1
MIN_KEY_BITS = 1024             # RFC 8301: smaller RSA keys are a permerror
WORKERS = 4

# dkimpy logs every failure at ERROR; the results carry the reason instead.
_QUIET = logging.Logger("smtpfw.dkimpy", level=logging.CRITICAL + 1)


@dataclass(frozen=True, slots=True)
class DkimSignature:
    """The verification result of one DKIM-Signature header field."""

    domain: str             # d= (the signing domain, lower case)
    selector: str           # s=
    result: str             # one of DKIM_RESULTS
    reason: str = ""        # why, for anything but pass
    algorithm: str = ""     # a=, e.g. "rsa-sha256", "ed25519-sha256"
    identity: str = ""      # i= as written (the AUID), "" when absent
    header_b: str = ""      # the first 8 characters of b= (RFC 6008 header.b)

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def to_json(self) -> dict:
        d: dict = {"domain": self.domain, "selector": self.selector, "result": self.result}
        for name in ("reason", "algorithm", "identity", "header_b"):
            value = getattr(self, name)
            if value:
                d[name] = value
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DkimSignature":
        return cls(d.get("domain", ""), d.get("selector", ""), d["result"], d.get("reason", ""),
                   d.get("algorithm", ""), d.get("identity", ""), d.get("header_b", ""))


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The chain validation status of a message's ARC sets (RFC 8617 5.2)."""

    result: str             # "pass" | "fail" | "none" (no ARC sets)
    reason: str = ""
    instances: int = 0      # ARC sets on the message (the highest i=)
    domain: str = ""        # d= of the newest ARC-Seal (who sealed last)

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def to_json(self) -> dict:
        d: dict = {"result": self.result}
        if self.reason:
            d["reason"] = self.reason
        if self.instances:
            d["instances"] = self.instances
        if self.domain:
            d["domain"] = self.domain
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ArcResult":
        return cls(d["result"], d.get("reason", ""), int(d.get("instances", 0)), d.get("domain", ""))


# -- DNS for dkimpy ---------------------------------------------------------------

class _KeyLookups:
    """dkimpy's ``dnsfunc``: TXT through our resolver; remembers what it found."""

    def __init__(self, resolver: Any, deadline: float) -> None:
        self.resolver = resolver
        self.deadline = deadline
        self.status = ""            # last lookup: "found" | "missing" | "error"
        self.txt: bytes | None = None
        self.error = ""

    def reset(self) -> None:
        self.status, self.txt, self.error = "", None, ""

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        try:
            qname = name.decode("ascii") if isinstance(name, bytes) else name
        except UnicodeError:
            return self._missing()                  # d= or s= not ASCII: no such key
        left = self.deadline - time.monotonic()
        if left <= 0:
            return self._fail(f"DNS time budget spent before looking up {qname}")
        try:
            answer = self.resolver.resolve(qname, "TXT", lifetime=left, search=False,
                                           raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return self._missing()
        except dns.resolver.NoNameservers as e:
            if cname_loop(e):
                return self._missing()
            return self._fail(f"DNS server failure looking up {qname}")
        except dns.exception.Timeout:
            return self._fail(f"DNS timeout looking up {qname}")
        except BAD_NAME:
            return self._missing()
        except dns.exception.DNSException as e:
            return self._fail(f"DNS error: {e}")
        if answer.rrset is None or not len(answer.rrset):
            return self._missing()
        self.status = "found"
        self.txt = b"".join(next(iter(answer.rrset)).strings)
        return self.txt

    def _missing(self) -> bytes | None:
        self.status, self.txt = "missing", None
        return None

    def _fail(self, error: str) -> bytes | None:
        self.status, self.error = "error", error
        raise _dkim.DnsTimeoutError(error)


# -- helpers --------------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="smtpfw-dkim")
        return _executor


async def _run(func: Callable[..., Any], *args: Any, timeout: float, on_timeout: Any) -> Any:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(_pool(), func, *args), timeout + 1.0)
    except asyncio.TimeoutError:
        return on_timeout


def _text(value: bytes | None) -> str:
    return "" if value is None else re.sub(r"\s+", "", value.decode("ascii", "replace"))


def _tags(value: bytes) -> dict[bytes, bytes]:
    """Tag=value pairs of a signature header, leniently (for reporting only)."""
    try:
        return _dkim_util.parse_tag_value(re.sub(rb"\r?\n[ \t]", b" ", value))
    except Exception:
        tags: dict[bytes, bytes] = {}
        for part in re.sub(rb"\r?\n[ \t]", b" ", value).split(b";"):
            k, sep, v = part.partition(b"=")
            if sep:
                tags.setdefault(k.strip(), v.strip())
        return tags


def _header_block(message: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields, leniently (lines that are no field are skipped), the
    body unread: to find and report signatures, also of messages that dkimpy
    cannot parse or that are not verified."""
    m = re.search(rb"\r?\n\r?\n", message)
    head = message[:m.start()] if m else message
    headers: list[list[bytes]] = []
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t"):
            if headers:
                headers[-1][1] += b"\r\n" + line
            continue
        name, sep, value = line.partition(b":")
        if sep and name and re.fullmatch(rb"[\x21-\x39\x3b-\x7e]+", name):
            headers.append([name, value])
        else:
            headers.append([b"", b""])      # ends a field: its continuation lines are not ours
    return [(k, v) for k, v in headers if k]


def _signature_headers(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [v for k, v in headers if k.lower() == b"dkim-signature"]


def _described(value: bytes, result: str, reason: str) -> DkimSignature:
    t = _tags(value)
    return DkimSignature(_text(t.get(b"d")).lower().rstrip("."), _text(t.get(b"s")), result, reason,
                         _text(t.get(b"a")).lower(), _text(t.get(b"i")), _text(t.get(b"b"))[:8])


# -- DKIM ---------------------------------------------------------------------------

def _verify_one(d: Any, idx: int, value: bytes, keys: _KeyLookups) -> DkimSignature:
    def res(result: str, reason: str = "") -> DkimSignature:
        return _described(value, result, reason)

    tags = _tags(value)
    if _text(tags.get(b"a")).lower() == "rsa-sha1":
        return res("permerror", "rsa-sha1 is not acceptable (RFC 8301)")
    keys.reset()
    try:
        ok = d.verify(idx=idx, dnsfunc=keys)
    except _dkim.ValidationError as e:
        msg = str(e)
        if msg.startswith("body hash mismatch"):
            return res("fail", "body hash did not verify")
        return res("neutral", f"signature not usable: {msg}")
    except _dkim.MessageFormatError as e:
        return res("neutral", f"signature syntax: {e}")
    except _dkim.KeyFormatError as e:
        return res("permerror", f"key: {e}")
    except _dkim.DKIMException as e:
        return res("permerror", str(e) or type(e).__name__)
    except Exception as e:       # dkimpy on input it did not expect: never the caller's problem
        return res("permerror", f"{type(e).__name__}: {e}")
    if ok:
        return res("pass")
    if keys.status == "error":
        return res("temperror", keys.error)
    if keys.status == "missing":
        return res("permerror", "no key for signature")
    if keys.status == "found":
        txt = keys.txt or b""
        try:
            if re.search(rb"(^|;)\s*p\s*=\s*(;|$)", txt):
                return res("permerror", "key revoked")
            _dkim.evaluate_pk(b"key", txt)
        except _dkim.DKIMException as e:
            return res("permerror", f"key: {e}")
        except Exception as e:
            return res("permerror", f"key: {type(e).__name__}: {e}")
        return res("fail", "signature did not verify")
    return res("permerror", "not verified")


def _verify_all(message: bytes, resolver: Any, timeout: float, max_signatures: int) -> tuple[DkimSignature, ...]:
    keys = _KeyLookups(resolver, time.monotonic() + timeout)
    try:
        d = _dkim.DKIM(message, logger=_QUIET, minkey=MIN_KEY_BITS, timeout=timeout)
    except Exception as e:
        sigs = _signature_headers(_header_block(message))[:max_signatures]
        return tuple(_described(v, "permerror", f"message not parsable: {e}") for v in sigs)
    sigs = _signature_headers(d.headers)
    return tuple(_verify_one(d, i, v, keys) for i, v in enumerate(sigs[:max_signatures]))


async def verify_dkim(message: bytes, *, nameservers: Nameservers = None, timeout: float = DEFAULT_TIMEOUT,
                      max_signatures: int = MAX_SIGNATURES, max_size: int = MAX_SIZE) -> tuple[DkimSignature, ...]:
    """Verify the DKIM-Signature fields of ``message`` (the whole message as
    received, CRLF or LF line ends); one DkimSignature each, topmost first.
    ``()`` when the message is not signed.  Never raises for bad input or DNS
    trouble."""
    sigs = _signature_headers(_header_block(message))[:max_signatures]
    if not sigs:
        return ()
    if len(message) > max_size:
        return tuple(_described(v, "neutral", f"not verified: message larger than {max_size} bytes")
                     for v in sigs)
    resolver = build_resolver(nameservers, timeout, cached=True)
    timed_out = tuple(_described(v, "temperror", f"no result within {timeout:g}s") for v in sigs)
    return await _run(_verify_all, message, resolver, timeout, max_signatures,
                      timeout=timeout, on_timeout=timed_out)


# -- ARC ------------------------------------------------------------------------------

_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d+)", re.IGNORECASE)


def _arc_sets(headers: list[tuple[bytes, bytes]]) -> tuple[int, str]:
    """(highest i= of an ARC-Seal, d= of that seal)."""
    best, domain = 0, ""
    for k, v in headers:
        if k.lower() != b"arc-seal":
            continue
        m = _INSTANCE.search(re.sub(rb"\r?\n[ \t]", b" ", v))
        if m and int(m.group(1)) > best:
            best, domain = int(m.group(1)), _text(_tags(v).get(b"d")).lower().rstrip(".")
    return best, domain


def _arc_verify(message: bytes, resolver: Any, timeout: float) -> ArcResult:
    keys = _KeyLookups(resolver, time.monotonic() + timeout)
    try:
        a = _dkim.ARC(message, logger=_QUIET, minkey=MIN_KEY_BITS, timeout=timeout)
    except Exception as e:
        return ArcResult("fail", f"message not parsable: {e}")
    instances, domain = _arc_sets(a.headers)
    if instances > MAX_ARC_SETS:
        return ArcResult("fail", f"more than {MAX_ARC_SETS} ARC sets", instances, domain)
    try:
        cv, _data, reason = a.verify(dnsfunc=keys)
    except Exception as e:
        cv, reason = _dkim.CV_Fail, f"{type(e).__name__}: {e}"
    if cv == _dkim.CV_Pass:
        return ArcResult("pass", "", instances, domain)
    if cv == _dkim.CV_None:
        return ArcResult("none", reason if instances else "", instances, domain)
    reason = reason if isinstance(reason, str) else str(reason)
    if keys.status == "error":
        reason = f"{reason} ({keys.error})"
    return ArcResult("fail", reason, instances, domain)


async def verify_arc(message: bytes, *, nameservers: Nameservers = None, timeout: float = DEFAULT_TIMEOUT,
                     max_size: int = MAX_SIZE) -> ArcResult:
    """Validate the ARC chain of ``message``: ``pass``, ``fail`` or ``none``
    (no ARC sets).  A message over ``max_size`` bytes is not verified
    (``fail``, "message too large") when it has ARC sets.  Never raises."""
    if not any(k.lower() == b"arc-seal" for k, _ in _header_block(message)):
        return ArcResult("none")
    if len(message) > max_size:
        instances, domain = _arc_sets(_header_block(message))
        return ArcResult("fail", f"not verified: message larger than {max_size} bytes", instances, domain)
    resolver = build_resolver(nameservers, timeout, cached=True)
    return await _run(_arc_verify, message, resolver, timeout, timeout=timeout,
                      on_timeout=ArcResult("fail", f"no result within {timeout:g}s"))
