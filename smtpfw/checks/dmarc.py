"""DMARC (RFC 7489): does an SPF or DKIM pass align with the From domain, and
what does the From domain's owner ask for when neither does?

The evaluation is small and written here; two pieces come from elsewhere:

* the Organizational Domain (RFC 7489 3.2) from ``publicsuffixlist``, a
  maintained package that ships the Public Suffix List and is updated with
  it (``a.b.example.co.uk`` -> ``example.co.uk``), rather than a copy of the
  list kept in this repository that would go stale;
* the SPF and DKIM results from smtpfw.checks.spf and smtpfw.checks.dkim.

The policy record is looked up with dnspython's asynchronous resolver on the
configured ``nameservers`` within ``timeout``: first ``_dmarc.<From
domain>``, then, when there is none, ``_dmarc.<Organizational Domain>``
(RFC 7489 6.6.3).  A record found at the Organizational Domain for mail from
a subdomain applies its ``sp=`` (``p=`` when it has none).

Results: ``pass`` (an aligned SPF or DKIM pass), ``fail`` (none aligned:
``policy`` says what the owner asks for), ``none`` (no policy record),
``temperror`` (the record lookup failed for now; also a ``fail`` that an
aligned SPF or DKIM ``temperror`` might have turned into a pass, so that a
passing DNS fault never rejects mail), ``permerror`` (a record without a
valid ``p=``, or several From addresses).  ``pct`` is reported and applied
by ``DmarcResult.disposition(roll)``: the caller draws the roll, so a replay
is deterministic.  RFC 9091's ``np=`` is not implemented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from email.headerregistry import HeaderRegistry
from email.utils import getaddresses
from typing import Any, Iterable

import dns.exception
import dns.name
import dns.resolver
from publicsuffixlist import PublicSuffixList

from .dkim import DkimSignature
from .spf import BAD_NAME, Nameservers, SpfResult, build_resolver, cname_loop

__all__ = [
    "DmarcResult", "DMARC_RESULTS", "check_dmarc", "check_dmarc_message", "org_domain",
    "from_domain", "FromDomain", "parse_record", "DEFAULT_TIMEOUT",
]

DMARC_RESULTS = ("pass", "fail", "none", "temperror", "permerror")
POLICIES = ("none", "quarantine", "reject")
DEFAULT_TIMEOUT = 5.0

_psl: PublicSuffixList | None = None


def _list() -> PublicSuffixList:
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()      # the list shipped with the package (ICANN and private sections)
    return _psl


def _norm(domain: str) -> str:
    """Lower case, no trailing dot, A-labels (an SMTPUTF8 From domain
    compares equal to the xn-- form a DKIM d= carries)."""
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        try:
            domain = dns.name.from_unicode(domain).to_text(omit_final_dot=True).lower()
        except Exception:
            pass
    return domain


def org_domain(domain: str) -> str:
    """The Organizational Domain (RFC 7489 3.2): the public suffix plus one
    label; a public suffix itself (``co.uk``) is its own."""
    domain = _norm(domain)
    if not domain:
        return ""
    try:
        return _list().privatesuffix(domain) or domain
    except Exception:
        return domain


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC evaluation of one message."""

    result: str                  # one of DMARC_RESULTS
    from_domain: str = ""        # the RFC5322.From domain evaluated
    policy: str = ""             # the policy that applies: p=, or sp= for a subdomain ("" without a record)
    p: str = ""                  # the record's p=
    sp: str = ""                 # the record's sp= ("" when absent)
    pct: int = 100               # the record's pct=
    org_domain: str = ""         # the From domain's Organizational Domain
    spf_aligned: bool = False    # an SPF pass aligned with the From domain
    dkim_aligned: bool = False   # a DKIM pass aligned with the From domain
    adkim: str = "r"             # "r" relaxed | "s" strict
    aspf: str = "r"
    record: str = ""             # the policy record's text
    record_domain: str = ""      # where it was found: the From domain or the Organizational Domain
    reason: str = ""             # why, for none/temperror/permerror

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def disposition(self, roll: float = 0.0) -> str:
        """What to do: "none", "quarantine" or "reject".

        ``pass``, ``none`` and errors give "none".  A ``fail`` gives
        ``policy`` when ``roll`` (a number drawn uniformly from [0, 100)) is
        below ``pct``; otherwise the next milder policy (RFC 7489 6.6.4:
        reject -> quarantine, quarantine -> none).
        """
        if self.result != "fail" or self.policy not in POLICIES:
            return "none"
        if roll < self.pct:
            return self.policy
        return {"reject": "quarantine"}.get(self.policy, "none")

    def to_json(self) -> dict:
        d: dict = {"result": self.result}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "result" and value != f.default:
                d[f.name] = value
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DmarcResult":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# -- the record ------------------------------------------------------------------

_TAG = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.S)


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record (lower-case names), or None when it is not
    one (``v=DMARC1`` must come first).  Values are as written."""
    tags: dict[str, str] = {}
    for i, part in enumerate(text.split(";")):
        if not part.strip():
            continue
        m = _TAG.match(part)
        if m is None:
            if i == 0:
                return None
            continue                              # a malformed tag is ignored like an unknown one
        name, value = m.group(1).lower(), m.group(2)
        if i == 0 and (name != "v" or value != "DMARC1"):
            return None
        tags.setdefault(name, value)
    return tags if tags.get("v") == "DMARC1" else None


def _valid_rua(value: str) -> bool:
    return any(re.match(r"^\s*[A-Za-z][A-Za-z0-9+.-]*:\S+", uri) for uri in value.split(","))


# -- the From domain -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FromDomain:
    domain: str          # "" when there is not exactly one
    problem: str = ""    # "" | "no From header" | "several From headers" | "several From addresses" | "no domain in From"


def _header_values(message: bytes, name: bytes) -> list[str]:
    m = re.search(rb"\r?\n\r?\n", message)
    head = message[:m.start()] if m else message
    values: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        field, sep, value = line.partition(b":")
        current = None
        if sep and field.strip().lower() == name:
            current = [value]
            values.append(current)
    return [b" ".join(v).decode("utf-8", "replace").strip() for v in values]


def from_domain(message: bytes) -> FromDomain:
    """The RFC5322.From domain of ``message`` (RFC 7489 6.6.1): exactly one
    From field with exactly one address, else ``problem`` says what is wrong
    (no field: DMARC does not apply; several: a permerror)."""
    values = _header_values(message, b"from")
    if not values:
        return FromDomain("", "no From header")
    if len(values) > 1:
        return FromDomain("", "several From headers")
    try:
        addrs = [a for _n, a in getaddresses([values[0]]) if a]
    except Exception:
        addrs = []
    if not addrs:
        try:    # a group or unusual syntax: the stdlib's stricter parser
            header = HeaderRegistry()("from", values[0])
            addrs = [a.addr_spec for a in header.addresses]  # type: ignore[attr-defined]
        except Exception:
            addrs = []
    if len(addrs) > 1:
        return FromDomain("", "several From addresses")
    if not addrs or "@" not in addrs[0]:
        return FromDomain("", "no domain in From")
    domain = _norm(addrs[0].rpartition("@")[2])
    if not domain or "." not in domain or domain.startswith("["):
        return FromDomain("", "no domain in From")
    return FromDomain(domain)


# -- the check -------------------------------------------------------------------

def _aligned(a: str, b: str, mode: str) -> bool:
    a, b = _norm(a), _norm(b)
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return org_domain(a) == org_domain(b)


async def _lookup(resolver: Any, name: str) -> tuple[list[str], str]:
    """(the DMARC records at ``name``, error); error "" when the answer is final."""
    try:
        answer = await resolver.resolve(name, "TXT", search=False, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return [], ""
    except dns.resolver.NoNameservers as e:
        if cname_loop(e):
            return [], ""
        return [], f"DNS server failure looking up {name}"
    except dns.exception.Timeout:
        return [], f"DNS timeout looking up {name}"
    except BAD_NAME:
        return [], ""
    except dns.exception.DNSException as e:
        return [], f"DNS error looking up {name}: {e}"
    texts = []
    for rdata in answer.rrset or ():
        text = b"".join(rdata.strings).decode("utf-8", "replace")
        if re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", text):
            texts.append(text)
    return texts, ""


async def check_dmarc(from_domain: str, spf: SpfResult | None, dkim: Iterable[DkimSignature], *,
                      nameservers: Nameservers = None, timeout: float = DEFAULT_TIMEOUT) -> DmarcResult:
    """Evaluate DMARC for mail whose RFC5322.From domain is ``from_domain``.

    ``spf`` is check_spf's result (the MAIL FROM identity, which for the
    null sender is the HELO, RFC 7489 4.1 and RFC 7208 2.4); ``dkim`` the
    verify_dkim results.  Never raises for DNS trouble.
    """
    domain = _norm(from_domain)
    org = org_domain(domain)
    sigs = tuple(dkim)
    if not domain or "." not in domain:
        return DmarcResult("none", domain, org_domain=org, reason="no From domain")
    resolver = build_resolver(nameservers, timeout, asynchronous=True, cached=True)
    where = domain
    records, error = await _lookup(resolver, f"_dmarc.{domain}")
    if not records and not error and org != domain:
        where = org
        records, error = await _lookup(resolver, f"_dmarc.{org}")
    if error:
        return DmarcResult("temperror", domain, org_domain=org, reason=error)
    if not records:
        return DmarcResult("none", domain, org_domain=org, reason="no DMARC record")
    if len(records) > 1:
        return DmarcResult("none", domain, org_domain=org, record_domain=where,
                           reason=f"several DMARC records at _dmarc.{where}")
    text = records[0]
    tags = parse_record(text) or {}
    p = tags.get("p", "").strip().lower()
    sp = tags.get("sp", "").strip().lower()
    base: dict[str, Any] = dict(from_domain=domain, org_domain=org, record=text, record_domain=where)
    if p not in POLICIES or (sp and sp not in POLICIES):
        if not _valid_rua(tags.get("rua", "")):
            return DmarcResult("permerror", **base, reason="no valid p= in the DMARC record")
        p, sp = "none", ""          # RFC 7489 6.6.3: a record with a valid rua= acts as p=none
    try:
        pct = int(tags.get("pct", "100").strip())
        if not 0 <= pct <= 100:
            raise ValueError
    except ValueError:
        pct = 100
    adkim = tags.get("adkim", "r").strip().lower()
    aspf = tags.get("aspf", "r").strip().lower()
    adkim = adkim if adkim in ("r", "s") else "r"
    aspf = aspf if aspf in ("r", "s") else "r"
    policy = (sp or p) if where != domain else p

    spf_aligned = spf is not None and spf.result == "pass" and _aligned(spf.domain, domain, aspf)
    dkim_aligned = any(s.result == "pass" and _aligned(s.domain, domain, adkim) for s in sigs)
    result, reason = ("pass", "") if spf_aligned or dkim_aligned else ("fail", "")
    if result == "fail":
        pending = []
        if spf is not None and spf.result == "temperror" and _aligned(spf.domain, domain, aspf):
            pending.append("SPF")
        if any(s.result == "temperror" and _aligned(s.domain, domain, adkim) for s in sigs):
            pending.append("DKIM")
        if pending:
            result, reason = "temperror", f"aligned {' and '.join(pending)} had a temporary error"
    return DmarcResult(result, policy=policy, p=p, sp=sp, pct=pct, spf_aligned=spf_aligned,
                       dkim_aligned=dkim_aligned, adkim=adkim, aspf=aspf, reason=reason, **base)


async def check_dmarc_message(message: bytes, spf: SpfResult | None, dkim: Iterable[DkimSignature], *,
                              nameservers: Nameservers = None, timeout: float = DEFAULT_TIMEOUT) -> DmarcResult:
    """check_dmarc for the From domain of ``message``: no From domain gives
    ``none``, several From fields or addresses ``permerror`` (RFC 7489 6.6.1)."""
    found = from_domain(message)
    if found.problem:
        result = "permerror" if found.problem.startswith("several") else "none"
        return DmarcResult(result, reason=found.problem)
    return await check_dmarc(found.domain, spf, dkim, nameservers=nameservers, timeout=timeout)
