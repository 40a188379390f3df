"""Hooks decided after their reply (smtpfw.lang.deferral): with
`delay_reject`, a connect, HELO or MAIL hook whose every outcome is held
until RCPT is answered at once and decided in the background, so its DNS
lookups overlap the next ones.  The real server, a real DNS server on
loopback answering late, and the records replayed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.replay.session import replay_record, same_as_recorded
from smtpfw.verdict import Stage
from tests.smtp_client import RawClient
from tests.support.dnsserver import DnsServer
from tests.support.server import SHARED, recorded_sessions, running_server

DELAY = 0.4
ZONES = [SHARED / "zones" / "bl.test", SHARED / "zones" / "dbl.test"]
RULES = """
option delay_reject = yes
zone bl  = dnsbl "bl.test"
zone dbl = rhsbl "dbl.test"
on connect:
    [note] score seen +1 if client.ip listed in bl
    [dnsbl] reject 554 5.7.1 "client {client.ip} listed: {dnsbl.txt}" if client.ip listed in bl
on helo:
    [badhelo] reject 550 5.7.1 "bad helo" if helo = "bad.example"
on mail:
    [rhsbl] reject 550 5.7.1 "domain {sender.domain} listed" if sender.domain listed in dbl
on rcpt:
    [scored] reject 550 5.7.1 "scored" if score.seen > 0
    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain != "example.net"
"""


def _compile(text: str, tmp_path: Path):
    path = tmp_path / "t.rules"
    path.write_text(text)
    ruleset, diags = compile_ruleset(path)
    assert ruleset is not None, diags
    return ruleset


def test_the_reference_policy_decides_connect_helo_and_mail_late(tmp_path):
    ruleset, _ = compile_ruleset(Path(__file__).resolve().parent.parent / "rules" / "reference.rules")
    assert ruleset.decided_late == {Stage.CONNECT, Stage.HELO, Stage.MAIL}
    assert _compile(RULES, tmp_path).decided_late == {Stage.CONNECT, Stage.HELO, Stage.MAIL}


@pytest.mark.parametrize("rule, late", [
    ('[x] disconnect 421 4.7.0 "bye" if client.ip = "192.0.2.1"', False),    # heard at once
    ('[x] accept if client.ip = "192.0.2.1"', False),
    ('[x] tarpit 2s if client.ip = "192.0.2.1"', False),
    ('[x] reject 550 "x" if session.unauth_pipelining', False),             # changes as the session goes on
    ('[x] reject 550 "x" if time.hour > 25', False),
    ('[x] reject 550 "at {time.clock}" if client.ip = "192.0.2.1"', False),
    ('[x] tempfail 450 "x" if client.ip = "192.0.2.1"', True),
    ('[x] tag t if client.ip = "192.0.2.1"', True),
    ('[x] warn "w" if client.rdns matches "dyn"', True),
])
def test_only_hooks_that_cannot_be_heard_before_rcpt_are_late(tmp_path, rule, late):
    text = f"option delay_reject = yes\non connect:\n    {rule}\non rcpt:\n    reject 554 \"no\" if rcpt.domain != \"x\"\n"
    assert (Stage.CONNECT in _compile(text, tmp_path).decided_late) is late
    assert _compile(text.replace("option delay_reject = yes\n", ""), tmp_path).decided_late == frozenset()


def test_a_stateful_ruleset_decides_every_hook_at_its_command(tmp_path):
    text = RULES + "limit burst = 10 per 1m by client.ip\non mail:\n    [l] tempfail 450 \"slow\" if limit.burst.exceeded\n"
    assert _compile(text, tmp_path).decided_late == frozenset()


def _session(address, source: str, helo: str, sender: str, rcpt: str = "u@example.net") -> tuple[list, float, float]:
    """The replies of one session and the times of the greeting and of the RCPT reply."""
    start = time.monotonic()
    with RawClient(address, timeout=10, source=source) as c:
        replies = [c.reply()]
        greeted = time.monotonic() - start
        replies.append(c.cmd(f"EHLO {helo}"))
        replies.append(c.cmd(f"MAIL FROM:<{sender}>"))
        replies.append(c.cmd(f"RCPT TO:<{rcpt}>"))
        decided = time.monotonic() - start
        replies.append(c.cmd("QUIT"))
    return replies, greeted, decided


def test_dnsbl_and_rhsbl_waits_overlap_and_verdicts_are_unchanged(tmp_path):
    rec = tmp_path / "rec"
    with DnsServer(ZONES, delay=DELAY) as dns, \
            running_server(rules_text=RULES, dns=dns, recording_enabled=True, recording_path=str(rec),
                           dns_timeout=5.0) as srv:
        clean, greeted, decided = _session(srv.address, "127.0.0.1", "ok.example", "a@good.example")
        listed, _, _ = _session(srv.address, "127.0.0.2", "ok.example", "a@good.example")
        rhsbl, _, _ = _session(srv.address, "127.0.0.1", "ok.example", "a@spam.example")
        helo, _, _ = _session(srv.address, "127.0.0.1", "bad.example", "a@good.example")
        records = recorded_sessions(rec, 4)
    # the greeting did not wait for the DNSBL; the RCPT reply waited for both
    # lists at once: once the delay, not twice
    assert greeted < DELAY / 2, greeted
    assert DELAY * 0.9 < decided < DELAY * 1.75, decided
    assert clean[3].startswith("250"), clean
    assert [r[:3] for r in listed[:3]] == ["220", "250", "250"]
    assert listed[3].startswith("554 5.7.1 client 127.0.0.2 listed: Listed in bl.test"), listed
    assert rhsbl[3] == "550 5.7.1 domain spam.example listed"
    assert helo[3] == "550 5.7.1 bad helo"
    # the records say what an in-order decision says, facts included
    ruleset = _compile(RULES, tmp_path)
    for record in records:
        assert record["connect"]["decision"] is not None
        assert same_as_recorded(record, replay_record(ruleset, record)), json.dumps(record)[:400]
    assert sorted(r.get("scores", {}).get("seen", {}).get("total", 0) for r in records) == [0, 0, 0, 1]


def test_rset_and_a_new_helo_wait_for_the_hooks_they_end(tmp_path):
    """A held MAIL refusal ends with its transaction: RSET or a new EHLO
    must not let a late RHSBL answer leak into the next one; a held HELO
    refusal stays for the session, as when it is decided at once."""
    with DnsServer(ZONES, delay=DELAY) as dns, running_server(rules_text=RULES, dns=dns, dns_timeout=5.0) as srv:
        with RawClient(srv.address, timeout=10) as c:
            c.reply()
            assert c.cmd("EHLO ok.example").startswith("250")
            for end in ("RSET", "EHLO ok.example"):
                assert c.cmd("MAIL FROM:<a@spam.example>").startswith("250")
                assert c.cmd(end).startswith("250")
                assert c.cmd("MAIL FROM:<a@good.example>").startswith("250")
                assert c.cmd("RCPT TO:<u@example.net>").startswith("250")
                assert c.cmd("RSET").startswith("250")
            assert c.cmd("EHLO bad.example").startswith("250")
            assert c.cmd("EHLO ok.example").startswith("250")
            assert c.cmd("MAIL FROM:<a@good.example>").startswith("250")
            assert c.cmd("RCPT TO:<u@example.net>") == "550 5.7.1 bad helo"


def test_a_session_that_quits_before_rcpt_is_decided_for_the_log(tmp_path):
    rec = tmp_path / "rec"
    with DnsServer(ZONES, delay=DELAY) as dns, \
            running_server(rules_text=RULES, dns=dns, recording_enabled=True, recording_path=str(rec),
                           dns_timeout=5.0) as srv:
        with RawClient(srv.address, timeout=10, source="127.0.0.2") as c:
            c.reply()
            c.cmd("EHLO ok.example")
            c.cmd("MAIL FROM:<a@spam.example>")
            assert c.cmd("QUIT").startswith("221")
        (record,) = recorded_sessions(rec, 1)
    assert record["connect"]["decision"] is not None
    assert record["scores"]["seen"]["total"] == 1                 # the connect hook ran
    assert {f["value"].get("status") for f in record["facts"]} == {"listed"}, record["facts"]
    assert len(record["facts"]) == 2                               # the DNSBL and the RHSBL answers


def test_a_hook_whose_second_round_of_facts_is_not_at_hand_is_decided_late(tmp_path):
    """A fact's key can depend on another fact: the RHSBL listing of the
    client's PTR name.  With the PTR answer at hand (cached) and the RHSBL
    one not, the connect hook must still be decided in the background, not
    before the greeting.  (A FactSource of the conversation core's own
    interface, answering the PTR at once and the RHSBL after 1 s.)"""
    import asyncio

    from smtpfw.checks.dnsresult import DnsAnswer, LookupKind
    from smtpfw.core.conversation import Conversation
    from smtpfw.session import SessionState

    rules = tmp_path / "r.rules"
    rules.write_text('option delay_reject = yes\nzone dbl = rhsbl "dbl.test"\non connect:\n'
                     '    [x] reject 554 5.7.1 "rdns listed" if client.rdns listed in dbl\n'
                     'on rcpt:\n    reject 554 5.7.1 "no" if rcpt.domain != "example.net"\n')
    ruleset, diags = compile_ruleset(str(rules))
    assert ruleset is not None, diags
    assert Stage.CONNECT in ruleset.decided_late

    def answer(key) -> DnsAnswer:
        if key.kind is LookupKind.PTR:
            return DnsAnswer("found", names=("host.example.org",), confirmed=True)
        return DnsAnswer("clear")

    class PtrCached:
        asked: list = []

        def start(self, keys) -> None:
            pass

        def at_hand(self, keys):
            return {k: answer(k) for k in keys} if all(k.kind is LookupKind.PTR for k in keys) else None

        async def results(self, keys):
            self.asked.extend(keys)
            if not all(k.kind is LookupKind.PTR for k in keys):
                await asyncio.sleep(1.0)
            return {k: answer(k) for k in keys}

    async def go():
        state = SessionState()
        state.client_ip, state.session_id = "192.0.2.1", "t"
        facts = PtrCached()
        conv = Conversation(ruleset, state, facts, decide_late=True)
        started = time.monotonic()
        step = await conv.connect()
        greeted = time.monotonic() - started
        deciding = conv.deciding
        await conv.settle()
        return step.reply, greeted, deciding, [k.kind for k in facts.asked]

    reply, greeted, deciding, asked = asyncio.run(go())
    assert reply.startswith("220") and greeted < 0.5 and deciding, (reply, greeted, deciding)
    assert LookupKind.PTR not in asked or asked.count(LookupKind.PTR) <= 1
    assert any(kind is not LookupKind.PTR for kind in asked)      # the RHSBL lookup was waited for, later
