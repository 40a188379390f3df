"""`smtpfw test`: the .tests files beside rulesets, their format, and the
diagnostics printed when an expectation fails.  Also runs every shipped
fixture, so CI checks the shipped rulesets against their tests."""

from __future__ import annotations

import json
from pathlib import Path

from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind
from smtpfw.replay.rulestests import parse_tests
from tests.support.cli import run as smtpfw
from tests.support.server import REPO

RULES = """
zone bl = dnsbl "bl.test"
on connect:
    [dnsbl] reject 554 5.7.1 "listed: {dnsbl.txt}" if client.ip listed in bl
on mail:
    [fromhost] reject 550 5.1.8 "no such domain" if not sender.null and sender.resolvable = "no"
    [rdns] tempfail 450 4.7.1 "no reverse DNS" if client.ptr = "none" and not tls
on rcpt:
    [local] accept if rcpt.domain = "example.net"
    [no-relay] reject 554 5.7.1 "Relaying denied"
"""

PASSING = r"""
# declared DNS applies to every test in the file
dns bl.test 192.0.2.66 = listed 127.0.0.2 "test listing"
dns ptr 192.0.2.1 = found mx.example.org
dns ptr 192.0.2.66 = found mx.example.org
dns ptr 192.0.2.9 = found mx.example.org
dns resolvable example.org = yes

client 192.0.2.1 ehlo mx.example.org from alice@example.org rcpt bob@example.net -> accept
client 192.0.2.66 ehlo mx.example.org from alice@example.org rcpt bob@example.net \
    -> reject at connect by dnsbl code 554 text "test listing"
client 192.0.2.1 ehlo mx.example.org from alice@nowhere.example rcpt bob@example.net -> reject at mail by fromhost
client 192.0.2.1 ehlo mx.example.org from <> rcpt bob@example.net -> accept
client 192.0.2.2 ehlo mx.example.org from alice@example.org rcpt bob@example.net -> tempfail at mail by rdns code 450
client 192.0.2.2 tls ehlo mx.example.org from alice@example.org rcpt bob@example.net -> accept
client 192.0.2.9 ehlo mx.example.org from alice@example.org rcpt x@elsewhere.example -> reject at rcpt by no-relay
client 192.0.2.9 ehlo mx.example.org from alice@example.org rcpt x@elsewhere.example rcpt bob@example.net -> accept
client 192.0.2.9 ehlo mx.example.org -> no-mail
"""

FAILING = """\
client 192.0.2.1 ehlo mx.example.org from alice@example.org rcpt bob@example.net -> reject at rcpt by no-relay
client 192.0.2.1 ehlo mx.example.org from alice@example.org rcpt x@elsewhere.example -> accept
client 192.0.2.1 ehlo mx.example.org from alice@example.org rcpt x@elsewhere.example -> reject at rcpt by local
dns resolvable example.org = yes
dns ptr 192.0.2.1 = found mx.example.org
"""


def setup(tmp_path: Path, tests: str, rules: str = RULES) -> Path:
    (tmp_path / "site.rules").write_text(rules)
    (tmp_path / "site.tests").write_text(tests)
    return tmp_path / "site.rules"


def test_shipped_rulesets_pass_their_tests():
    run = smtpfw("test", "rules/")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rules/reference.tests: 44 tests, 44 passed" in run.stdout
    assert "rules/default.tests:" in run.stdout
    for example in sorted((REPO / "rules" / "examples").glob("*.rules")):
        assert example.with_suffix(".tests").exists(), f"{example.name} has no .tests"
    assert run.stdout.rstrip().splitlines()[-1].startswith("ok: ")


def test_passing_fixture(tmp_path):
    rules = setup(tmp_path, PASSING)
    run = smtpfw("test", rules)
    assert run.returncode == 0, run.stdout
    assert run.stdout.splitlines() == [f"{tmp_path / 'site.tests'}: 9 tests, 9 passed",
                                       "ok: 9 tests passed in 1 ruleset"]
    run = smtpfw("test", "-v", tmp_path / "site.tests")      # the tests file names its ruleset too
    assert run.returncode == 0
    assert run.stdout.count("ok   ") == 9


def test_failing_fixture_prints_lint_diagnostics_with_a_trace(tmp_path):
    rules = setup(tmp_path, FAILING)
    run = smtpfw("test", rules)
    assert run.returncode == 1
    out = run.stdout
    tests = tmp_path / "site.tests"
    lines = FAILING.splitlines()
    col1, col2 = lines[0].index("->") + 1, lines[1].index("->") + 1
    assert (f"{tests}:1:{col1}: error[E901] expected reject at rcpt by no-relay; got accepted") in out
    assert (f"{tests}:2:{col2}: error[E901] expected accept; got rejected at rcpt by no-relay (554): "
            "554 5.7.1 Relaying denied") in out
    # the source line with a caret under the expectation, as lint shows it
    assert f"1 | {lines[0]}" in out
    assert "  | " + " " * (col1 - 1) + "^" * (len(lines[0]) - col1 + 1) + "\n" in out
    # the trace of the failing session follows each diagnostic
    assert "   | >>> RCPT TO:<x@elsewhere.example>" in out
    assert "rule  local (" in out and "): no match" in out
    assert "   | verdict: rejected at rcpt by no-relay (554)" in out
    assert "= help: refused by `no-relay` first; rules run in order within a hook" in out
    assert out.rstrip().splitlines()[-1] == "FAILED: 3 of 3 tests failed"


def test_expectation_syntax_errors(tmp_path):
    text = "\n".join([
        "client 192.0.2.1 ehlo mx.example.org form a@b.example -> accept",
        "client 192.0.2.300 ehlo x -> no-mail",
        "ehlo x from a@b.example rcpt c@example.net -> acept",
        "ehlo x from a@b.example rcpt c@example.net -> reject at rcpt by no-rely",
        "ehlo x from a@b.example rcpt c@example.net -> reject at mial",
        "ehlo x from a@b.example rcpt c@example.net",
        "from a@b.example rcpt c@example.net -> accept",
        "dns bl.test 192.0.2.1 = maybe",
        "dns ptr not-an-ip = none",
        'ehlo x header "no colon here" -> no-mail',
        "ehlo x from a@b.example rcpt c@example.net -> reject code 55",
        "tls ehlo x from <> rcpt c@example.net -> accept",
    ]) + "\n"
    rules = setup(tmp_path, text)
    run = smtpfw("test", rules, "--format", "json")
    assert run.returncode == 1
    doc = json.loads(run.stdout)
    diags = [(d["line"], d["code"], d["message"], d["help"]) for d in doc["diagnostics"]]
    assert [d[:2] for d in diags] == [(n, "E902") for n in range(1, 12)]
    assert diags[0][2:] == ("unknown word `form` in a test", "did you mean `from`?")
    assert "192.0.2.300" in diags[1][2]
    assert diags[2][2:] == ("unknown verdict `acept`", "did you mean `accept`?")
    assert diags[3][2:] == ("the ruleset has no rule `no-rely`", "did you mean `no-relay`?")
    assert diags[4][2] == "unknown stage `mial`"
    assert "needs `-> EXPECTED`" in diags[5][2]
    assert "`from` needs `helo NAME` or `ehlo NAME` first" in diags[6][2]
    assert diags[7][2] == "a dnsbl answer is listed, clear, failed; not `maybe`"
    assert "not-an-ip" in diags[8][2]
    assert diags[9][2].startswith("header: expected 'Name: value'")
    assert "3-digit" in diags[10][2]
    assert doc["summary"] == {"tests": 1, "passed": 1, "failed": 0, "unreadable": 11}


def test_missing_tests_and_broken_rules_exit_2(tmp_path):
    (tmp_path / "lonely.rules").write_text(RULES)
    run = smtpfw("test", tmp_path / "lonely.rules")
    assert run.returncode == 2 and "no tests file" in run.stderr
    rules = setup(tmp_path, PASSING, rules="on rcpt:\n    reject if nosuch.field = 1\n")
    run = smtpfw("test", rules)
    assert run.returncode == 2
    assert "E102" in run.stderr and "the ruleset has errors" in run.stderr
    run = smtpfw("test", tmp_path / "nothing-here")
    assert run.returncode == 2 and "no such file or folder" in run.stderr


def test_parse_dns_declarations_and_defaults():
    text = "\n".join([
        'dns bl.test 192.0.2.66 = listed 127.0.0.2 127.0.0.4 "two codes"',
        "dns dbl.test Spam.Example. = listed",
        "dns ptr 192.0.2.7 = found a.example B.example unconfirmed",
        "dns ptr 192.0.2.8 = none",
        'dns resolvable example.org = failed "timeout"',
        "ehlo x from a@example.org rcpt b@example.net header \"Subject: a: b\" size 12 -> accept",
    ])
    tf = parse_tests("t.tests", text, ["r"])
    assert tf.diags == []
    assert tf.dns == {
        Lookup(LookupKind.DNSBL, "192.0.2.66", "bl.test"): DnsAnswer("listed", ("127.0.0.2", "127.0.0.4"), "two codes"),
        Lookup(LookupKind.RHSBL, "spam.example", "dbl.test"): DnsAnswer("listed", ("127.0.0.2",)),
        Lookup(LookupKind.PTR, "192.0.2.7", ""): DnsAnswer("found", names=("a.example", "b.example")),
        Lookup(LookupKind.PTR, "192.0.2.8", ""): DnsAnswer("none"),
        Lookup(LookupKind.RESOLVABLE, "example.org", ""): DnsAnswer("failed", error="timeout"),
    }
    (case,) = tf.cases
    data = case.record["events"][-1]
    assert data == {"cmd": "data", "size": 12, "headers": {"subject": "a: b"}}
    assert case.record["client"]["ip"] == "192.0.2.1"
