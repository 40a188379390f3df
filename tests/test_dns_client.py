"""smtpfw's own DNS-over-UDP client (smtpfw/checks/dnsclient.py), against
the loopback DNS server: forged answers ignored, sockets replaced (new
source ports), servers asked in order, answers without records read
without dnspython, and a reader that never raises on garbage."""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest

from smtpfw.checks import dnsclient
from smtpfw.checks.dns import Resolver
from smtpfw.checks.dnsclient import Negative, negative
from smtpfw.checks.dnsresult import Lookup, LookupKind
from tests.support.dnsserver import DnsServer

ZONES = Path(__file__).resolve().parent.parent.parent / "shared" / "zones"


def dnsbl(ip: str) -> Lookup:
    return Lookup(LookupKind.DNSBL, ip, "bl.test")


@pytest.fixture(scope="module")
def server():
    with DnsServer([ZONES / "bl.test"]) as srv:
        yield srv


def test_forged_answers_are_ignored(server):
    """Another ID, or the right ID with another question: neither is the
    answer, though both say "listed"."""
    server.forge = True
    try:
        r = Resolver([server.address], timeout=1.0, cache_size=0)
        clear = asyncio.run(r.lookup(dnsbl("198.51.100.99")))
        listed = asyncio.run(r.lookup(dnsbl("127.0.0.2")))
    finally:
        server.forge = False
    assert clear.status == "clear", clear
    assert listed.status == "listed" and listed.codes == ("127.0.0.2",)


def test_sockets_are_replaced_so_the_source_port_changes(server, monkeypatch):
    monkeypatch.setattr(dnsclient, "SOCKET_QUERIES", 20)
    r = Resolver([server.address], timeout=1.0, cache_size=0)
    server.udp_clients.clear()

    async def go():
        return await asyncio.gather(*(r.lookup(dnsbl(f"198.51.100.{i}")) for i in range(1, 101)))

    answers = asyncio.run(go())
    assert all(a.status == "clear" for a in answers)
    assert len({port for _host, port in server.udp_clients}) >= 3


def test_a_dead_first_server_leaves_time_for_the_next():
    with DnsServer(mode="blackhole") as dead, DnsServer([ZONES / "bl.test"]) as live:
        r = Resolver([dead.address, live.address], timeout=1.0)
        answer = asyncio.run(r.lookup(dnsbl("127.0.0.2")))
    assert answer.status == "listed"


def test_servfail_then_an_answer_from_the_next_server():
    with DnsServer(mode="servfail") as bad, DnsServer([ZONES / "bl.test"]) as good:
        r = Resolver([bad.address, good.address], timeout=1.0)
        answer = asyncio.run(r.lookup(dnsbl("127.0.0.2")))
    assert answer.status == "listed"


def _nxdomain(soa_ttl: int, minimum: int) -> tuple[bytes, int]:
    query = dns.message.make_query("9.9.9.192.bl.test", "A")
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.authority.append(dns.rrset.from_text(
        "bl.test.", soa_ttl, "IN", "SOA", f"ns.bl.test. hostmaster.bl.test. 1 600 300 86400 {minimum}"))
    question = len(query.question[0].name.to_wire()) + 4
    return response.to_wire(), question


def test_a_negative_answer_is_read_with_its_soa():
    wire, qlen = _nxdomain(120, 45)
    got = negative(wire, qlen)
    assert isinstance(got, Negative) and got.rcode == dns.rcode.NXDOMAIN and got.soa == (120, 45)


def test_an_answer_with_records_is_left_to_dnspython():
    query = dns.message.make_query("2.0.0.127.bl.test", "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("2.0.0.127.bl.test.", 60, "IN", "A", "127.0.0.2"))
    assert negative(response.to_wire(), len(query.question[0].name.to_wire()) + 4) is None


def test_the_negative_reader_never_raises_on_garbage():
    wire, qlen = _nxdomain(120, 45)
    rnd = random.Random(7)
    for _ in range(3000):
        data = bytearray(wire)
        for _ in range(rnd.randint(1, 6)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        cut = bytes(data[:rnd.randint(0, len(data))]) if rnd.random() < 0.3 else bytes(data)
        got = negative(cut, qlen)
        assert got is None or isinstance(got, Negative)
    assert negative(struct.pack(">HHHHHH", 1, 0x8183, 1, 0, 0, 0), 0) is not None   # no SOA: still negative


def test_many_queries_at_once_to_a_slow_server_are_all_answered():
    """400 queries in flight, answered together after 50 ms: spread over
    sockets whose buffers hold them, none lost to a timeout."""
    with DnsServer([ZONES / "bl.test"], delay=0.05) as slow:
        r = Resolver([slow.address], timeout=2.0, cache_size=0)

        async def go():
            started = asyncio.get_running_loop().time()
            answers = await asyncio.gather(*(r.lookup(dnsbl(f"198.51.{i >> 8}.{i & 255}")) for i in range(400)))
            return answers, asyncio.get_running_loop().time() - started

        answers, took = asyncio.run(go())
        ports = {port for _host, port in slow.udp_clients}
    assert [a.status for a in answers] == ["clear"] * 400
    assert took < 1.5 and len(ports) >= 400 // dnsclient.SOCKET_INFLIGHT
