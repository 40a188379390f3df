"""The "addresses" lookup (a name's A and AAAA records) end to end: the
resolver against a real DNS server on loopback (no mocks), the `dns
addresses` lines of .tests files, and recording -> replay."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

import smtpfw.checks.dns as dnsmod
from smtpfw import facts
from smtpfw.checks.dns import FAILURE_TTL, MAX_ADDRESSES, DnsSession, Resolver
from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind
from smtpfw.diagnostics import Code
from smtpfw.facts import RecordedFacts
from smtpfw.recording import Recorder, read_records, recorded_facts, session_record
from smtpfw.replay import session as replay_session
from smtpfw.replay.build import UNDECLARED, DeclaredDns, make_record
from smtpfw.replay.records import iter_records, shape_problem
from smtpfw.replay.rulestests import parse_tests
from smtpfw.replay.trace import describe_answer
from smtpfw.session import SessionState
from tests.support.cli import run as smtpfw
from tests.support.dnsserver import DnsServer

TTL = 600                 # of every record served below
NEGATIVE_TTL = 45         # the resolver's, for NODATA without an SOA
MANY = 40                 # addresses of each family of many.example (over the cap)

RECORDS = {
    ("both.example.", "A"): ["192.0.2.20", "192.0.2.3", "192.0.2.20"],
    ("both.example.", "AAAA"): ["2001:db8::20", "2001:DB8:0:0::a"],
    ("v4.example.", "A"): ["192.0.2.7"],
    ("v6.example.", "AAAA"): ["2001:db8::7"],
    ("mxonly.example.", "MX"): ["10 mail.example."],          # A and AAAA: NODATA
    ("many.example.", "A"): [f"198.51.100.{i}" for i in range(MANY, 0, -1)],
    ("many.example.", "AAAA"): [f"2001:db8::{i:x}" for i in range(MANY, 0, -1)],
    # one family answers, the other fails (see FlakyServer)
    ("v6servfail.example.", "A"): ["192.0.2.30"],
    ("v6servfail.example.", "AAAA"): ["2001:db8::30"],
    ("v6silent.example.", "A"): ["192.0.2.31"],
    ("v4servfail.example.", "AAAA"): ["2001:db8::32"],
    ("v4servfail-v6none.example.", "MX"): ["10 mail.example."],
}
AUTHORITATIVE = ["example."]


class FlakyServer(DnsServer):
    """The loopback server, with some queries failing by name: AAAA of
    v6servfail.example answers SERVFAIL, AAAA of v6silent.example is never
    answered, A of v4servfail*.example answers SERVFAIL."""

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        q = query.question[0] if len(query.question) == 1 else None
        if q is not None:
            name = q.name.to_text().lower()
            if ((name == "v6servfail.example." and q.rdtype == dns.rdatatype.AAAA)
                    or (name.startswith("v4servfail") and q.rdtype == dns.rdatatype.A)):
                response = dns.message.make_response(query)
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
        return super().answer(query)

    async def _respond(self, wire: bytes, max_size: int | None) -> bytes | None:
        query = dns.message.from_wire(wire)
        q = query.question[0]
        if q.name.to_text().lower() == "v6silent.example." and q.rdtype == dns.rdatatype.AAAA:
            self._count()
            return None
        return await super()._respond(wire, max_size)


def addresses(name: str) -> Lookup:
    return Lookup(LookupKind.ADDRESSES, name)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def server():
    with FlakyServer(records=RECORDS, authoritative=AUTHORITATIVE, ttl=TTL) as srv:
        yield srv


def make_resolver(server, **kw) -> Resolver:
    kw.setdefault("timeout", 1.0)
    kw.setdefault("negative_ttl", NEGATIVE_TTL)
    return Resolver([server.address], **kw)


@pytest.fixture
def resolver(server):
    return make_resolver(server)


def lookup(resolver: Resolver, name: str) -> DnsAnswer:
    return run(resolver.lookup(addresses(name)))


def cached_for(resolver: Resolver, name: str) -> float:
    """How long the cached answer for ``name`` still holds, in seconds."""
    expires, _answer = resolver._cache[addresses(name)]
    return expires - time.monotonic()


# -- found ----------------------------------------------------------------------

def test_found_both_families_ipv4_first_each_sorted_without_duplicates(resolver):
    assert lookup(resolver, "both.example") == DnsAnswer(
        "found", codes=("192.0.2.3", "192.0.2.20", "2001:db8::a", "2001:db8::20"))


def test_found_ipv4_only(resolver):
    assert lookup(resolver, "v4.example") == DnsAnswer("found", codes=("192.0.2.7",))


def test_found_ipv6_only(resolver):
    assert lookup(resolver, "v6.example") == DnsAnswer("found", codes=("2001:db8::7",))


def test_name_is_case_and_trailing_dot_insensitive(resolver):
    assert lookup(resolver, "Both.EXAMPLE.") == lookup(resolver, "both.example")


def test_both_families_are_asked_concurrently(server):
    server.delay = 0.4
    try:
        r = make_resolver(server, timeout=3.0)
        n = server.queries
        t0 = time.monotonic()
        answer = lookup(r, "both.example")
        elapsed = time.monotonic() - t0
    finally:
        server.delay = 0.0
    assert answer.status == "found" and len(answer.codes) == 4
    assert server.queries - n == 2           # one A, one AAAA
    assert elapsed < 0.75, f"A and AAAA asked one after the other ({elapsed:.2f}s)"


def test_address_cap_keeps_the_lowest_of_each_family(resolver):
    """A zone answering many records (here over TCP: the UDP answer is
    truncated) leaves at most MAX_ADDRESSES of each family in the answer."""
    answer = lookup(resolver, "many.example")
    assert answer.status == "found"
    assert answer.codes == (tuple(f"198.51.100.{i}" for i in range(1, MAX_ADDRESSES + 1))
                            + tuple(f"2001:db8::{i:x}" for i in range(1, MAX_ADDRESSES + 1)))


# -- none -----------------------------------------------------------------------

def test_nxdomain_is_none(resolver):
    assert lookup(resolver, "nx.example") == DnsAnswer("none")


def test_nodata_for_both_families_is_none(resolver):
    assert lookup(resolver, "mxonly.example") == DnsAnswer("none")


# -- failed ---------------------------------------------------------------------

def test_server_that_does_not_answer_times_out():
    with DnsServer(mode="blackhole") as srv:
        r = Resolver([srv.address], timeout=0.5)
        t0 = time.monotonic()
        answer = lookup(r, "both.example")
        elapsed = time.monotonic() - t0
    assert answer == DnsAnswer("failed", error="timeout")
    assert elapsed < 1.2, "A and AAAA share one timeout (asked concurrently)"


def test_servfail():
    with DnsServer(mode="servfail") as srv:
        answer = lookup(Resolver([srv.address], timeout=1.0), "both.example")
    assert answer == DnsAnswer("failed", error="SERVFAIL")


def test_refused_outside_served_zones(resolver):
    assert lookup(resolver, "example.org") == DnsAnswer("failed", error="REFUSED")


@pytest.mark.parametrize("bad", ["", "sp am.example", "a..b", "x" * 64 + ".example"])
def test_invalid_name(resolver, bad):
    assert lookup(resolver, bad) == DnsAnswer("failed", error="invalid domain")


def test_a_failed_and_no_aaaa_is_failed_not_none(resolver):
    """The failed A query might have held the address: not "none"."""
    assert lookup(resolver, "v4servfail-v6none.example") == DnsAnswer("failed", error="SERVFAIL")


def test_failure_is_cached_briefly_and_logged_once(server, caplog):
    r = make_resolver(server, min_ttl=120)
    with caplog.at_level("WARNING", logger="smtpfw.dns"):
        assert lookup(r, "v4servfail-v6none.example").failed
        n = server.queries
        assert lookup(r, "v4servfail-v6none.example").failed
    assert server.queries == n                      # from the cache
    assert 0 < cached_for(r, "v4servfail-v6none.example") <= FAILURE_TTL
    assert len([m for m in caplog.messages if "addresses lookup of v4servfail-v6none.example" in m]) == 1


# -- one family failed, the other answered ----------------------------------------

@pytest.mark.parametrize("name,codes,error", [
    ("v6servfail.example", ("192.0.2.30",), "AAAA lookup failed: SERVFAIL"),
    ("v6silent.example", ("192.0.2.31",), "AAAA lookup failed: timeout"),
    ("v4servfail.example", ("2001:db8::32",), "A lookup failed: SERVFAIL"),
])
def test_partial_answer_is_found_with_what_there_is(server, name, codes, error):
    r = make_resolver(server, timeout=0.5)
    answer = lookup(r, name)
    assert answer == DnsAnswer("found", codes=codes, error=error)
    assert not answer.failed
    assert describe_answer(answer) == f"found {','.join(codes)}: {error}"


def test_partial_answer_is_cached_for_the_failure_ttl_only(server, monkeypatch):
    """Not the records' TTL, nor raised to min_ttl: it may lack the
    client's address, so it is asked again soon, and then complete."""
    monkeypatch.setattr(dnsmod, "FAILURE_TTL", 0.3)
    r = make_resolver(server, min_ttl=120)
    assert lookup(r, "v6servfail.example").error
    assert 0 < cached_for(r, "v6servfail.example") <= 0.3
    n = server.queries
    assert lookup(r, "v6servfail.example").error     # still cached
    assert server.queries == n
    time.sleep(0.35)
    assert lookup(r, "v6servfail.example").error
    assert server.queries == n + 2                    # asked again: A and AAAA


# -- caching ----------------------------------------------------------------------

def test_cache_hit_sends_no_query(server, resolver):
    first = lookup(resolver, "v4.example")
    n = server.queries
    assert lookup(resolver, "v4.example") == first
    assert resolver.cached(addresses("v4.example")) == first
    assert server.queries == n
    lookup(resolver, "nx.example")                     # negative answers too
    n = server.queries
    assert lookup(resolver, "nx.example") == DnsAnswer("none")
    assert server.queries == n


def test_ttl_is_the_smallest_of_the_parts(resolver):
    """Both families found: their TTL.  One found, the other NODATA: the
    negative TTL bounds it (the name may gain the other family)."""
    lookup(resolver, "both.example")
    assert TTL - 5 < cached_for(resolver, "both.example") <= TTL
    lookup(resolver, "v4.example")
    assert NEGATIVE_TTL - 5 < cached_for(resolver, "v4.example") <= NEGATIVE_TTL
    lookup(resolver, "mxonly.example")
    assert NEGATIVE_TTL - 5 < cached_for(resolver, "mxonly.example") <= NEGATIVE_TTL


def test_nxdomain_ttl_follows_the_zone_soa(server):
    r = make_resolver(server, negative_ttl=TTL * 2)
    lookup(r, "nx.example")
    assert TTL - 5 < cached_for(r, "nx.example") <= TTL      # SOA minimum (the server's ttl)


def test_concurrent_identical_lookups_coalesce(server, resolver):
    n = server.queries

    async def go():
        return await asyncio.gather(*(resolver.lookup(addresses("v6.example")) for _ in range(30)))

    answers = run(go())
    assert set(answers) == {DnsAnswer("found", codes=("2001:db8::7",))}
    assert server.queries - n == 2


def test_session_runs_addresses_lookups_with_the_others(server, resolver):
    lks = [addresses("both.example"), addresses("nx.example"), Lookup(LookupKind.RESOLVABLE, "mxonly.example")]

    async def go():
        session = DnsSession(resolver, budget=5)
        res = await session.results(lks)
        session.close()
        return res

    res = run(go())
    assert res[lks[0]].status == "found" and res[lks[1]].status == "none" and res[lks[2]].status == "yes"


# -- .tests files: `dns addresses` ---------------------------------------------------

def test_tests_file_dns_addresses_lines():
    tf = parse_tests("t.tests", "\n".join([
        "dns addresses mx.example = found 192.0.2.1 2001:db8::1",
        "dns addresses Both.Example. = found 2001:DB8::a 192.0.2.20 192.0.2.3 192.0.2.3",
        "dns addresses gone.example = none",
        'dns addresses broken.example = failed "SERVFAIL"',
        "dns addresses slow.example = failed",
    ]), [])
    assert tf.diags == []
    assert tf.dns == {
        addresses("mx.example"): DnsAnswer("found", codes=("192.0.2.1", "2001:db8::1")),
        addresses("both.example"): DnsAnswer("found", codes=("192.0.2.3", "192.0.2.20", "2001:db8::a")),
        addresses("gone.example"): DnsAnswer("none"),
        addresses("broken.example"): DnsAnswer("failed", error="SERVFAIL"),
        addresses("slow.example"): DnsAnswer("failed", error="declared failed"),
    }


USAGE = ("write `dns ZONE NAME = listed|clear|failed ...`, `dns ptr IP = found NAME...|none|failed`, "
         "`dns resolvable DOMAIN = yes|no|nullmx|failed` or `dns addresses NAME = found IP...|none|failed`")


@pytest.mark.parametrize("line,message,column,help", [
    ("dns addresses mx.example = yes", "an addresses answer is found, none, failed; not `yes`", 28, None),
    ("dns addresses mx.example = found", "`found` needs at least one address", 28, None),
    ("dns addresses mx.example = found 192.0.2.1 mail.example",
     "dns addresses: `mail.example` is not an IP address", 44, None),
    ('dns addresses mx.example = found 192.0.2.1 "text"', "`found` takes addresses, not a quoted text", 44, None),
    ("dns addresses mx.example = none 192.0.2.1", "`none` takes no values", 33, None),
    ("dns addresses 192.0.2.1 = found 192.0.2.1", "dns addresses: `192.0.2.1` is an address, not a host name",
     15, USAGE),
    ("dns addresses [2001:db8::1] = none", "dns addresses: `[2001:db8::1]` is an address, not a host name",
     15, USAGE),
    ("dns addresses = none", "expected a zone (or ptr/resolvable/addresses) and a name before `=`", 1, USAGE),
    ("dns addresses mx.example none", "a dns line needs `=` before the answer", 1, USAGE),
    ("dns addresses mx.example =", "the answer is missing after `=`", 26, USAGE),
])
def test_tests_file_bad_dns_addresses_lines(line, message, column, help):
    tf = parse_tests("t.tests", line + "\n", [])
    (diag,) = tf.diags
    assert diag.code == Code.E902_EXPECTATION_SYNTAX
    assert diag.message == message
    assert (diag.span.line, diag.span.column) == (1, column)
    assert diag.help == help
    assert tf.dns == {}


def test_tests_file_dns_addresses_declared_twice():
    tf = parse_tests("t.tests", "dns addresses mx.example = none\ndns addresses MX.example. = found 192.0.2.1\n", [])
    (diag,) = tf.diags
    assert diag.span.line == 2
    assert diag.message == "DNS answer for addresses mx.example declared twice (first on line 1)"
    assert tf.dns == {addresses("mx.example"): DnsAnswer("none")}


def test_other_kinds_still_parse_and_a_zone_named_like_a_kind_is_not_confused():
    tf = parse_tests("t.tests", "dns ptr 192.0.2.1 = none\ndns resolvable a.example = nullmx\n"
                                "dns addresses.test 192.0.2.1 = listed\n", [])
    assert tf.diags == []
    assert tf.dns == {Lookup(LookupKind.PTR, "192.0.2.1"): DnsAnswer("none"),
                      Lookup(LookupKind.RESOLVABLE, "a.example"): DnsAnswer("nullmx"),
                      Lookup(LookupKind.DNSBL, "192.0.2.1", "addresses.test"): DnsAnswer("listed", ("127.0.0.2",))}


def test_undeclared_addresses_lookup_is_none_in_tests():
    declared = {addresses("mx.example"): DnsAnswer("found", codes=("192.0.2.1",))}
    got = run(DeclaredDns(declared).results([addresses("mx.example"), addresses("other.example")]))
    assert got == {addresses("mx.example"): DnsAnswer("found", codes=("192.0.2.1",)),
                   addresses("other.example"): DnsAnswer("none")}
    assert set(UNDECLARED) == set(LookupKind), "every lookup kind has an answer for undeclared lookups"


# -- recording -> replay --------------------------------------------------------------

def test_answers_round_trip_through_a_recording(server, tmp_path):
    """Live answers, as a session records them, read back for replay: the
    same answers (every path a replay reads facts by)."""
    names = ["both.example", "many.example", "nx.example", "v6silent.example", "v4servfail-v6none.example"]
    r = make_resolver(server, timeout=0.5)

    async def go():
        session = DnsSession(r, budget=5)
        res = await session.results([addresses(n) for n in names])
        session.close()
        return res

    live = run(go())
    assert [live[addresses(n)].status for n in names] == ["found", "found", "none", "found", "failed"]
    state = SessionState(session_id="s1", client_ip="192.0.2.1", helo="both.example", helo_lower="both.example")
    state.facts.update(live)
    rec = Recorder(str(tmp_path))
    rec.write(session_record(state, "v", 0.1))
    rec.close()
    (path,) = tmp_path.iterdir()

    (record,) = read_records(str(path))
    assert shape_problem(record) is None
    assert recorded_facts(record) == live
    assert replay_session.recorded_facts(record) == live
    ((_n, again),) = iter_records(str(path))
    assert replay_session.recorded_facts(again) == live
    got = run(RecordedFacts(recorded_facts(record)).results([addresses("both.example"), addresses("new.example")]))
    assert got[addresses("both.example")] == live[addresses("both.example")]
    assert got[addresses("new.example")] == DnsAnswer("failed", error="not in recording")
    # the JSON itself, as docs/recording.md describes it
    item = next(f for f in json.loads(path.read_text())["facts"] if f["key"]["name"] == "v6silent.example")
    assert item == {"provider": "dns", "key": {"kind": "addresses", "name": "v6silent.example", "zone": ""},
                    "value": {"status": "found", "codes": ["192.0.2.31"], "error": "AAAA lookup failed: timeout"}}


def test_format_1_records_with_addresses_read_back():
    record = make_record()
    record["v"], record["facts"] = 1, []
    record["dns"] = [{"lookup": addresses("v4.example").to_json(),
                      "answer": DnsAnswer("found", codes=("192.0.2.7",)).to_json()}]
    assert shape_problem(record) is None
    assert facts.decode(record) == replay_session.recorded_facts(record) == {
        addresses("v4.example"): DnsAnswer("found", codes=("192.0.2.7",))}


# -- with a rule that uses the lookup (the HELO fields of the rule language) -------------

HELO_RULES = """
on helo:
    [fcdns] reject 550 5.7.1 "HELO name does not resolve to you" if not helo.matches_client
"""


def _helo_field_or_skip():
    from smtpfw.lang.fields import lookup_field
    spec = lookup_field("helo.matches_client")
    if spec is None or spec.lookup is None:
        pytest.skip("the rule language has no helo.matches_client field")
    probe = SessionState(helo="a.example", helo_lower="a.example")
    if spec.lookup(probe) != addresses("a.example"):
        pytest.skip("helo.matches_client does not use the addresses lookup")


def test_ruleset_tests_with_dns_addresses(tmp_path):
    _helo_field_or_skip()
    (tmp_path / "site.rules").write_text(HELO_RULES)
    (tmp_path / "site.tests").write_text(
        "dns addresses mx.example.org = found 192.0.2.1 2001:db8::1\n"
        "dns addresses down.example.org = failed\n"
        "client 192.0.2.1 ehlo mx.example.org -> no-mail\n"
        "client 2001:db8::1 ehlo MX.example.org -> no-mail\n"
        "client 192.0.2.2 ehlo mx.example.org -> reject at helo by fcdns code 550\n"
        "client 192.0.2.1 ehlo undeclared.example.org -> reject at helo by fcdns\n"
        "client 192.0.2.1 ehlo down.example.org -> reject at helo by fcdns\n")
    done = smtpfw("test", tmp_path / "site.rules", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["summary"]["passed"] == 5


def test_live_server_recording_replays_to_the_same_verdicts(tmp_path):
    """The real server looks up the HELO name's addresses on a loopback DNS
    server and records the answers; replay reads them back and decides
    the same."""
    _helo_field_or_skip()
    from smtpfw.lang.compiler import compile_ruleset
    from smtpfw.replay.session import recorded_verdict, replay_record
    from tests.support.server import running_server

    records = {("good.example.", "A"): ["127.0.0.1"], ("liar.example.", "A"): ["192.0.2.9"]}
    (tmp_path / "h.rules").write_text(HELO_RULES)
    sessions = tmp_path / "sessions"
    with DnsServer(records=records, authoritative=AUTHORITATIVE) as dns_server, \
            running_server(tmp_path / "h.rules", dns=dns_server, recording_enabled=True,
                           recording_path=str(sessions)) as srv:
        codes = {}
        for helo in ("good.example", "liar.example", "nx.example"):
            with smtplib.SMTP(*srv.address, timeout=10) as client:
                codes[helo] = client.ehlo(helo)[0]
    assert codes == {"good.example": 250, "liar.example": 550, "nx.example": 550}

    records_read = [r for f in sorted(sessions.iterdir()) for r in read_records(str(f))]
    by_helo = {next(e["arg"] for e in r["events"] if e["cmd"] == "ehlo"): r for r in records_read}
    assert set(by_helo) == set(codes)
    assert recorded_facts(by_helo["good.example"])[addresses("good.example")] == DnsAnswer(
        "found", codes=("127.0.0.1",))
    assert recorded_facts(by_helo["liar.example"])[addresses("liar.example")].codes == ("192.0.2.9",)
    assert recorded_facts(by_helo["nx.example"])[addresses("nx.example")] == DnsAnswer("none")
    ruleset, diags = compile_ruleset(str(tmp_path / "h.rules"))
    assert ruleset is not None, diags
    for helo, record in by_helo.items():
        replayed = replay_record(ruleset, record)
        assert replayed.verdict == recorded_verdict(record), helo
