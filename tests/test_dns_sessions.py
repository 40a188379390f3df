"""DNS checks seen from SMTP sessions on the real server: budgets, failures,
concurrency, IPv6 clients."""

from __future__ import annotations

import concurrent.futures
import smtplib
import tempfile
import time
from pathlib import Path

import pytest

from tests.smtp_client import RawClient
from tests.support.dnsserver import DnsServer, load_rbldnsd
from tests.support.server import SHARED, has_ipv6_loopback, running_server

RULES = """
zone bl  = dnsbl "bl.test"
zone dbl = rhsbl "dbl.test"
on connect:
    [dnsbl] reject 554 5.7.1 "listed: {dnsbl.txt}" if client.ip listed in bl
    [dnsbl-failed] tag dnsbl_failed if client.ip lookup failed in bl
on mail:
    [rhsbl] reject 550 5.7.1 "domain listed" if sender.domain listed in dbl
on rcpt:
    [failed] tempfail 451 4.7.1 "dnsbl lookup failed" if tagged dnsbl_failed
    accept if rcpt.domain = "example.net"
    reject 554 5.7.1 "Relaying denied"
"""


def one_session(address, source="127.0.0.1", sender="a@good.example") -> str:
    """The reply ("CODE TEXT") to MAIL if it was refused, else to RCPT."""
    with smtplib.SMTP(*address, source_address=(source, 0), timeout=30) as s:
        s.ehlo("client.example")
        code, text = s.mail(sender)
        if code == 250:
            code, text = s.rcpt("u@example.net")
        return f"{code} {text.decode()}"


def test_concurrent_sessions_do_not_serialise_dns():
    """100 sessions, every DNS answer delayed 200 ms: a serial resolver would need 20 s+."""
    with DnsServer([SHARED / "zones" / "bl.test", SHARED / "zones" / "dbl.test"], delay=0.2) as dns:
        with running_server(rules_text=RULES, dns=dns, max_connections_per_ip=200) as srv:
            start = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(100) as pool:
                codes = list(pool.map(
                    lambda i: one_session(srv.address, f"127.0.{1 + i // 200}.{10 + i % 200}",
                                          f"user{i}@domain{i}.example"), range(100)))
            elapsed = time.monotonic() - start
    assert [c[:3] for c in codes] == ["250"] * 100, [c for c in codes if not c.startswith("250")][:3]
    assert elapsed < 5.0, f"100 sessions took {elapsed:.1f}s"


def test_dead_dns_session_completes_within_budget():
    with DnsServer(mode="blackhole") as dns:
        with running_server(rules_text=RULES, dns=dns, dns_timeout=5.0, dns_session_budget=0.5) as srv:
            start = time.monotonic()
            code = one_session(srv.address)
            elapsed = time.monotonic() - start
    assert code == "451 4.7.1 dnsbl lookup failed"      # the rule saw "lookup failed"
    assert elapsed < 2.5


@pytest.mark.parametrize("fault", [{"mode": "servfail"}, {"fixed_a": "127.255.255.254"}])
def test_dns_faults_are_failures_not_listings(fault):
    with DnsServer([SHARED / "zones" / "bl.test"], **fault) as dns:
        # no health check: it would find the list answering 127.255.255.254 to
        # everything and skip it (tests/test_dns_health.py), and whether it has
        # by the first session is a race; this test is about the lookup itself
        with running_server(rules_text=RULES, dns=dns, dns_health_interval=0) as srv:
            # the rule saw a failed lookup, not a listing (and no internal error either)
            assert one_session(srv.address, source="127.0.0.2") == "451 4.7.1 dnsbl lookup failed"


def test_listed_loopback_client_rejected_at_connect(shared_dns):
    with running_server(rules_text=RULES, dns=shared_dns) as srv:
        c = RawClient(srv.address, source="127.0.0.2")
        assert c.reply() == "554 5.7.1 listed: Listed in bl.test: 127.0.0.2 is a test listing"
        assert c.closed()
        assert one_session(srv.address, sender="x@SPAM.example") == "550 5.7.1 domain listed"


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_client_dnsbl():
    with tempfile.TemporaryDirectory() as d:
        zone = Path(d) / "bl.test"
        zone.write_text(":127.0.0.2:IPv6 listed: $\n0:0:0:0:0:0:0:1\n")
        with DnsServer([load_rbldnsd(zone, "bl.test", "ip4set")]) as dns:
            with running_server(rules_text=RULES, dns=dns) as srv:
                srv.call(_listen_v6, srv)
                c = RawClient(("::1", srv.v6port))
                assert c.reply() == "554 5.7.1 listed: IPv6 listed: ::1"


async def _listen_v6(srv):
    import asyncio
    server = srv.server
    factory = server.protocol_factory(server.config.listen[0])
    listener = await asyncio.get_running_loop().create_server(factory, "::1", 0)
    server.listeners.append(listener)
    srv.v6port = listener.sockets[0].getsockname()[1]


@pytest.mark.parametrize("records,expected", [
    ({("1.0.0.127.in-addr.arpa.", "PTR"): ["host.test."], ("host.test.", "A"): ["127.0.0.1"]},
     "rdns=host.test ptr=found fcrdns=yes"),
    ({("1.0.0.127.in-addr.arpa.", "PTR"): ["liar.test."], ("liar.test.", "A"): ["192.0.2.9"]},
     "rdns=liar.test ptr=found fcrdns=no"),
    ({}, "rdns= ptr=none fcrdns=no"),
])
def test_reverse_dns_fields(records, expected):
    rules = """
on connect:
    tag fcrdns if client.fcrdns
on rcpt:
    [show] reject 550 5.7.1 "rdns={client.rdns} ptr={client.ptr} fcrdns=yes" if tagged fcrdns
    [show2] reject 550 5.7.1 "rdns={client.rdns} ptr={client.ptr} fcrdns=no"
"""
    with DnsServer(records=records, authoritative=["in-addr.arpa.", "test."]) as dns:
        with running_server(rules_text=rules, dns=dns) as srv:
            with smtplib.SMTP(*srv.address, timeout=10) as s:
                s.ehlo("client.example")
                s.mail("a@b.example")
                code, text = s.rcpt("u@localhost")
    assert text.decode() == "5.7.1 " + expected
