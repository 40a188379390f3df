"""rules/examples/: each qpsmtpd-style example ruleset, on the real server
(with a real DNS server on loopback where the example needs DNS)."""

from __future__ import annotations

import logging
import smtplib

import pytest

from tests.smtp_client import RawClient
from tests.support.dnsserver import DnsServer
from tests.support.downstream import Downstream
from tests.support.server import REPO, maildir_messages, recorded_sessions, running_server

EXAMPLES = REPO / "rules" / "examples"


def session(srv, helo="mx.good.example", sender="a@good.example", rcpts=("u@localhost",),
            source="127.0.0.1", data=None):
    """Replies, each as "CODE TEXT" (the last line of a multi-line one):
    (helo, mail, {rcpt: reply}, data or None)."""
    def text(reply):
        code, msg = reply
        return f"{code} {msg.decode().splitlines()[-1]}"

    with smtplib.SMTP(*srv.address, source_address=(source, 0), timeout=10) as s:
        h = text(s.ehlo(helo))
        if not h.startswith("250"):
            return h, None, {}, None
        m = text(s.mail(sender))
        if not m.startswith("250"):
            return h, m, {}, None
        r = {x: text(s.rcpt(x)) for x in rcpts}
        ok = any(v.startswith("250") for v in r.values())
        d = text(s.data(data)) if data is not None and ok else None
        return h, m, r, d


def accepted(reply: str) -> bool:
    return reply.startswith("250")


def test_badhelo():
    with running_server(EXAMPLES / "badhelo.rules") as srv:
        assert session(srv, helo="BAD.helo.example")[0] == \
            "550 5.7.1 Sorry, I don't believe that you are bad.helo.example"     # names compare in lower case
        assert accepted(session(srv, helo="good.example")[2]["u@localhost"])


def test_badmailfrom():
    with running_server(EXAMPLES / "badmailfrom.rules") as srv:
        assert session(srv, sender="joe@evil.example")[1] == \
            "550 5.7.1 Mail from joe@evil.example not accepted here"
        assert session(srv, sender="x@spammer.example")[1] == \
            "550 5.7.1 Mail from x@spammer.example not accepted here"
        assert accepted(session(srv, sender="x@sub.spammer.example")[1])
        assert accepted(session(srv, sender="")[1])


def test_badrcptto():
    with running_server(EXAMPLES / "badrcptto.rules") as srv:
        _, _, r, _ = session(srv, rcpts=("trap@example.net", "u@localhost"))
        assert r["trap@example.net"] == "550 5.1.1 Mailbox trap@example.net does not accept mail"
        assert accepted(r["u@localhost"])


def test_relay_trusted_networks():
    with running_server(EXAMPLES / "relay.rules") as srv:
        # loopback is a trusted network in this example: it may relay
        assert accepted(session(srv, rcpts=("x@far.example",))[2]["x@far.example"])
        assert session(srv, rcpts=("x%y@example.net",))[2] == {
            "x%y@example.net": "550 5.7.1 Relaying denied: address form not accepted"}


def test_relay_untrusted_denied(tmp_path):
    text = (EXAMPLES / "relay.rules").read_text().replace('"127.0.0.0/8", ', "")
    text = text.replace("../../config/lists/rcpthosts", str(REPO / "config" / "lists" / "rcpthosts"))
    with running_server(rules_text=text) as srv:
        r = session(srv, rcpts=("x@far.example", "u@example.net"))[2]
        assert r["x@far.example"] == "554 5.7.1 Relay access denied"
        assert accepted(r["u@example.net"])


def test_dnsbl(shared_dns):
    with running_server(EXAMPLES / "dnsbl.rules", dns=shared_dns) as srv:
        c = RawClient(srv.address, source="127.0.0.2")
        assert c.reply() == "554 5.7.1 Listed in bl.test: 127.0.0.2 is a test listing"
        c.close()
        assert accepted(session(srv, source="127.0.0.3")[2]["u@localhost"])


def test_dnsbl_down_is_monitored_not_refused(tmp_path, caplog):
    """The monitor rule fires (logged, recorded as what it would have done),
    and the session goes on: the message is delivered."""
    caplog.set_level(logging.INFO, logger="smtpfw.session")
    with DnsServer(mode="servfail") as dead:
        with running_server(EXAMPLES / "dnsbl.rules", dns=dead, recording_enabled=True,
                            recording_path=str(tmp_path / "rec")) as srv:
            _, _, r, d = session(srv, data=b"Subject: monitored\r\n\r\nhi\r\n")
            assert accepted(r["u@localhost"]) and accepted(d)
            (record,) = recorded_sessions(tmp_path / "rec", 1)
    assert [(m["rule"], m["decision"]["outcome"], m["decision"]["code"], m["decision"]["enhanced"])
            for m in record["monitored"]] == [("dnsbl-down", "tempfail", 451, "4.7.1")]
    warnings = [r.getMessage() for r in caplog.records if "monitor rule=dnsbl-down" in r.getMessage()]
    assert len(warnings) == 1 and "would tempfail: DNSBL unreachable, try again later" in warnings[0]


def test_rhsbl(shared_dns):
    with running_server(EXAMPLES / "rhsbl.rules", dns=shared_dns) as srv:
        assert session(srv, sender="x@Bad.Example")[1] == \
            "550 5.7.1 Sender domain bad.example is listed: Domain bad.example is listed in dbl.test"
        assert accepted(session(srv, sender="x@sub.bad.example")[1])


@pytest.fixture(scope="module")
def fromhost_dns():
    with DnsServer(records={("mx.example.", "MX"): ["10 mail.mx.example."],
                            ("aonly.example.", "A"): ["192.0.2.7"],
                            ("null.example.", "MX"): ["0 ."]},
                   authoritative=["example."]) as server:
        yield server


@pytest.mark.parametrize("sender,reply", [
    ("a@mx.example", "250 "), ("a@aonly.example", "250 "),
    ("a@null.example", "550 5.7.27 Sender domain null.example does not accept mail"),
    ("a@nxdomain.example", "550 5.1.8 Sender domain nxdomain.example does not exist"), ("", "250 ")])
def test_require_resolvable_fromhost(fromhost_dns, sender, reply):
    with running_server(EXAMPLES / "require_resolvable_fromhost.rules", dns=fromhost_dns) as srv:
        assert session(srv, sender=sender)[1].startswith(reply)


def test_require_resolvable_fromhost_dns_failure_defers():
    with DnsServer(mode="servfail") as dead:
        with running_server(EXAMPLES / "require_resolvable_fromhost.rules", dns=dead) as srv:
            assert session(srv, sender="a@mx.example")[1] == \
                "450 4.1.8 Cannot resolve sender domain mx.example, try again later"


def test_count_unrecognized_commands():
    with running_server(EXAMPLES / "count_unrecognized_commands.rules") as srv:
        c = RawClient(srv.address)
        c.reply()
        for verb in ("FOO", "BAR", "BAZ"):
            assert c.cmd(verb).startswith("500 5.5.2")
        assert c.cmd("EHLO client.example") == "421 4.7.0 Too many unrecognized commands"
        assert c.closed()
        assert accepted(session(srv)[2]["u@localhost"])


def test_content_score_plugin():
    with running_server(EXAMPLES / "content_score.rules") as srv:
        spam = b"Subject: BUY NOW CHEAPEST\r\n\r\nhttp://192.0.2.1/x\r\n"
        assert session(srv, data=spam)[3].startswith("550 5.7.1 Message looks like spam (")
        ham = b"Subject: hi\r\nMessage-ID: <1@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhello\r\n"
        assert accepted(session(srv, data=ham)[3])
        meh = b"Subject: hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhello\r\n"
        assert accepted(session(srv, data=meh)[3])
        msgs = maildir_messages(srv.server.config.maildir)
        assert any(m.startswith(b"X-Smtpfw-Score: 2 no-message-id\r\n") for m in msgs)


def test_verify_recipient_asks_the_mta_behind():
    """reject_unverified_recipient: the downstream's own answer decides a
    local recipient; mail for a known one is delivered; relaying is still refused."""
    with Downstream(reject_rcpts={"nobody@localhost"}) as ds, \
            running_server(EXAMPLES / "verify_recipient.rules", forward_to=ds) as srv:
        _, _, rcpts, data = session(srv, rcpts=("nobody@localhost", "postmaster@localhost", "bob@example.net"),
                                    data=b"Subject: hi\r\n\r\nhello\r\n")
        assert rcpts == {"nobody@localhost": "550 5.1.1 Recipient address rejected: User unknown",
                         "postmaster@localhost": "250 2.1.5 Recipient OK",
                         "bob@example.net": "554 5.7.1 Relaying denied"}
        assert accepted(data) and ds.wait_for_messages(1)
        assert ds.messages[0][1] == ["postmaster@localhost"]
        assert ds.commands.count("MAIL FROM:<>") >= 1 and "RCPT TO:<nobody@localhost>" in ds.commands


def test_verify_recipient_defers_when_the_mta_behind_does_not_answer():
    with Downstream(mode="hang") as ds, \
            running_server(EXAMPLES / "verify_recipient.rules", forward_to=ds, callout_timeout=0.5) as srv:
        assert session(srv, rcpts=("postmaster@localhost",))[2] == {
            "postmaster@localhost": "450 4.1.1 Recipient address rejected: unverified address, try again later"}
