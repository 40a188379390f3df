"""DNS list health: is a DNSBL/RHSBL still answering honestly?

Lists break silently, and then they reject legitimate mail: a list that
starts answering "listed" for everything (a domain lapsed and parked, or a
list that lists the world to refuse a resolver: Haraka #3106, Mailu #554), a
list that answers 127.255.255.x refusal codes to resolvers it does not serve
(Spamhaus, when asked through a public resolver), a list that stopped
answering.  RFC 5782 section 5 gives every list two test entries: one that
must be listed (127.0.0.2, the domain "test") and one that must not
(127.0.0.1, "invalid").  Each zone a ruleset uses is asked both on start and
every ``dns.health_interval`` seconds; a zone that fails is *unhealthy* and
logged once when that changes.  One whose answers cannot be trusted (it
lists everything, answers refusal codes or outside 127/8) is, with
``dns.skip_unhealthy`` (default), also skipped: its lookups answer "not
listed" (the reason kept in the session's record) instead of refusing mail
on a broken list's word.  One that does not answer, or lacks its "listed"
test entry (small private lists often do), is only logged: its lookups fail
or answer as they do, and the rules decide (``lookup failed``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from smtpfw import metrics
from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind

log = logging.getLogger("smtpfw.dns")

# RFC 5782 5: (must be listed, must not be listed)
TEST_ENTRIES = {LookupKind.DNSBL: ("127.0.0.2", "127.0.0.1"), LookupKind.RHSBL: ("test", "invalid")}


@dataclass(frozen=True, slots=True)
class ZoneHealth:
    kind: LookupKind
    zone: str
    problem: str = ""               # "" = healthy
    untrusted: bool = False         # its answers cannot be believed: skip it

    @property
    def healthy(self) -> bool:
        return not self.problem


def judge(kind: LookupKind, zone: str, listed: DnsAnswer, clear: DnsAnswer) -> ZoneHealth:
    """The verdict on a zone from its answers for the two test entries."""
    must, must_not = TEST_ENTRIES[kind]
    for answer in (listed, clear):
        if answer.failed:
            error = answer.error
            if "error code" in error:
                return ZoneHealth(kind, zone, f"refuses our resolver ({error}): use a resolver the list serves",
                                  True)
            if "outside 127.0.0.0/8" in error:
                return ZoneHealth(kind, zone, f"answers outside 127/8 ({error}): a wrong or hijacking resolver?",
                                  True)
            return ZoneHealth(kind, zone, f"not answering ({error})")
    if clear.status == "listed":
        return ZoneHealth(kind, zone, f"lists everything: its test entry {must_not!r}, which must never be "
                                      f"listed, is listed ({', '.join(clear.codes)})", True)
    if listed.status != "listed":
        return ZoneHealth(kind, zone, f"lists nothing it should: its test entry {must!r} is not listed")
    return ZoneHealth(kind, zone)


async def check_zone(resolver, kind: LookupKind, zone: str) -> ZoneHealth:
    must, must_not = TEST_ENTRIES[kind]
    listed, clear = await asyncio.gather(resolver.lookup(Lookup(kind, must, zone), passes=False),
                                         resolver.lookup(Lookup(kind, must_not, zone), passes=False))
    return judge(kind, zone, listed, clear)


# Resolvers that the big DNS lists refuse to answer (or answer with
# 127.255.255.x refusal codes): Spamhaus, SURBL, URIBL and others serve
# queries only from resolvers that are not open to everyone.
PUBLIC_RESOLVERS = {
    "8.8.8.8": "Google", "8.8.4.4": "Google", "2001:4860:4860::8888": "Google", "2001:4860:4860::8844": "Google",
    "1.1.1.1": "Cloudflare", "1.0.0.1": "Cloudflare", "2606:4700:4700::1111": "Cloudflare",
    "2606:4700:4700::1001": "Cloudflare", "9.9.9.9": "Quad9", "149.112.112.112": "Quad9",
    "2620:fe::fe": "Quad9", "208.67.222.222": "OpenDNS", "208.67.220.220": "OpenDNS",
}


def public_resolvers(nameservers) -> list[str]:
    """The well-known public resolvers among ``nameservers`` (addresses)."""
    return [f"{ns} ({PUBLIC_RESOLVERS[ns]})" for ns in nameservers if ns in PUBLIC_RESOLVERS]


class HealthBoard:
    """The latest verdict per zone, and what a session's lookup of an
    unhealthy zone answers instead of asking it."""

    def __init__(self, skip_unhealthy: bool = True):
        self.skip_unhealthy = skip_unhealthy
        self.zones: dict[tuple[LookupKind, str], ZoneHealth] = {}

    def skipped(self, lookup: Lookup) -> DnsAnswer | None:
        """``lookup``'s answer when its zone is skipped, else None."""
        if not self.skip_unhealthy or lookup.kind not in TEST_ENTRIES:
            return None
        health = self.zones.get((lookup.kind, lookup.zone))
        if health is None or not health.untrusted:
            return None
        return DnsAnswer("clear", error=f"zone {lookup.zone} skipped: {health.problem}")

    def update(self, health: ZoneHealth) -> None:
        key = (health.kind, health.zone)
        before = self.zones.get(key)
        self.zones[key] = health
        metrics.zone_health(health.kind.value, health.zone, health.healthy)
        if before is not None and before.problem == health.problem:
            return
        if not health.healthy:
            what = ("its lookups answer not listed until it recovers" if health.untrusted and self.skip_unhealthy
                    else "still used (dns.skip_unhealthy is off)" if health.untrusted else "still used")
            log.warning("dns %s zone %s is unhealthy: %s; %s", health.kind.value, health.zone, health.problem, what)
        elif before is not None:
            log.warning("dns %s zone %s is healthy again", health.kind.value, health.zone)

    async def check(self, resolver, zones) -> None:
        for health in await asyncio.gather(*(check_zone(resolver, kind, zone) for kind, zone in zones)):
            self.update(health)
