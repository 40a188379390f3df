"""Plugins that misbehave in ways tests/test_plugins.py does not cover: a
decision whose reply code contradicts its outcome, a decision that is not
well-formed, and plugin code that calls sys.exit() or raises
KeyboardInterrupt.  Each costs that session a 451 4.3.0, is logged, and the
server goes on serving (issue 9: plugins)."""

from __future__ import annotations

import smtplib

import pytest

from tests.support.plugins import plugin_rules, send_one
from tests.support.server import maildir_messages, running_server

BODY = b"Subject: plugin-garbage\r\n\r\nhello\r\n"
TEMPFAIL = (451, b"4.3.0 Temporary local problem, try again later")


def rules(plugin: str, hook: str) -> str:
    return plugin_rules(f"tests.support.faults:{plugin}", hook)


def send(srv):
    return send_one(srv, BODY)


@pytest.mark.parametrize("plugin", ["RejectWith250", "TempfailWith550", "OutcomeIsAString",
                                    "CodeIsAString", "TextIsNotText"])
@pytest.mark.parametrize("hook", ["rcpt", "data"])
def test_malformed_plugin_decision_is_a_451_never_a_false_250(plugin, hook, caplog):
    """Regression: a plugin returning Decision(REJECT, 250, ...) at data made
    the client see "250 2.0.0" while the message was dropped (silent loss);
    at rcpt the recipient looked accepted and was then left out."""
    with running_server(rules_text=rules(plugin, hook)) as srv:
        assert send(srv) == TEMPFAIL
        assert maildir_messages(srv.server.config.maildir) == []
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            assert s.noop()[0] == 250
    assert any("plugin p" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("plugin", ["CallsSysExit", "RaisesKeyboardInterrupt"])
def test_plugin_exiting_does_not_stop_the_server(plugin, caplog):
    """Regression: sys.exit() in a plugin escaped asyncio's task and stopped
    the event loop: every session of the server died."""
    with running_server(rules_text=rules(plugin, "data")) as srv:
        for _ in range(2):
            assert send(srv) == TEMPFAIL
        assert srv.thread.is_alive() and srv.loop.is_running()
    assert any("plugin p raised" in r.getMessage() for r in caplog.records)
