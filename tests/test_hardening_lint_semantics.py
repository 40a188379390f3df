"""Issue 12: rules that compiled and linted clean but did not do what they
say.  Item 13: `on disconnect:` (never run by the server) is refused with
E109."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smtpfw.lang.compiler import compile_ruleset
from tests.support.server import REPO
from tests.test_lint import NO_RELAY, codes, lint


def smtpfw(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpfw", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


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
