"""Sender authentication and content scanners as facts (providers "spf",
"dkim", "dmarc", "scan"): the keys rules ask by, and the session source that
answers them with smtpfw.checks.spf/dkim/dmarc and the clamd/spamd clients
(smtpfw.checks.scanners).

A message check is keyed by the message's number in the session, not by its
bytes: the answer is recorded with the session and a replay (which has no
body) finds it by the same key.  The live key carries the body along, not
compared and not recorded.  DMARC's key holds the SPF and DKIM results it is
computed from, so a replay that changed nothing upstream finds the recorded
answer, and one that did is told so ("not in recording").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from smtpfw.checks.dkim import ArcResult, DkimSignature, verify_arc, verify_dkim
from smtpfw.checks.dmarc import DmarcResult, check_dmarc_message
from smtpfw.checks.mime import MimeSummary, mime_summary
from smtpfw.checks.scanners import ScanResult, clamd_scan, spamd_check
from smtpfw.checks.spf import SpfResult, check_spf, check_spf_helo


class SpfQuery(NamedTuple):
    """SPF for the MAIL FROM identity ("mailfrom"; the HELO identity when the
    sender is <>), or for the HELO name alone ("helo")."""

    identity: str
    ip: str
    sender: str
    helo: str

    @property
    def provider(self) -> str:
        return "spf"

    def to_json(self) -> dict:
        return {"identity": self.identity, "ip": self.ip, "sender": self.sender, "helo": self.helo}

    @classmethod
    def from_json(cls, d: dict) -> "SpfQuery":
        return cls(d["identity"], d["ip"], d.get("sender", ""), d.get("helo", ""))


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """A check of the session's message number ``message_no`` (0 = first):
    "dkim" (DKIM and ARC), "mime" (its attachments), "clamd" or "spamd"."""

    check: str
    message_no: int
    message: bytes = field(default=b"", compare=False, repr=False)   # live only; never recorded

    @property
    def provider(self) -> str:
        return self.check if self.check in ("dkim", "mime") else "scan"

    def to_json(self) -> dict:
        return {"check": self.check, "message": self.message_no}

    @classmethod
    def from_json(cls, d: dict) -> "MessageQuery":
        return cls(d["check"], int(d["message"]))


@dataclass(frozen=True, slots=True)
class DmarcQuery:
    """DMARC for message ``message_no`` given its SPF result and its DKIM
    signatures' (domain, result)."""

    message_no: int
    spf: tuple[str, str]                       # (result, domain)
    dkim: tuple[tuple[str, str], ...]          # ((domain, result), ...)
    message: bytes = field(default=b"", compare=False, repr=False)

    @property
    def provider(self) -> str:
        return "dmarc"

    def to_json(self) -> dict:
        return {"message": self.message_no, "spf": list(self.spf), "dkim": [list(d) for d in self.dkim]}

    @classmethod
    def from_json(cls, d: dict) -> "DmarcQuery":
        return cls(int(d["message"]), tuple(d["spf"]), tuple(tuple(x) for x in d["dkim"]))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class DkimVerdict:
    """A message's DKIM signatures (topmost first) and its ARC chain."""

    signatures: tuple[DkimSignature, ...] = ()
    arc: ArcResult = ArcResult("none")
    error: str = ""                           # the check could not run (not in a recording...)

    @property
    def result(self) -> str:
        """pass when any signature verifies, else the first one's result; none unsigned."""
        if self.error:
            return "temperror"
        if any(s.passed for s in self.signatures):
            return "pass"
        return self.signatures[0].result if self.signatures else "none"

    @property
    def domains(self) -> list[str]:
        return [s.domain for s in self.signatures if s.passed]

    def to_json(self) -> dict:
        d: dict = {"signatures": [s.to_json() for s in self.signatures], "arc": self.arc.to_json()}
        if self.error:
            d["error"] = self.error
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DkimVerdict":
        return cls(tuple(DkimSignature.from_json(s) for s in d.get("signatures", ())),
                   ArcResult.from_json(d["arc"]) if d.get("arc") else ArcResult("none"), d.get("error", ""))


def spf_unavailable(why: str) -> SpfResult:
    return SpfResult("temperror", "mailfrom", "", explanation=why)


def dkim_unavailable(why: str) -> DkimVerdict:
    return DkimVerdict((), ArcResult("none", why), why)


def dmarc_unavailable(why: str) -> DmarcResult:
    return DmarcResult("temperror", reason=why)


def scan_unavailable(why: str) -> ScanResult:
    return ScanResult("", "error", reason=why)


@dataclass(frozen=True)
class ContentSettings:
    """What the session source needs from the config."""

    nameservers: tuple = ()             # (host, port) pairs; () = the system's resolver
    auth_timeout: float = 10.0          # SPF, DKIM, DMARC: the whole check, all its DNS queries
    clamd: str = ""                     # "unix:/run/clamav/clamd.ctl" or "host:port"; "" = none
    spamd: str = ""
    spamd_user: str = ""
    scan_timeout: float = 30.0
    scan_max_bytes: int = 10 * 1024 * 1024


class ContentFacts:
    """One session's SPF, DKIM, DMARC and scanner answers."""

    def __init__(self, settings: ContentSettings):
        self.settings = settings
        self._pending: dict = {}

    def start(self, keys: Iterable) -> None:
        for key in keys:
            if key not in self._pending:
                self._pending[key] = asyncio.ensure_future(self._answer(key))

    async def results(self, keys: Iterable) -> dict:
        keys = list(dict.fromkeys(keys))
        self.start(keys)
        return {key: await self._pending.pop(key) for key in keys}

    def close(self) -> None:
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()

    async def _answer(self, key):
        s = self.settings
        ns = list(s.nameservers) or None
        if isinstance(key, SpfQuery):
            if key.identity == "helo":
                return await check_spf_helo(key.ip, key.helo, nameservers=ns, timeout=s.auth_timeout)
            return await check_spf(key.ip, key.sender, key.helo, nameservers=ns, timeout=s.auth_timeout)
        if isinstance(key, DmarcQuery):
            spf = SpfResult(key.spf[0], "mailfrom", key.spf[1])
            sigs = [DkimSignature(domain, "", result) for domain, result in key.dkim]
            return await check_dmarc_message(key.message, spf, sigs, nameservers=ns, timeout=s.auth_timeout)
        assert isinstance(key, MessageQuery)
        if key.check == "mime":
            return mime_summary(key.message)
        if key.check == "dkim":
            sigs, arc = await asyncio.gather(verify_dkim(key.message, nameservers=ns, timeout=s.auth_timeout),
                                             verify_arc(key.message, nameservers=ns, timeout=s.auth_timeout))
            return DkimVerdict(sigs, arc)
        address = s.clamd if key.check == "clamd" else s.spamd
        if not address:
            return ScanResult(key.check, "error", reason=f"no {key.check} configured (scanners.{key.check})")
        if key.check == "clamd":
            return await clamd_scan(address, key.message, timeout=s.scan_timeout, max_bytes=s.scan_max_bytes)
        return await spamd_check(address, key.message, timeout=s.scan_timeout, user=s.spamd_user or None,
                                 max_bytes=s.scan_max_bytes)




def header_for(facts: dict, message_no: int, sender: str | None, authserv_id: str, client_ip: str = "") -> str:
    """The Authentication-Results value (RFC 8601) for message
    ``message_no`` from the answers a session's facts hold."""
    from smtpfw.checks.authresults import authentication_results

    spf = spf_helo = dkim = dmarc = None
    for key, answer in facts.items():
        if isinstance(key, SpfQuery):
            if key.identity == "mailfrom" and key.sender == sender:
                spf = answer
            elif key.identity == "helo":
                spf_helo = answer
        elif isinstance(key, MessageQuery) and key.check == "dkim" and key.message_no == message_no:
            dkim = answer
        elif isinstance(key, DmarcQuery) and key.message_no == message_no:
            dmarc = answer
    return authentication_results(authserv_id, spf=spf, spf_helo=spf_helo if spf is None else None,
                                  dkim=dkim.signatures if dkim is not None and not dkim.error else None,
                                  dmarc=dmarc, arc=dkim.arc if dkim is not None and dkim.arc.instances else None,
                                  client_ip=client_ip, fold="\r\n\t")
