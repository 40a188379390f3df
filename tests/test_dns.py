"""smtpfw.checks.dns against a real DNS server on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from smtpfw.checks.dns import DnsSession, Resolver
from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind
from tests.support.cli import wait_until
from tests.support.dnsserver import DnsServer, guess_kind, load_rbldnsd

ZONES = Path(__file__).resolve().parents[1].parent / "shared" / "zones"

RECORDS = {
    ("mx.example.", "MX"): ["10 mail.mx.example."],
    ("null.example.", "MX"): ["0 ."],
    ("aonly.example.", "A"): ["192.0.2.7"],
    ("v6only.example.", "AAAA"): ["2001:db8::7"],
    # confirmed: PTR -> host.example -> A back to the IP
    ("1.2.0.192.in-addr.arpa.", "PTR"): ["host.example."],
    ("host.example.", "A"): ["192.0.2.1"],
    # not confirmed: the name points elsewhere
    ("2.2.0.192.in-addr.arpa.", "PTR"): ["liar.example."],
    ("liar.example.", "A"): ["192.0.2.200"],
    # IPv6 PTR, confirmed via AAAA
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.", "PTR"):
        ["v6host.example."],
    ("v6host.example.", "AAAA"): ["2001:db8::1"],
}
AUTHORITATIVE = ["example.", "in-addr.arpa.", "ip6.arpa."]


def dnsbl(ip, zone="bl.test"):
    return Lookup(LookupKind.DNSBL, ip, zone)


def rhsbl(domain, zone="dbl.test"):
    return Lookup(LookupKind.RHSBL, domain, zone)


def ptr(ip):
    return Lookup(LookupKind.PTR, ip)


def resolvable(domain):
    return Lookup(LookupKind.RESOLVABLE, domain)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def v6zone(tmp_path_factory):
    path = tmp_path_factory.mktemp("zones") / "bl6.test"
    path.write_text(
        "$TTL 60\n"
        ":127.0.0.2:IPv6 $ listed\n"
        "2001:db8::66\n"
        "2001:db8:bad::/48 :127.0.0.3:bad net $\n"
        "198.51.100.0/24\n")
    return path


@pytest.fixture(scope="module")
def server(v6zone):
    zones = [ZONES / "bl.test", ZONES / "dbl.test", v6zone]
    with DnsServer(zones, RECORDS, AUTHORITATIVE) as srv:
        yield srv


@pytest.fixture
def resolver(server):
    return Resolver([server.address], timeout=1.0)


def lookup(resolver, lk) -> DnsAnswer:
    return run(resolver.lookup(lk))


# -- zone files ---------------------------------------------------------------

def test_zone_files_parse():
    assert guess_kind(ZONES / "bl.test") == "ip4set"
    assert guess_kind(ZONES / "dbl.test") == "dnset"
    bl = load_rbldnsd(ZONES / "bl.test")
    assert str(bl.name) == "bl.test." and bl.ttl == 60 and bl.soa is not None
    assert bl.lookup(("2", "0", "0", "127"))[:2] == ("127.0.0.2", "Listed in bl.test: $ is a test listing")
    dbl = load_rbldnsd(ZONES / "dbl.test", "dbl.test", "dnset")
    assert dbl.lookup(("spam", "example")) is not None
    assert dbl.lookup(("sub", "spam", "example")) is None


def test_dnset_wildcards(tmp_path):
    path = tmp_path / "w.test"
    path.write_text(":2:w $\nexact.example\n.dot.example\n*.star.example\n!ok.dot.example\n")
    z = load_rbldnsd(path)
    assert z.kind == "dnset"
    assert z.lookup(("exact", "example")) and not z.lookup(("a", "exact", "example"))
    assert z.lookup(("dot", "example")) and z.lookup(("a", "b", "dot", "example"))
    assert not z.lookup(("star", "example")) and z.lookup(("a", "star", "example"))
    assert not z.lookup(("ok", "dot", "example"))


# -- DNSBL / RHSBL ------------------------------------------------------------

def test_dnsbl_listed_with_txt(resolver):
    ans = lookup(resolver, dnsbl("127.0.0.2"))
    assert ans.status == "listed" and ans.codes == ("127.0.0.2",)
    assert "127.0.0.2" in ans.txt and ans.txt.startswith("Listed in bl.test")


def test_dnsbl_own_code_and_txt(resolver):
    ans = lookup(resolver, dnsbl("127.0.0.5"))
    assert ans.status == "listed" and ans.codes == ("127.0.0.4",)
    assert ans.txt == "Listed in bl.test with code 4: 127.0.0.5"


def test_dnsbl_clear(resolver):
    assert lookup(resolver, dnsbl("192.0.2.1")) == DnsAnswer("clear")


def test_dnsbl_invalid_ip(resolver):
    ans = lookup(resolver, dnsbl("not-an-ip"))
    assert ans.failed and ans.error == "invalid IP"


def test_dnsbl_ipv6(resolver):
    ans = lookup(resolver, dnsbl("2001:db8::66", "bl6.test"))
    assert ans.status == "listed" and ans.txt == "IPv6 2001:db8::66 listed"
    ans = lookup(resolver, dnsbl("2001:db8:bad::1234", "bl6.test"))
    assert ans.codes == ("127.0.0.3",) and ans.txt == "bad net 2001:db8:bad::1234"
    assert lookup(resolver, dnsbl("2001:db8::67", "bl6.test")).status == "clear"
    assert lookup(resolver, dnsbl("198.51.100.9", "bl6.test")).status == "listed"


def test_rhsbl(resolver):
    ans = lookup(resolver, rhsbl("spam.example"))
    assert ans.status == "listed" and ans.txt == "Domain spam.example is listed in dbl.test"
    assert lookup(resolver, rhsbl("sub.spam.example")).status == "clear"
    assert lookup(resolver, rhsbl("SPAM.Example")).status == "listed"
    assert lookup(resolver, rhsbl("spam.example.")).status == "listed"


@pytest.mark.parametrize("bad", ["", ".", "a..b", "example." + "x" * 64, "sp am.example"])
def test_rhsbl_invalid_domain(resolver, bad):
    ans = lookup(resolver, rhsbl(bad))
    assert ans.failed and ans.error == "invalid domain"


def test_rhsbl_lookup_of_a_name_not_fit_for_the_zone_drops_leading_labels(resolver):
    """Not "invalid domain" (read by rules as not listed): the listed domain
    below the attacker's labels is what is looked up.  (Names too long in
    total: tests/test_hardening_protocol.py, with a zone that lists subdomains.)"""
    ans = lookup(resolver, rhsbl("x" * 64 + ".spam.example"))
    assert ans.status == "listed"


# -- PTR ----------------------------------------------------------------------

def test_ptr_confirmed(resolver):
    ans = lookup(resolver, ptr("192.0.2.1"))
    assert ans == DnsAnswer("found", names=("host.example",), confirmed=True)


def test_ptr_not_confirmed(resolver):
    ans = lookup(resolver, ptr("192.0.2.2"))
    assert ans == DnsAnswer("found", names=("liar.example",), confirmed=False)


def test_ptr_none(resolver):
    assert lookup(resolver, ptr("192.0.2.3")).status == "none"


def test_ptr_ipv6_confirmed(resolver):
    ans = lookup(resolver, ptr("2001:db8::1"))
    assert ans == DnsAnswer("found", names=("v6host.example",), confirmed=True)


# -- resolvable ---------------------------------------------------------------

@pytest.mark.parametrize("domain,status", [
    ("mx.example", "yes"),
    ("aonly.example", "yes"),
    ("v6only.example", "yes"),
    ("nx.example", "no"),
    ("null.example", "nullmx"),
    ("MX.Example.", "yes"),
])
def test_resolvable(resolver, domain, status):
    assert lookup(resolver, resolvable(domain)).status == status


def test_outside_served_zones_is_refused(resolver):
    ans = lookup(resolver, resolvable("example.org"))
    assert ans.failed and ans.error == "REFUSED"


# -- faults -------------------------------------------------------------------

def test_blackhole_times_out():
    with DnsServer(mode="blackhole") as srv:
        r = Resolver([srv.address], timeout=0.5)
        t0 = time.monotonic()
        ans = lookup(r, dnsbl("127.0.0.2"))
        elapsed = time.monotonic() - t0
    assert ans.failed and ans.error == "timeout"
    assert 0.4 < elapsed < 1.2


def test_session_budget_against_blackhole():
    with DnsServer(mode="blackhole") as srv:
        r = Resolver([srv.address], timeout=5.0)

        async def go():
            session = DnsSession(r, budget=0.5)
            lks = [dnsbl("127.0.0.2"), rhsbl("spam.example"), ptr("192.0.2.1")]
            session.start(lks[:1])
            t0 = time.monotonic()
            res = await session.results(lks)
            elapsed = time.monotonic() - t0
            assert session.answers == res
            session.close()
            return res, elapsed

        res, elapsed = run(go())
    assert elapsed < 1.5
    assert all(a.failed and a.error == "dns budget exceeded" for a in res.values())


def test_servfail():
    with DnsServer(mode="servfail") as srv:
        ans = lookup(Resolver([srv.address], timeout=1.0), dnsbl("127.0.0.2"))
    assert ans.failed and ans.error == "SERVFAIL"


def test_error_code_is_not_a_listing(caplog):
    with DnsServer(fixed_a="127.255.255.254") as srv:
        r = Resolver([srv.address], timeout=1.0)
        with caplog.at_level(logging.WARNING, logger="smtpfw.dns"):
            ans = lookup(r, dnsbl("127.0.0.2"))
            lookup(r, dnsbl("127.0.0.3"))   # same zone+error: not logged again
    assert ans.failed and ans.status != "listed"
    assert "127.255.255.254" in ans.error and "error code" in ans.error
    assert len([r for r in caplog.records if r.name == "smtpfw.dns"]) == 1


def test_answer_outside_loopback_net():
    with DnsServer(fixed_a="8.8.8.8") as srv:
        ans = lookup(Resolver([srv.address], timeout=1.0), rhsbl("spam.example"))
    assert ans.failed and ans.error == "answer 8.8.8.8 outside 127.0.0.0/8"


def test_nothing_listening():
    with DnsServer() as srv:
        addr = srv.address
    ans = lookup(Resolver([addr], timeout=0.5), dnsbl("127.0.0.2"))
    assert ans.failed


def test_failure_recovers_after_short_cache(server, monkeypatch):
    import smtpfw.checks.dns as dnsmod
    monkeypatch.setattr(dnsmod, "FAILURE_TTL", 0.2)
    r = Resolver([server.address], timeout=1.0)
    server.mode = "servfail"
    try:
        assert lookup(r, dnsbl("10.1.2.3")).failed
        n = server.queries
        assert lookup(r, dnsbl("10.1.2.3")).failed   # cached failure
        assert server.queries == n
    finally:
        server.mode = None

    # The failure is cached for FAILURE_TTL (no query meanwhile), then the
    # server is asked again: wait for that answer, not a fixed time.
    def recovered():
        answer = lookup(r, dnsbl("10.1.2.3"))
        if answer.failed:
            assert server.queries == n, "a cached failure was sent to the server again"
            return False
        return answer.status == "listed"

    wait_until(recovered, 5, "the cached failure to expire")


def test_truncated_udp_falls_back_to_tcp(server):
    r = Resolver([server.address], timeout=1.0)
    server.mode = "truncate"
    try:
        ans = lookup(r, dnsbl("127.0.0.2"))
    finally:
        server.mode = None
    assert ans.status == "listed" and "127.0.0.2" in ans.txt


# -- cache, coalescing, concurrency -------------------------------------------

def test_cache_hit_sends_no_query(server, resolver):
    first = lookup(resolver, dnsbl("10.66.66.66"))
    n = server.queries
    assert lookup(resolver, dnsbl("10.66.66.66")) == first
    assert resolver.cached(dnsbl("10.66.66.66")) == first
    assert server.queries == n
    # negative answers are cached too
    lookup(resolver, dnsbl("10.66.66.67"))
    n = server.queries
    assert lookup(resolver, dnsbl("10.66.66.67")).status == "clear"
    assert server.queries == n


def test_cache_is_bounded(server):
    r = Resolver([server.address], timeout=1.0, cache_size=3)

    async def go():
        await asyncio.gather(*(r.lookup(dnsbl(f"192.0.2.{i}")) for i in range(10)))

    run(go())
    assert len(r._cache) == 3


def test_concurrent_identical_lookups_coalesce(server, resolver):
    n = server.queries

    async def go():
        return await asyncio.gather(*(resolver.lookup(dnsbl("192.0.2.99")) for _ in range(50)))

    answers = run(go())
    assert all(a.status == "listed" for a in answers)
    assert server.queries - n == 2   # one A + one TXT for all 50


def test_session_uses_cache_without_tasks(server, resolver):
    lks = [dnsbl("127.0.0.2"), ptr("192.0.2.1")]
    for lk in lks:
        lookup(resolver, lk)

    async def go():
        session = DnsSession(resolver)
        before = len(asyncio.all_tasks())
        res = await session.results(lks)
        assert len(asyncio.all_tasks()) == before
        return res

    res = run(go())
    assert res[lks[0]].status == "listed" and res[lks[1]].confirmed


def test_session_start_then_results(server, resolver):
    async def go():
        session = DnsSession(resolver, budget=5)
        session.start([dnsbl("127.0.0.2"), rhsbl("bad.example")])
        session.start([dnsbl("127.0.0.2")])   # idempotent
        # start() runs the lookups without anyone awaiting them: both are
        # answered while nobody asks for results (no fixed sleep: wait for it)
        deadline = time.monotonic() + 5
        while len(session.answers) < 2:
            assert time.monotonic() < deadline, f"started lookups never answered: {session.answers}"
            await asyncio.sleep(0.01)
        res = await session.results([rhsbl("bad.example"), resolvable("mx.example")])
        return session, res

    session, res = run(go())
    assert res[rhsbl("bad.example")].status == "listed"
    assert res[resolvable("mx.example")].status == "yes"
    assert set(session.answers) == {dnsbl("127.0.0.2"), rhsbl("bad.example"),
                                    resolvable("mx.example")}


def test_distinct_lookups_run_concurrently(v6zone):
    zones = [ZONES / "bl.test", ZONES / "dbl.test", v6zone]
    with DnsServer(zones, RECORDS, AUTHORITATIVE, delay=0.2) as srv:
        r = Resolver([srv.address], timeout=3.0)
        lks = [dnsbl(f"10.9.{i // 250}.{i % 250}") for i in range(100)]

        async def go():
            session = DnsSession(r, budget=5)
            t0 = time.monotonic()
            res = await session.results(lks)
            return res, time.monotonic() - t0

        res, elapsed = run(go())
    assert all(a.status == "clear" for a in res.values())
    assert elapsed < 2.0
