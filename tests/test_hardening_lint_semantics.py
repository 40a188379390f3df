"""Issue 12: rules that compiled and linted clean but did not do what they
say.  Item 7: regexes that could stall a worker (they run on RE2 now), and
a pattern test reads at most 4,096 characters; item 13: `on disconnect:` (never run by the
server) is refused with E109; item 18: `option mode = "monitor"` is an open
relay (E704)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.verdict import Stage
from tests.support.cli import run as smtpfw
from tests.test_lint import NO_RELAY, codes, lint


# ---- item 7: regexes that used to backtrack catastrophically ----------------------
# Patterns run on RE2 now (issue 14): the shapes lint once warned of (W403)
# compile and answer at once; what RE2 cannot run is E404.

CATASTROPHIC = [
    "(a+)+$", "(a|a)*$", "(a|aa)*$", "^(\\w+\\s?)*$", "(\\w+.)*\\w+$", "(\\w+\\.\\w+)*$",
    "(.|\\s)*x", "(a|b|ab)*c", "(\\d+)*x", "(a+){2,9}", "(a{1,3})*b", "(x(a|aa)*y)+",
    "^[a-z]+(([a-z]+)+)?$",
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_backtracking_shapes_lint_clean_and_decide(tmp_path, pattern):
    from tests.test_rules_lang import outcome

    assert lint(tmp_path, f'on helo:\n    reject if helo matches "{pattern}"\n' + NO_RELAY) == []
    # a text that almost matches: what made a backtracking engine take exponential time
    outcome(tmp_path, f'helo matches "{pattern}"', Stage.HELO, helo="a" * 40 + "!")


@pytest.mark.parametrize("pattern,construct", [
    ("(a)\\1+", "backreference"), ("^(?=mx)", "lookahead"), ("(?<!x)y", "lookbehind"),
    ("(?>a|aa)*$", "atomic group"), ("(\\w++\\.)*\\w+-$", "possessive"),
])
def test_what_needs_backtracking_is_e404_with_a_rewrite(tmp_path, pattern, construct):
    diags = lint(tmp_path, f'on helo:\n    reject if helo matches "{pattern}"\n' + NO_RELAY)
    assert codes(diags) == [("E404", 2)], diags
    assert construct in diags[0].message and diags[0].help, diags[0]


def test_pattern_tests_read_the_first_4096_characters(tmp_path):
    """Documented bound: a longer value (only a header can be) is tested on its start."""
    from tests.test_rules_lang import outcome

    early, late = "viagra " + "x" * 5000, "x" * 5000 + " viagra"
    assert outcome(tmp_path, 'header.subject matches "viagra"', Stage.DATA, headers={"subject": early})
    assert not outcome(tmp_path, 'header.subject matches "viagra"', Stage.DATA, headers={"subject": late})
    assert outcome(tmp_path, 'header.subject matches "viagra"', Stage.DATA,
                   headers={"subject": "x" * 4089 + "viagra"})


def _folded_subject(size: int) -> bytes:
    """A legal Subject of ``size`` characters: words, folded under 998 octets a line."""
    line = " ".join(["word"] * 180)
    lines = [line] * (size // len(line))
    return b"Subject: " + "\r\n ".join(lines).encode() + b"\r\n"


def test_a_long_header_cannot_stall_a_real_server(tmp_path):
    """`.*viagra` was quadratic in its input on Python's re: on a 60 KB
    folded Subject it held the event loop for 13 s.  Measured against a
    real `smtpfw serve` process."""
    import smtplib
    import time

    from tests.support.cli import Serve

    rules = tmp_path / "site.rules"
    rules.write_text('on data:\n    [spam] reject 550 5.7.1 "spam" if header.subject matches ".*viagra"\n'
                     + NO_RELAY)
    srv = Serve("--rules", rules, "--listen", "127.0.0.1:0", "--workers", "1", "--maildir", tmp_path / "md")
    try:
        message = _folded_subject(60_000) + b"\r\nhello\r\n"
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=60) as client:
            client.ehlo("client.example")
            client.mail("alice@client.example")
            assert client.rcpt("root@localhost")[0] == 250
            started = time.monotonic()
            code, _text = client.data(message)
            elapsed = time.monotonic() - started
        assert code == 250
        assert elapsed < 3, f"DATA took {elapsed:.1f} s"
    finally:
        srv.stop()


# ---- item 13: on disconnect: ----------------------------------------------------

DISCONNECT = 'list seen = ["192.0.2.1"]\non disconnect:\n    log "bye {client.ip}"\n    reject if client.ip in seen\n'


def test_disconnect_hook_is_refused_once_with_the_hooks_that_run(tmp_path):
    diags = lint(tmp_path, DISCONNECT + NO_RELAY)
    assert codes(diags) == [("E109", 2)]       # one report, no E203/W603 follow-ups
    [d] = diags
    assert d.span.column == 4 and d.span.end_column == 14        # `disconnect`
    assert "never run" in d.message
    assert "connect, helo, mail, rcpt, data, queue" in d.help and "disconnect" not in d.help


def test_disconnect_hook_is_refused_in_an_include(tmp_path):
    diags = lint(tmp_path, 'include "part.rules"\n' + NO_RELAY, files={"part.rules": DISCONNECT})
    assert [(d.code, d.span.file.endswith("part.rules"), d.span.line) for d in diags] == [("E109", True, 2)]


def test_disconnect_hook_is_refused_by_the_compiler(tmp_path):
    """serve and reload load nothing that has it."""
    path = tmp_path / "t.rules"
    path.write_text(DISCONNECT + NO_RELAY)
    ruleset, diags = compile_ruleset(path)
    assert ruleset is None and [d.code for d in diags] == ["E109"]


@pytest.mark.parametrize("command", [
    ["serve", "--rules", "{rules}", "--listen", "127.0.0.1:0"],
    ["test", "{rules}"],
    ["trace", "--rules", "{rules}", "--no-dns", "--helo", "c.example"],
    ["dry-run", "--rules", "{rules}", "{sessions}"],
])
def test_every_command_refuses_it_the_same_way(tmp_path, command):
    rules = tmp_path / "site.rules"
    rules.write_text(DISCONNECT + NO_RELAY)
    (tmp_path / "site.tests").write_text("ehlo c.example from a@b.example rcpt x@localhost -> accept\n")
    sessions = tmp_path / "sessions.jsonl"
    sessions.write_text("")
    run = smtpfw(*[a.format(rules=rules, sessions=sessions) for a in command])
    assert run.returncode == 2, run.stdout + run.stderr
    assert "error[E109] `on disconnect:` rules never run" in run.stderr
    assert "the ruleset has errors" in run.stderr


# ---- item 18: option mode = "monitor" ---------------------------------------------

CLOSED = 'list local = ["example.com"]\non rcpt:\n    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in local\n'


def test_monitor_mode_is_an_open_relay(tmp_path):
    diags = lint(tmp_path, 'option mode = "monitor"\n' + CLOSED)
    assert codes(diags) == [("E704", 1)]
    [d] = diags
    assert "open relay" in d.message and "rule `no-relay` (line 4) never refuses" in d.message
    assert "mail for any domain is accepted" in d.message
    assert "monitor reject" in d.help and "remove the option" in d.help
    assert (d.span.column, d.span.end_column) == (1, 24)       # the whole option


def test_monitor_mode_set_in_an_include_is_reported_there(tmp_path):
    diags = lint(tmp_path, 'include "opts.rules"\n' + CLOSED, files={"opts.rules": '\noption mode = "monitor"\n'})
    assert [(d.code, Path(d.span.file).name, d.span.line) for d in diags] == [("E704", "opts.rules", 2)]
    assert "rule `no-relay` (" in diags[0].message and "t.rules:4)" in diags[0].message


@pytest.mark.parametrize("option", ["", 'option mode = "enforce"\n'])
def test_enforced_rulesets_are_not_reported(tmp_path, option):
    assert lint(tmp_path, option + CLOSED) == []


def test_monitor_mode_on_an_open_ruleset_is_e701_alone(tmp_path):
    diags = lint(tmp_path, 'option mode = "monitor"\non rcpt:\n    accept\n')
    assert [d.code for d in diags] == ["E701"]


def test_what_lint_says_is_what_the_server_does(tmp_path):
    """In monitor mode the real server accepts a recipient on any domain
    (the relay rule only logs), which is what E704 reports."""
    import smtplib

    from tests.support.server import running_server

    text = 'option mode = "monitor"\non rcpt:\n    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n'
    with running_server(rules_text=text, maildir=tmp_path / "md") as srv, \
            smtplib.SMTP(*srv.address, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("someone@client.example")
        assert client.rcpt("victim@relay.invalid")[0] == 250
    rules = tmp_path / "site.rules"
    rules.write_text(text)
    run = smtpfw("lint", "--color", "never", rules)
    assert run.returncode == 1 and "error[E704]" in run.stdout, run.stdout
