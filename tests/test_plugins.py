"""Plugins: the API end to end, and containment of plugins that misbehave."""

from __future__ import annotations

import smtplib

import pytest

from smtpfw.lang.compiler import compile_ruleset
from tests.support.plugins import plugin_rules, send_one
from tests.support.server import running_server

BODY = b"Subject: p\r\n\r\n" + b"x" * 100 + b"\r\n"


def rules(plugin: str, args: str = "") -> str:
    return plugin_rules(f"tests.support.plugins:{plugin}", "data", args)


def send(srv):
    return send_one(srv, BODY)


@pytest.mark.parametrize("plugin", ["Raises", "Hangs", "Garbage", "Undeclared"])
def test_misbehaving_plugin_costs_the_session_a_451(plugin, caplog):
    with running_server(rules_text=rules(plugin)) as srv:
        code, text = send(srv)
        assert (code, text) == (451, b"4.3.0 Temporary local problem, try again later")
        # the server goes on serving
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            assert s.noop()[0] == 250
    assert any("plugin p" in r.getMessage() for r in caplog.records)


def tagging(threshold: int) -> str:
    """Rules after the plugin: a tag from its field, then a refusal on the tag."""
    return (f'on data:\n    [big] tag big if p.size > {threshold}\n'
            f'    [by-tag] reject 550 5.7.2 "tagged big" if tagged big\n')


def test_plugin_decision_and_fields():
    # the plugin's own decision is the session's
    with running_server(rules_text=rules("Rejects", "{limit = 50}")) as srv:
        assert send(srv) == (550, b"5.7.1 too big for the plugin")
    # no decision: the field it sets (the message size, over 100) is what the
    # rules after it see, and the tag set from it is seen by the next rule
    with running_server(rules_text=rules("Rejects", "{limit = 5000}") + tagging(20)) as srv:
        assert send(srv) == (550, b"5.7.2 tagged big")
    # the control: a field below the threshold sets no tag
    with running_server(rules_text=rules("Rejects", "{limit = 5000}") + tagging(100_000)) as srv:
        assert send(srv) == (250, b"")


@pytest.mark.parametrize("target,message", [
    ("tests.support.plugins:BadInit", "BadInit() failed: needs a key"),
    ("tests.support.plugins:Nope", "has no Nope"),
    ("no.such.module:X", "cannot import no.such.module"),
    ("nocolon", "is not of the form"),
])
def test_plugin_load_errors_are_diagnostics(tmp_path, target, message):
    path = tmp_path / "p.rules"
    path.write_text(f'plugin p = "{target}"\non data:\n    run p\n')
    ruleset, diags = compile_ruleset(path)
    assert ruleset is None
    assert [d.code for d in diags] == ["E801"] and message in diags[0].message


def test_lint_reads_a_plugin_without_constructing_it(tmp_path):
    """A check opens nothing: lint imports the class for its fields but never
    calls the constructor (which may connect somewhere); serve still does,
    and reports a constructor that fails."""
    from smtpfw.lang.check import check_ruleset
    path = tmp_path / "p.rules"
    path.write_text('plugin p = "tests.support.plugins:BadInit"\non data:\n    run p\n'
                    '    reject 550 5.7.1 "big" if p.x > 5\n'
                    'on rcpt:\n    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n')
    diags, _ = check_ruleset(path)
    assert [d.code for d in diags] == []
    ruleset, diags = compile_ruleset(path)
    assert ruleset is None and diags[0].code == "E801" and "BadInit() failed" in diags[0].message
