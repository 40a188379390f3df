"""DNS list health (RFC 5782 test entries) against a real DNS server on
loopback made to misbehave: a list that lists everything, answers refusal
codes, lacks its test entry or does not answer; and a healthy one."""

from __future__ import annotations

import logging

import pytest

from smtpfw.checks.dnsresult import DnsAnswer, LookupKind, failed
from smtpfw.checks.health import judge
from smtpfw.recording import read_records
from tests.smtp_client import RawClient
from tests.support.cli import wait_until
from tests.support.dnsserver import DnsServer
from tests.support.server import SHARED, running_server

RULES = """
zone bl = dnsbl "bl.test"
on connect:
    [dnsbl] reject 554 5.7.1 "listed in bl.test" if client.ip listed in bl
    [dnsbl-down] tempfail 451 4.7.1 "bl.test lookup failed" if client.ip lookup failed in bl
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""
LISTED, CLEAR = DnsAnswer("listed", ("127.0.0.2",)), DnsAnswer("clear")


@pytest.mark.parametrize("listed, clear, problem, untrusted", [
    (LISTED, CLEAR, "", False),
    (LISTED, LISTED, "lists everything", True),
    (failed("answer 127.255.255.254 is not a listing (error code)"), CLEAR, "refuses our resolver", True),
    (failed("answer 10.0.0.1 outside 127.0.0.0/8"), CLEAR, "answers outside 127/8", True),
    (failed("timeout"), failed("timeout"), "not answering (timeout)", False),
    (CLEAR, CLEAR, "lists nothing it should", False),
])
def test_verdicts(listed, clear, problem, untrusted):
    health = judge(LookupKind.DNSBL, "bl.test", listed, clear)
    assert health.problem.startswith(problem) and health.untrusted is untrusted


def _health(srv):
    return srv.call(lambda: dict(srv.server.resolver.health.zones))


def _checked(srv) -> dict:
    return wait_until(lambda: _health(srv), 10, "the first health check")


def test_a_list_that_lists_everything_is_skipped_and_recorded(tmp_path, caplog):
    with DnsServer([SHARED / "zones" / "bl.test"], fixed_a="127.0.0.2") as dns, \
            caplog.at_level(logging.WARNING, logger="smtpfw.dns"), \
            running_server(rules_text=RULES, dns=dns, recording_enabled=True,
                           recording_path=str(tmp_path / "rec")) as srv:
        health = _checked(srv)[(LookupKind.DNSBL, "bl.test")]
        assert health.untrusted and health.problem.startswith("lists everything")
        with RawClient(srv.address) as c:                        # 127.0.0.1: "listed" by the broken list
            assert c.reply().startswith("220 ")
            c.cmd("QUIT")
        wait_until(lambda: list((tmp_path / "rec").glob("*.jsonl")), 5, "a record")
    (record,) = [r for f in (tmp_path / "rec").glob("*.jsonl") for r in read_records(str(f))]
    (fact,) = record["facts"]
    assert fact["value"] == {"status": "clear", "error": "zone bl.test skipped: " + health.problem}
    assert sum("bl.test is unhealthy: lists everything" in r.getMessage() for r in caplog.records) == 1


def test_refusal_codes_skip_the_list_unless_told_not_to():
    with DnsServer([SHARED / "zones" / "bl.test"], fixed_a="127.255.255.254") as dns:
        with running_server(rules_text=RULES, dns=dns) as srv:
            assert _checked(srv)[(LookupKind.DNSBL, "bl.test")].problem.startswith("refuses our resolver")
            with RawClient(srv.address) as c:
                assert c.reply().startswith("220 ")            # not a tempfail for every client
        with running_server(rules_text=RULES, dns=dns, dns_skip_unhealthy=False) as srv:
            _checked(srv)
            with RawClient(srv.address) as c:
                assert c.reply() == "421 4.7.1 bl.test lookup failed"   # the rules decide, as configured


def test_a_list_without_its_test_entry_is_logged_and_still_used(tmp_path, caplog):
    zone = tmp_path / "bl.test"
    zone.write_text("$TTL 60\n:127.0.0.2:listed\n127.0.0.9\n")            # no RFC 5782 test entry
    with DnsServer([zone]) as dns, caplog.at_level(logging.WARNING, logger="smtpfw.dns"), \
            running_server(rules_text=RULES, dns=dns) as srv:
        health = _checked(srv)[(LookupKind.DNSBL, "bl.test")]
        assert health.problem.startswith("lists nothing it should") and not health.untrusted
        with RawClient(srv.address, source="127.0.0.9") as c:
            assert c.reply() == "554 5.7.1 listed in bl.test"
    assert any("lists nothing it should" in r.getMessage() and "still used" in r.getMessage()
               for r in caplog.records)


def test_a_silent_list_is_logged_and_recovers(caplog):
    with DnsServer([SHARED / "zones" / "bl.test"], mode="blackhole") as dns, \
            caplog.at_level(logging.WARNING, logger="smtpfw.dns"), \
            running_server(rules_text=RULES, dns=dns, dns_timeout=0.3, dns_health_interval=0.5) as srv:
        assert _checked(srv)[(LookupKind.DNSBL, "bl.test")].problem.startswith("not answering")
        dns.mode = None
        wait_until(lambda: _health(srv)[(LookupKind.DNSBL, "bl.test")].healthy, 10, "the list healthy again")
    assert any("bl.test is healthy again" in r.getMessage() for r in caplog.records)


def test_a_healthy_list_is_never_skipped():
    with DnsServer([SHARED / "zones" / "bl.test"]) as dns:
        with running_server(rules_text=RULES, dns=dns) as srv:
            assert _checked(srv)[(LookupKind.DNSBL, "bl.test")].healthy
            with RawClient(srv.address, source="127.0.0.2") as c:
                assert c.reply() == "554 5.7.1 listed in bl.test"


def test_a_public_resolver_is_named_at_start(tmp_path):
    """No query leaves the machine: health checks are off and no client comes."""
    from tests.support.cli import Serve
    rules = tmp_path / "bl.rules"
    rules.write_text(RULES)
    cfg = tmp_path / "smtpfw.yaml"
    cfg.write_text('dns:\n  nameservers: ["8.8.8.8"]\n  health_interval: 0\n')
    srv = Serve("--config", str(cfg), "--rules", str(rules), "--listen", "127.0.0.1:0", "--workers", "1",
                "--maildir", str(tmp_path / "md"))
    try:
        srv.wait_for(r"8\.8\.8\.8 \(Google\) is a public resolver; the big DNS lists")
    finally:
        srv.stop()
