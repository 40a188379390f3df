"""The DNSBL pass cache (dns.pass_ttl, postscreen_dnsbl_ttl): a client
address an IP list did not list is not looked up in it again for a while,
by any server process; a listing, a failure and domain lists never are."""

from __future__ import annotations

import asyncio
import smtplib
import time

from smtpfw.checks.dns import Resolver
from smtpfw.checks.dnsresult import Lookup, LookupKind
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.replay.session import replay_record
from smtpfw.state import open_store
from smtpfw.state.passes import dnsbl_passes
from tests.support.dnsserver import DnsServer
from tests.support.server import SHARED, recorded_sessions, running_server

RULES = """
zone bl  = dnsbl "bl.test"
zone dbl = rhsbl "dbl.test"
on connect:
    [dnsbl] reject 554 5.7.1 "listed: {dnsbl.txt}" if client.ip listed in bl
on mail:
    [rhsbl] reject 550 5.7.1 "domain listed" if sender.domain listed in dbl
on rcpt:
    accept if rcpt.domain = "example.net"
    reject 554 5.7.1 "Relaying denied"
"""
ZONES = [SHARED / "zones" / "bl.test", SHARED / "zones" / "dbl.test"]


def session(address, source="127.0.0.1", sender="a@good.example") -> str:
    try:
        with smtplib.SMTP(*address, source_address=(source, 0), timeout=10) as s:
            s.ehlo("client.example")
            code, text = s.mail(sender)
            if code == 250:
                code, text = s.rcpt("u@example.net")
            return f"{code} {text.decode()}"
    except smtplib.SMTPConnectError as err:
        return f"{err.smtp_code} {err.smtp_error.decode()}"


def test_a_clear_client_is_not_looked_up_again_across_restarts_until_the_pass_expires(tmp_path):
    """The server is restarted between sessions, so its DNS answer cache
    is empty every time: only the pass in the state store saves the query."""
    state = str(tmp_path / "state.db")
    rec = tmp_path / "rec"
    with DnsServer(ZONES) as dns:
        def run(source="127.0.0.1") -> str:
            with running_server(rules_text=RULES, dns=dns, dns_pass_ttl=3, state_store=state, dns_health_interval=0,
                                recording_enabled=True, recording_path=str(rec)) as srv:
                return session(srv.address, source)

        assert run().startswith("250") and dns.queries == 2          # bl.test and dbl.test asked
        dns.queries = 0
        started = time.monotonic()
        assert run().startswith("250")
        assert dns.queries == 1, dns.queries                          # the RHSBL lookup only: bl.test from the pass
        records = recorded_sessions(rec, 2)
        answers = [f["value"] for r in records for f in r.get("facts", []) if f["key"].get("zone") == "bl.test"]
        assert answers == [{"status": "clear"}, {"status": "clear", "pass_cached": True}], answers
        # dry-run of the recorded session reaches the same verdict from the record
        rules = tmp_path / "t.rules"
        rules.write_text(RULES)
        ruleset, diags = compile_ruleset(str(rules))
        assert ruleset is not None, diags
        assert replay_record(ruleset, records[1]).verdict.kind == "accepted"
        from smtpfw.replay.trace import describe_answer
        from smtpfw.checks.dnsresult import DnsAnswer
        assert describe_answer(DnsAnswer.from_json(answers[1])) == "clear (from the DNSBL pass cache, not asked)"
        dns.queries = 0
        time.sleep(max(0.0, started + 3.2 - time.monotonic()))
        assert run().startswith("250") and dns.queries == 2          # expired: bl.test asked again


def test_a_listed_client_and_a_failed_lookup_are_never_remembered(tmp_path):
    async def main(dns_address):
        store = open_store(str(tmp_path / "state.db"), timeout=1.0)
        resolver = Resolver([dns_address], timeout=0.5, cache_size=0)   # no answer cache: every ask is seen
        resolver.passes = dnsbl_passes(store, 60)
        listed = Lookup(LookupKind.DNSBL, "127.0.0.2", "bl.test")
        clear = Lookup(LookupKind.DNSBL, "127.0.0.1", "bl.test")
        domain = Lookup(LookupKind.RHSBL, "good.example", "dbl.test")
        answers = [await resolver.lookup(lk) for lk in (listed, listed, clear, clear, domain, domain)]
        await store.close()
        return answers
    with DnsServer(ZONES) as dns:
        answers = asyncio.run(main(dns.address))
        statuses = [(a.status, a.pass_cached) for a in answers]
        assert statuses == [("listed", False), ("listed", False), ("clear", False), ("clear", True),
                            ("clear", False), ("clear", False)], statuses
        assert dns.queries == 2 * 2 + 1 + 2                             # a listing asks A and TXT

    async def dead():
        store = open_store(str(tmp_path / "dead.db"), timeout=1.0)
        resolver = Resolver([("127.0.0.1", 9)], timeout=0.3, cache_size=0)
        resolver.passes = dnsbl_passes(store, 60)
        lk = Lookup(LookupKind.DNSBL, "127.0.0.1", "bl.test")
        first = await resolver.lookup(lk)
        second = await resolver.lookup(lk)
        await store.close()
        return first, second
    first, second = asyncio.run(dead())
    assert first.failed and second.failed and not second.pass_cached


def test_a_store_that_cannot_answer_means_the_lookup_is_made(tmp_path):
    async def main(dns_address):
        store = open_store(str(tmp_path / "state.db"), timeout=1.0)
        resolver = Resolver([dns_address], timeout=0.5, cache_size=0)
        other = Resolver([dns_address], timeout=0.5, cache_size=0)     # another worker
        resolver.passes, other.passes = dnsbl_passes(store, 60), dnsbl_passes(store, 60)
        lk = Lookup(LookupKind.DNSBL, "127.0.0.1", "bl.test")
        await resolver.lookup(lk)
        from_store = await other.lookup(lk)
        await store.close()                                             # the store is gone
        third = Resolver([dns_address], timeout=0.5, cache_size=0)
        third.passes = dnsbl_passes(store, 60)
        asked = await third.lookup(lk)
        return from_store, asked
    with DnsServer(ZONES) as dns:
        from_store, asked = asyncio.run(main(dns.address))
        assert from_store.pass_cached and not asked.pass_cached and asked.status == "clear"
        assert dns.queries == 2


def test_without_pass_ttl_nothing_is_remembered(tmp_path):
    with DnsServer(ZONES) as dns:
        for _ in range(2):
            with running_server(rules_text=RULES, dns=dns, state_store=str(tmp_path / "state.db"),
                                dns_health_interval=0) as srv:
                assert session(srv.address).startswith("250")
        assert dns.queries == 4                                          # both lookups, both times
