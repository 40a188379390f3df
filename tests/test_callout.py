"""Recipient verification against the MTA behind (rcpt.verified): real
downstream, real server; no mail is ever sent by a callout; answers are
cached; a downstream that hangs gives "unknown" within the timeout."""

from __future__ import annotations

import smtplib

import pytest
import time

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import read_records
from smtpfw.replay.session import replay_record, same_as_recorded
from tests.smtp_client import RawClient
from tests.support.cli import wait_until
from tests.support.downstream import Downstream
from tests.support.server import running_server

RULES = """
on rcpt:
    [unknown-user] reject 550 5.1.1 "User unknown" if rcpt.verified = "no"
    [cannot-verify] tempfail 451 4.4.3 "Cannot verify the recipient now, try again later" if rcpt.verified = "unknown"
    [local] accept if rcpt.domain = "example.net"
    [relay] reject 554 5.7.1 "Relaying denied"
"""


def rcpt_reply(srv, rcpt: str) -> str:
    with RawClient(srv.address, timeout=30) as c:
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<alice@good.example>")
        reply = c.cmd(f"RCPT TO:<{rcpt}>")
        c.cmd("QUIT")
    return reply


def test_unknown_recipients_are_refused_and_no_mail_is_sent_by_a_callout():
    with Downstream(reject_rcpts={"nobody@example.net"}) as ds, \
            running_server(rules_text=RULES, forward_to=ds) as srv:
        assert rcpt_reply(srv, "nobody@example.net") == "550 5.1.1 User unknown"
        assert rcpt_reply(srv, "bob@example.net") == "250 2.1.5 Recipient OK"
        assert ds.commands.count("MAIL FROM:<>") == 2
        assert "RCPT TO:<nobody@example.net>" in ds.commands and "DATA" not in ds.commands
        assert ds.messages == []
        with smtplib.SMTP(*srv.address, timeout=30) as s:            # real mail still goes through
            s.ehlo("client.example")
            assert s.sendmail("alice@good.example", ["bob@example.net"], b"Subject: hi\r\n\r\nhi\r\n") == {}
        assert ds.wait_for_messages(1)


def test_answers_are_cached():
    with Downstream() as ds, running_server(rules_text=RULES, forward_to=ds) as srv:
        for _ in range(3):
            assert rcpt_reply(srv, "bob@example.net") == "250 2.1.5 Recipient OK"
        assert srv.call(lambda: srv.server.verifier.asked) == 1
        assert ds.commands.count("RCPT TO:<bob@example.net>") == 1


def test_a_downstream_that_hangs_gives_unknown_within_the_timeout():
    with Downstream(mode="hang") as ds, running_server(rules_text=RULES, forward_to=ds, callout_timeout=0.5) as srv:
        started = time.monotonic()
        assert rcpt_reply(srv, "bob@example.net") == "451 4.4.3 Cannot verify the recipient now, try again later"
        assert time.monotonic() - started < 10        # bounded by callout.timeout, not by the client's patience


def test_without_a_downstream_the_answer_is_unknown():
    with running_server(rules_text=RULES) as srv:                    # Maildir mode
        assert rcpt_reply(srv, "bob@example.net").startswith("451 4.4.3")


def test_callouts_are_recorded_and_replay(tmp_path):
    rec = tmp_path / "rec"
    with Downstream(reject_rcpts={"nobody@example.net"}) as ds, \
            running_server(rules_text=RULES, forward_to=ds, recording_enabled=True, recording_path=str(rec)) as srv:
        rcpt_reply(srv, "nobody@example.net")
        rcpt_reply(srv, "bob@example.net")
        rules = srv.server.rules_path
        wait_until(lambda: sum(len(f.read_text().splitlines()) for f in rec.glob("*.jsonl")) == 2, 5, "records")
    ruleset, _ = compile_ruleset(rules)
    records = [r for f in rec.glob("*.jsonl") for r in read_records(str(f))]
    facts = [f for r in records for f in r["facts"] if f["provider"] == "callout"]
    assert {f["key"]["address"]: f["value"]["status"] for f in facts} == {"nobody@example.net": "no",
                                                                         "bob@example.net": "yes"}
    for record in records:
        assert same_as_recorded(record, replay_record(ruleset, record))     # offline, from the record


def test_ruleset_tests_and_trace_take_callout_rules(tmp_path):
    """Without a downstream to ask (a ruleset test, trace --no-dns), a
    callout is "unknown": the rules decide, nothing crashes."""
    from tests.support.cli import run
    rules = tmp_path / "c.rules"
    rules.write_text(RULES)
    (tmp_path / "c.tests").write_text(
        "client 192.0.2.1 ehlo a.example from a@b.example rcpt bob@example.net -> tempfail at rcpt by cannot-verify\n")
    proc = run("test", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run("trace", "--rules", str(rules), "--ip", "192.0.2.1", "--helo", "a.example", "--from", "a@b.example",
               "--rcpt", "bob@example.net", "--no-dns")
    assert proc.returncode == 0 and "callout bob@example.net: unknown" in proc.stdout, proc.stdout + proc.stderr


def test_callouts_against_a_real_postfix_with_local_recipients():
    """Debian's Postfix behind, knowing two local users: unknown ones are
    refused at RCPT, known ones accepted, answers cached, nothing queued."""
    from tests.support.postfix import PostfixInstance, postfix_available
    why = postfix_available()
    if why:
        pytest.fail(why)
    settings = {"mydestination": "example.net",
                "local_recipient_maps": "inline:{ alice=alice, bob=bob }",
                "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination"}
    with PostfixInstance(settings) as pf, running_server(rules_text=RULES, forward_to=pf.port) as srv:
        assert rcpt_reply(srv, "nobody@example.net") == "550 5.1.1 User unknown"
        assert rcpt_reply(srv, "bob@example.net") == "250 2.1.5 Recipient OK"
        assert rcpt_reply(srv, "Bob@Example.NET") == "250 2.1.5 Recipient OK"          # cached (case folded)
        assert rcpt_reply(srv, "nobody@example.net") == "550 5.1.1 User unknown"      # cached "no"
        assert srv.call(lambda: srv.server.verifier.asked) == 2
        # Postfix itself refused it (its log is written by postlogd, a moment later)
        wait_until(lambda: "User unknown in local recipient table" in pf.log, 10, "Postfix's reject line")
        log = pf.log
        assert "message-id=" not in log and "queued as" not in log                    # no mail from a callout
