"""Plain-data DNS lookups and answers.

Rules never talk to DNS.  The server gathers ``DnsAnswer``s for the
``Lookup``s a ruleset needs, then the engine evaluates rules over them.  The
same values are recorded with a session, so a replay is deterministic offline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class LookupKind(str, enum.Enum):
    DNSBL = "dnsbl"            # name = client IP; query <reversed>.<zone> A (+TXT)
    RHSBL = "rhsbl"            # name = domain;    query <domain>.<zone> A (+TXT)
    PTR = "ptr"                # name = client IP; PTR, then forward-confirm
    RESOLVABLE = "resolvable"  # name = domain;    MX, else A/AAAA; null MX
    ADDRESSES = "addresses"    # name = domain;    A and AAAA: the addresses it has


class Lookup(NamedTuple):
    """A DNS fact's key (smtpfw.facts: provider "dns").  A NamedTuple, not a
    frozen dataclass: rules read DNS answers by it several times a session,
    and a tuple's hash and equality run in C (a read costs a third)."""

    kind: LookupKind
    name: str          # IP text or lower-case domain without trailing dot
    zone: str = ""     # DNSBL/RHSBL zone; "" for PTR/RESOLVABLE

    @property
    def provider(self) -> str:
        return "dns"

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "name": self.name, "zone": self.zone}

    @classmethod
    def from_json(cls, d: dict) -> "Lookup":
        return cls(LookupKind(d["kind"]), d["name"], d.get("zone", ""))


# status values, per kind:
#   dnsbl/rhsbl: "listed" | "clear" | "failed"
#   ptr:         "found"  | "none"  | "failed"
#   resolvable:  "yes"    | "no"    | "nullmx" | "failed"
#   addresses:   "found"  | "none"  | "failed"   (codes = the A/AAAA addresses, sorted)
@dataclass(frozen=True, slots=True)
class DnsAnswer:
    status: str
    codes: tuple[str, ...] = ()      # A records of a listing, e.g. ("127.0.0.2",)
    txt: str = ""                    # TXT reason of a listing
    names: tuple[str, ...] = ()      # PTR names
    confirmed: bool = False          # PTR name resolves back to the IP (FCrDNS)
    error: str = ""                  # why it failed (timeout, SERVFAIL, ...)
    pass_cached: bool = False        # "clear" from the DNSBL pass cache (dns.pass_ttl): not asked

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_json(self) -> dict:
        d: dict = {"status": self.status}
        if self.codes:
            d["codes"] = list(self.codes)
        if self.txt:
            d["txt"] = self.txt
        if self.names:
            d["names"] = list(self.names)
        if self.confirmed:
            d["confirmed"] = True
        if self.error:
            d["error"] = self.error
        if self.pass_cached:
            d["pass_cached"] = True
        return d

    @classmethod
    def from_json(cls, d: dict) -> "DnsAnswer":
        return cls(
            d["status"],
            tuple(d.get("codes", ())),
            d.get("txt", ""),
            tuple(d.get("names", ())),
            bool(d.get("confirmed", False)),
            d.get("error", ""),
            bool(d.get("pass_cached", False)),
        )


PASS_CACHED = DnsAnswer("clear", pass_cached=True)


def failed(error: str) -> DnsAnswer:
    return DnsAnswer("failed", error=error)
