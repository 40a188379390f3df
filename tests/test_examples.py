"""rules/examples/: each qpsmtpd-style example ruleset, on the real server
(with a real DNS server on loopback where the example needs DNS)."""

from __future__ import annotations

import smtplib

import pytest

from tests.smtp_client import RawClient
from tests.support.dnsserver import DnsServer
from tests.support.server import REPO, maildir_messages, running_server

EXAMPLES = REPO / "rules" / "examples"


def session(srv, helo="mx.good.example", sender="a@good.example", rcpts=("u@localhost",),
            source="127.0.0.1", data=None):
    """Reply codes: (helo, mail, {rcpt: code}, data or None)."""
    with smtplib.SMTP(*srv.address, source_address=(source, 0), timeout=10) as s:
        h = s.ehlo(helo)[0]
        if h != 250:
            return h, None, {}, None
        m = s.mail(sender)[0]
        if m != 250:
            return h, m, {}, None
        r = {x: s.rcpt(x)[0] for x in rcpts}
        d = s.data(data)[0] if data is not None and 250 in r.values() else None
        return h, m, r, d


def test_badhelo():
    with running_server(EXAMPLES / "badhelo.rules") as srv:
        assert session(srv, helo="BAD.helo.example")[0] == 550
        assert session(srv, helo="good.example")[2] == {"u@localhost": 250}


def test_badmailfrom():
    with running_server(EXAMPLES / "badmailfrom.rules") as srv:
        assert session(srv, sender="joe@evil.example")[1] == 550
        assert session(srv, sender="x@spammer.example")[1] == 550
        assert session(srv, sender="x@sub.spammer.example")[1] == 250
        assert session(srv, sender="")[1] == 250


def test_badrcptto():
    with running_server(EXAMPLES / "badrcptto.rules") as srv:
        _, _, r, _ = session(srv, rcpts=("trap@example.net", "u@localhost"))
        assert r == {"trap@example.net": 550, "u@localhost": 250}


def test_relay_trusted_networks():
    with running_server(EXAMPLES / "relay.rules") as srv:
        # loopback is a trusted network in this example: it may relay
        assert session(srv, rcpts=("x@far.example",))[2] == {"x@far.example": 250}
        assert session(srv, rcpts=("x%y@example.net",))[2] == {"x%y@example.net": 550}


def test_relay_untrusted_denied(tmp_path):
    text = (EXAMPLES / "relay.rules").read_text().replace('"127.0.0.0/8", ', "")
    text = text.replace("../../config/lists/rcpthosts", str(REPO / "config" / "lists" / "rcpthosts"))
    with running_server(rules_text=text) as srv:
        assert session(srv, rcpts=("x@far.example", "u@example.net"))[2] == {
            "x@far.example": 554, "u@example.net": 250}


def test_dnsbl(shared_dns):
    with running_server(EXAMPLES / "dnsbl.rules", dns=shared_dns) as srv:
        c = RawClient(srv.address, source="127.0.0.2")
        assert c.reply() == "554 5.7.1 Listed in bl.test: 127.0.0.2 is a test listing"
        c.close()
        assert session(srv, source="127.0.0.3")[2] == {"u@localhost": 250}


def test_dnsbl_down_is_monitored_not_refused():
    with DnsServer(mode="servfail") as dead:
        with running_server(EXAMPLES / "dnsbl.rules", dns=dead) as srv:
            assert session(srv)[2] == {"u@localhost": 250}


def test_rhsbl(shared_dns):
    with running_server(EXAMPLES / "rhsbl.rules", dns=shared_dns) as srv:
        assert session(srv, sender="x@Bad.Example")[1] == 550
        assert session(srv, sender="x@sub.bad.example")[1] == 250


@pytest.fixture(scope="module")
def fromhost_dns():
    with DnsServer(records={("mx.example.", "MX"): ["10 mail.mx.example."],
                            ("aonly.example.", "A"): ["192.0.2.7"],
                            ("null.example.", "MX"): ["0 ."]},
                   authoritative=["example."]) as server:
        yield server


@pytest.mark.parametrize("sender,code", [
    ("a@mx.example", 250), ("a@aonly.example", 250), ("a@null.example", 550),
    ("a@nxdomain.example", 550), ("", 250)])
def test_require_resolvable_fromhost(fromhost_dns, sender, code):
    with running_server(EXAMPLES / "require_resolvable_fromhost.rules", dns=fromhost_dns) as srv:
        assert session(srv, sender=sender)[1] == code


def test_require_resolvable_fromhost_dns_failure_defers():
    with DnsServer(mode="servfail") as dead:
        with running_server(EXAMPLES / "require_resolvable_fromhost.rules", dns=dead) as srv:
            assert session(srv, sender="a@mx.example")[1] == 450


def test_count_unrecognized_commands():
    with running_server(EXAMPLES / "count_unrecognized_commands.rules") as srv:
        c = RawClient(srv.address)
        c.reply()
        for verb in ("FOO", "BAR", "BAZ"):
            assert c.cmd(verb).startswith("500")
        assert c.cmd("EHLO client.example").startswith("421 4.7.0")
        assert c.closed()
        assert session(srv)[2] == {"u@localhost": 250}


def test_content_score_plugin():
    with running_server(EXAMPLES / "content_score.rules") as srv:
        spam = b"Subject: BUY NOW CHEAPEST\r\n\r\nhttp://192.0.2.1/x\r\n"
        assert session(srv, data=spam)[3] == 550
        ham = b"Subject: hi\r\nMessage-ID: <1@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhello\r\n"
        assert session(srv, data=ham)[3] == 250
        meh = b"Subject: hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhello\r\n"
        assert session(srv, data=meh)[3] == 250
        msgs = maildir_messages(srv.server.config.maildir)
        assert any(m.startswith(b"X-Smtpfw-Score: 2 no-message-id\r\n") for m in msgs)
