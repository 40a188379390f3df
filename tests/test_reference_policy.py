"""rules/reference.rules reaches the verdicts of shared/policy/README.

The real server, a real DNS server on loopback serving shared/zones, and a
real downstream.  Clients connect from 127.0.0.1 (unlisted), 127.0.0.2
(listed, A 127.0.0.2) and 127.0.0.5 (listed, A 127.0.0.4).  The other listed
addresses (10.x, 192.0.2.x) cannot be a loopback client; they are checked
through the same Policy with live DNS below.

The reference ruleset delays refusals to RCPT (like Postfix's default
smtpd_delay_reject), so HELO and MAIL get 250 and each RCPT the refusal.
"""

from __future__ import annotations

import asyncio
import filecmp
import smtplib

import pytest

from smtpfw.checks.dns import DnsSession, Resolver
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.policy import Policy
from smtpfw.session import SessionState
from smtpfw.verdict import Outcome, Stage
from tests.support.downstream import Downstream
from tests.support.reference import (DNSBL, HELO, MAILFROM, OK, RCPTTO, RELAY, RHSBL,  # noqa: F401
                                      SESSION_IDS, SESSIONS, expected)
from tests.support.server import REPO, SHARED, running_server

REFERENCE = REPO / "rules" / "reference.rules"


def reply_text(reply: tuple[int, bytes]) -> str:
    return f"{reply[0]} {reply[1].decode()}"


def test_reference_lists_match_shared_policy():
    for name in ("badhelo", "badmailfrom", "badrcptto", "rcpthosts"):
        assert filecmp.cmp(REPO / "config" / "lists" / name, SHARED / "policy" / name, shallow=False), name


@pytest.fixture(scope="module")
def reference_server(shared_dns):
    with Downstream() as downstream:
        with running_server(REFERENCE, dns=shared_dns, forward_to=downstream) as srv:
            yield srv, downstream


@pytest.mark.parametrize("client,helo,sender,rcpts,delivered", SESSIONS, ids=SESSION_IDS)
def test_reference_session(reference_server, client, helo, sender, rcpts, delivered):
    srv, downstream = reference_server
    before = len(downstream.messages)
    with smtplib.SMTP(*srv.address, source_address=(client, 0), timeout=10) as s:
        assert s.ehlo(helo)[0] == 250
        assert s.mail(sender)[0] == 250
        got = {r: reply_text(s.rcpt(r)) for r in rcpts}
        filled = {r: expected(want, client, helo, sender)
                  for r, want in rcpts.items()}
        assert all(got[r].startswith(filled[r]) for r in rcpts), (got, filled)
        if delivered:
            code, text = s.data(b"Subject: reference\r\n\r\nhi\r\n")
            assert code == 250 and text.startswith(b"2.0.0 "), (code, text)
    if delivered:
        assert downstream.wait_for_messages(before + 1)
        accepted = [r for r, want in rcpts.items() if want == OK]
        assert downstream.messages[-1][1] == accepted
    else:
        assert len(downstream.messages) == before


def test_dnsbl_reply_has_txt_reason(reference_server):
    srv, _ = reference_server
    with smtplib.SMTP(*srv.address, source_address=("127.0.0.5", 0), timeout=10) as s:
        s.ehlo("mx.good.example")
        s.mail("alice@good.example")
        code, text = s.rcpt("bob@example.net")
    assert (code, text) == (554, b"5.7.1 Service unavailable; client [127.0.0.5] blocked using bl.test: "
                                 b"Listed in bl.test with code 4: 127.0.0.5")


@pytest.mark.parametrize("ip,listed", [
    ("10.1.2.3", True), ("10.66.66.66", True), ("192.0.2.66", True), ("192.0.2.99", True),
    ("127.0.0.2", True), ("127.0.0.5", True), ("192.0.2.1", False), ("10.1.2.4", False),
])
def test_dnsbl_listing_for_non_loopback_addresses(shared_dns, ip, listed):
    """The same Policy the server runs, with live DNS, for addresses no loopback client can have."""
    ruleset, diags = compile_ruleset(REFERENCE)
    assert ruleset is not None, diags

    async def run():
        resolver = Resolver([shared_dns.address], timeout=2)
        state = SessionState(client_ip=ip)
        policy = Policy(ruleset, state, DnsSession(resolver, 5))
        await policy.run(Stage.CONNECT)
        state.set_helo("mx.good.example", True)
        await policy.run(Stage.HELO)
        state.set_sender("alice@good.example")
        await policy.run(Stage.MAIL)
        state.set_rcpt("bob@example.net")
        return await policy.run(Stage.RCPT)

    decision = asyncio.run(run())
    assert (decision.outcome is Outcome.REJECT) == listed
    if listed:
        assert decision.rule_id == "dnsbl"
