"""A canary ruleset judged beside the live one on live sessions: never
affects a reply; divergences logged with both verdicts and counted exactly."""

from __future__ import annotations

import logging
import smtplib

from tests.support.cli import REPO
from tests.support.server import running_server

CANARY = """
on mail:
    [bad-sender] reject 550 5.7.1 "No mail from bad.example" if sender.domain = "bad.example"
include "{default}"
"""


def session(address, sender: str, rcpt: str = "root@localhost") -> int:
    with smtplib.SMTP(*address, timeout=30) as s:
        s.ehlo("client.example")
        s.mail(sender)
        code = s.rcpt(rcpt)[0]
        if code == 250:
            s.data(b"Subject: hi\r\n\r\nhi\r\n")
        return code


def test_divergences_are_logged_and_counted_and_never_change_a_reply(tmp_path, caplog):
    canary = tmp_path / "canary.rules"
    canary.write_text(CANARY.format(default=REPO / "rules" / "default.rules"))
    caplog.set_level(logging.WARNING, logger="smtpfw.canary")
    with running_server(REPO / "rules" / "default.rules", canary_rules=str(canary)) as srv:
        assert session(srv.address, "a@good.example") == 250
        assert session(srv.address, "spam@bad.example") == 250              # live: accepted; canary would refuse
        assert session(srv.address, "spam@bad.example") == 250
        assert session(srv.address, "a@good.example", "x@example.net") == 554   # both refuse: no divergence
        c = srv.call(lambda: srv.server.canary)
        assert (c.sessions, c.divergences) == (4, 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "smtpfw.canary" and "session=" in r.getMessage()]
    assert len(lines) == 2
    assert 'live="accepted" canary="rejected at mail by bad-sender (550)"' in lines[0]


def test_a_canary_with_errors_is_refused_and_the_server_runs(tmp_path, caplog):
    canary = tmp_path / "canary.rules"
    canary.write_text("on mail:\n    rejct if sender.domain = \"x\"\n")
    caplog.set_level(logging.ERROR, logger="smtpfw.canary")
    with running_server(REPO / "rules" / "default.rules", canary_rules=str(canary)) as srv:
        assert session(srv.address, "a@good.example") == 250
    assert any("have errors, no canary" in r.getMessage() for r in caplog.records)
