"""smtpfw as a milter behind a real Postfix (smtpd_milters): the reference
verdicts as inline, a rule at `data` on a header, add_header reaching the
delivered message, and malformed milter packets."""

from __future__ import annotations

import smtplib
import socket
import struct

import pytest

from smtpfw.config import Listener
from tests.support.cli import wait_until
from tests.support.downstream import Downstream
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.server import REPO, running_server
from tests.support.reference import SESSION_IDS, SESSIONS, check_rcpts_behind_postfix

MILTER = (Listener("127.0.0.1", 0, "milter", kind="milter"),)


@pytest.fixture(scope="module")
def milter_rules(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "milter.rules"
    path.write_text(f'include "{REPO / "rules" / "reference.rules"}"\n' + """
on data:
    [spam-subject] reject 550 5.7.1 "Message content rejected: spam subject" if header.subject = "buy now"
    add_header "X-Smtpfw" "checked for {client.ip}"
""")
    return path


@pytest.fixture(scope="module")
def postfix_with_milter(shared_dns, milter_rules, tmp_path_factory):
    why = postfix_available()
    if why:
        pytest.fail(why)
    rec = tmp_path_factory.mktemp("milter-rec")
    with Downstream() as downstream, running_server(milter_rules, dns=shared_dns, listen=MILTER,
                                                    recording_enabled=True, recording_path=str(rec)) as srv:
        srv.recordings = rec
        settings = {
            "smtpd_milters": f"inet:127.0.0.1:{srv.port}",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
            "relayhost": f"[127.0.0.1]:{downstream.port}",
            "smtp_dns_support_level": "disabled",
            "relay_domains": "example.net",
        }
        with PostfixInstance(settings) as pf:
            yield pf, downstream, srv


@pytest.mark.parametrize("client,helo,sender,rcpts,delivered", SESSIONS, ids=SESSION_IDS)
def test_postfix_with_smtpfw_milter_reaches_the_inline_verdicts(postfix_with_milter, client, helo, sender, rcpts, delivered):
    pf, _, _ = postfix_with_milter
    check_rcpts_behind_postfix(pf.port, client, helo, sender, rcpts)


def test_a_rule_at_data_sees_the_headers_and_add_header_reaches_the_message(postfix_with_milter):
    pf, downstream, _ = postfix_with_milter
    with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
        s.ehlo("mx.good.example")
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail("alice@good.example", ["bob@example.net"], b"Subject: buy now\r\n\r\ncheap\r\n")
        assert (err.value.smtp_code, err.value.smtp_error) == (550, b"5.7.1 Message content rejected: spam subject")
        before = len(downstream.messages)
        assert s.sendmail("alice@good.example", ["bob@example.net"], b"Subject: hello\r\n\r\nhi there\r\n") == {}
    assert downstream.wait_for_messages(before + 1, timeout=30), pf.log[-3000:]
    _, rcpts, data = downstream.messages[-1]
    assert rcpts == ["bob@example.net"]
    assert b"X-Smtpfw: checked for 127.0.0.1" in data and b"Subject: hello" in data and b"hi there" in data


def test_milter_sessions_are_recorded_and_replay_with_their_headers(postfix_with_milter, milter_rules):
    """A milter recording replays in dry-run like an inline one: the header
    rule at `data` decides the replay as it decided behind Postfix."""
    from smtpfw.lang.compiler import compile_ruleset
    from smtpfw.recording import read_records
    from smtpfw.replay.session import replay_record, same_as_recorded

    pf, _, srv = postfix_with_milter
    with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
        s.ehlo("mx.good.example")
        with pytest.raises(smtplib.SMTPDataError):
            s.sendmail("carol@good.example", ["bob@example.net"], b"Subject: buy now\r\n\r\nreplay me\r\n")

    def records():
        return [r for f in srv.recordings.glob("*.jsonl") for r in read_records(str(f))]

    def spam(r):
        cmds = {e["cmd"]: e for e in r["events"]}
        return (cmds.get("mail", {}).get("addr") == "carol@good.example"
                and cmds.get("data", {}).get("headers", {}).get("subject") == "buy now")
    wait_until(lambda: any(spam(r) for r in records()), 10, "the milter session's record")
    ruleset, _ = compile_ruleset(str(milter_rules))
    for record in records():
        assert record["listener"]["name"] == "milter"
        assert same_as_recorded(record, replay_record(ruleset, record)), record
    replayed = replay_record(ruleset, next(r for r in records() if spam(r)))
    verdict = replayed.verdict
    assert (verdict.kind, verdict.stage, verdict.rule) == ("rejected", "data", "spam-subject")


def test_sessions_are_logged(postfix_with_milter, caplog):
    import logging
    pf, _, _ = postfix_with_milter
    with caplog.at_level(logging.INFO, logger="smtpfw.session"):
        with smtplib.SMTP("127.0.0.1", pf.port, source_address=("127.0.0.1", 0), timeout=30) as s:
            s.ehlo("mx.good.example")
            s.mail("alice@good.example")
            s.rcpt("bob@other.example")
        wait_until(lambda: any("bob@other.example:554" in r.getMessage() for r in caplog.records), 10,
                   "the milter session's log line")


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.0\r\n\r\n",
    struct.pack("!L", 5) + b"Z" + b"1234",                       # an unknown command
    struct.pack("!L", 0x7FFFFFFF) + b"O",                        # a packet larger than any
    struct.pack("!L", 13) + b"O" + struct.pack("!LLL", 6, 0x1FF, 0x1FFFFF) + struct.pack("!L", 2) + b"C",
])
def test_malformed_milter_packets_close_the_connection(shared_dns, milter_rules, garbage, caplog):
    with running_server(milter_rules, dns=shared_dns, listen=MILTER) as srv:
        s = socket.create_connection(srv.address, timeout=10)
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        s.close()
        wait_until(lambda: not srv.call(lambda: len(srv.server.sessions)), 5, "the connection gone")
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
