"""smtpfw lint: golden corpus (tests/lint), one unit test per check, output
formats and exit codes.

Regenerate the golden files (and the outputs shown in docs/lint.md) after an
intended change of wording with
``SMTPFW_UPDATE_GOLDEN=1 python -m pytest tests/test_lint.py`` and review
the diff.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smtpfw.cli import main
from smtpfw.diagnostics import CODES, Diagnostic, Severity, Span
from smtpfw.lang.check import PUBLIC_ZONES, check_ruleset, public_zone
from smtpfw.lint_output import format_json, format_text, summary_line, use_color

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "lint"
UPDATE = os.environ.get("SMTPFW_UPDATE_GOLDEN") == "1"
NOT_IN_CORPUS = {"E901", "E902",     # ruleset-test codes: tests/ for `smtpfw test`
                 "E999",             # lint's own bugs: test_*_crash_is_e999 below
                 "W604",             # only with --mode: test_mode_warns_of_fields_it_never_has
                 "W705"}             # only with --config: test_a_public_resolver_in_the_config_is_warned_of


def corpus_cases() -> list[str]:
    return sorted(p.name for p in CORPUS.iterdir() if p.name.endswith((".rules", ".d")))


def _stem(case: str) -> str:
    return case.rsplit(".", 1)[0]


def run_cli(args: list[str], cwd: Path, capsys) -> tuple[int, str]:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(args)
    finally:
        os.chdir(old)
    return code, capsys.readouterr().out


# ---- golden corpus ------------------------------------------------------------

@pytest.mark.parametrize("case", corpus_cases())
def test_corpus(case, capsys):
    code_text, text = run_cli(["lint", "--color", "never", case], CORPUS, capsys)
    code_json, js = run_cli(["lint", "--format", "json", case], CORPUS, capsys)
    assert code_text == code_json
    expected_txt = CORPUS / f"{_stem(case)}.expected.txt"
    expected_json = CORPUS / f"{_stem(case)}.expected.json"
    if UPDATE:
        expected_txt.write_text(text, encoding="utf-8")
        expected_json.write_text(js, encoding="utf-8")
    assert text == expected_txt.read_text(encoding="utf-8")
    assert json.loads(js) == json.loads(expected_json.read_text(encoding="utf-8"))
    data = json.loads(js)
    errors = data["summary"]["error"]
    assert code_text == (1 if errors else 0)


def test_corpus_covers_every_code():
    covered: set[str] = set()
    for case in corpus_cases():
        data = json.loads((CORPUS / f"{_stem(case)}.expected.json").read_text(encoding="utf-8"))
        covered |= {d["code"] for d in data["diagnostics"]}
    missing = set(CODES) - NOT_IN_CORPUS - covered
    assert not missing, f"codes without a corpus file: {sorted(missing)}"


def test_corpus_file_names_its_code():
    """e.g. w602-shadowed-rule.rules reports W602."""
    for case in corpus_cases():
        code = case.split("-", 1)[0].upper()
        if code in CODES:
            data = json.loads((CORPUS / f"{_stem(case)}.expected.json").read_text(encoding="utf-8"))
            assert code in {d["code"] for d in data["diagnostics"]}, case


def test_corpus_clean_file_is_clean():
    diags, _ = check_ruleset(CORPUS / "clean.rules")
    assert diags == []


# ---- helpers for unit tests -------------------------------------------------------

NO_RELAY = '\non rcpt:\n    reject 554 "Relaying denied" if rcpt.domain not in localnames\n'


def lint(tmp_path: Path, text: str, name: str = "t.rules", files: dict | None = None) -> list[Diagnostic]:
    for fname, content in (files or {}).items():
        p = tmp_path / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    path = tmp_path / name
    path.write_text(text)
    diags, _ = check_ruleset(str(path))
    return diags


def codes(diags) -> list[tuple[str, int]]:
    return [(d.code, d.span.line if d.span else 0) for d in diags]


def only(diags, code) -> list[Diagnostic]:
    return [d for d in diags if d.code == code]


# ---- shipped rulesets lint clean --------------------------------------------------

@pytest.mark.parametrize("name", ["default.rules", "reference.rules"])
def test_shipped_rulesets_clean(name):
    diags, _ = check_ruleset(REPO / "rules" / name)
    assert diags == []
    proc = subprocess.run([sys.executable, "-m", "smtpfw", "lint", "--fail-on", "hint", str(REPO / "rules" / name)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no problems found" in proc.stdout


def test_examples_lint_clean(capsys):
    examples = REPO / "rules" / "examples"
    if not any(examples.glob("*.rules")):
        pytest.skip("no examples yet")
    code, out = run_cli(["lint", "--color", "never", "--fail-on", "hint", "rules/examples"], REPO, capsys)
    assert code == 0, out


# ---- W402 -----------------------------------------------------------------------------

@pytest.mark.parametrize("cond", [
    'sender.domain matches "@example\\\\.com$"',
    'sender.domain like "*@example.com"',
    'sender.domain matches "a b"',
    'client.ip matches "^mail"',
    'sender.domain matches "com$\\\\.x"',
    'sender.domain matches "x^y"',
    'sender.resolvable matches "^nx"',
    'sender.domain matches "(a@|b@)"',
])
def test_w402_positive(tmp_path, cond):
    diags = lint(tmp_path, f"on mail:\n    reject if {cond}\n" + NO_RELAY)
    assert codes(diags) == [("W402", 2)], diags


@pytest.mark.parametrize("cond", [
    'helo matches "@"',                      # HELO is what the client sent: it can hold anything
    'sender matches "@example\\\\.com$"',     # an address has an @
    'sender.domain matches "[^@]+"',
    'sender.domain like "*.EXAMPLE.COM"',      # matching ignores case
    'sender.domain matches "^(mail|smtp)\\\\."',
    'client.ip matches "^10\\\\."',
    'client.ip matches "^2001:db8:"',
    'sender.resolvable matches "^n"',
    'sender.domain matches "(a@|b)"',
    'header.subject matches "a$b"',
])
def test_w402_negative(tmp_path, cond):
    hook = "data" if "header" in cond else "mail"
    assert lint(tmp_path, f"on {hook}:\n    reject if {cond}\n" + NO_RELAY) == []


def test_w402_negated_pattern_says_always_true(tmp_path):
    diags = lint(tmp_path, 'on rcpt:\n    reject if rcpt.domain not matches "@"\n')
    assert codes(diags) == [("W402", 2)]
    assert "always true" in diags[0].message
    assert diags[0].span.column == 39      # the pattern itself


def test_w402_skips_invalid_regex(tmp_path):
    diags = lint(tmp_path, 'on mail:\n    reject if sender.domain matches "(@"\n' + NO_RELAY)
    assert codes(diags) == [("E401", 2)]


# ---- W601 -----------------------------------------------------------------------------

def test_w601_after_unconditional_reject(tmp_path):
    text = 'on helo:\n    reject "no"\n    accept if helo = "a"\n    tag x\n' + NO_RELAY
    diags = lint(tmp_path, text)
    assert codes(diags) == [("W601", 3), ("W601", 4)]
    assert "line 2" in diags[0].message


@pytest.mark.parametrize("first", ['monitor reject "no"', 'reject "no" if helo = "x"', "tag seen", "log \"hi\""])
def test_w601_negative(tmp_path, first):
    text = f'on helo:\n    {first}\n    reject if helo = "a"\n' + NO_RELAY
    assert only(lint(tmp_path, text), "W601") == []


def test_w601_is_per_hook(tmp_path):
    text = 'on helo:\n    accept\non mail:\n    reject if sender.domain = "x"\n' + NO_RELAY
    assert only(lint(tmp_path, text), "W601") == []


# ---- W602 -----------------------------------------------------------------------------

@pytest.mark.parametrize("first,second", [
    ('helo = "a"', 'helo = "a"'),
    ('helo = "A"', 'helo = "a"'),
    ('helo in ["a", "b"]', 'helo = "b"'),
    ('helo in ["a", "b"]', 'helo in ["b"]'),
    ('helo in bad', 'helo = "a.example"'),
    ('helo in bad', 'helo in bad'),
    ('helo within ["example"]', 'helo = "mail.example"'),
    ('helo = "a" and esmtp', 'esmtp and helo = "a"'),
    ('helo = "a"', 'helo = "a" and esmtp'),
    ('helo = "a" or helo = "b"', 'helo = "b"'),
    ('helo like "*.example"', 'helo = "mail.example"'),
    ('not esmtp', 'not esmtp'),
    ('helo not in ["a"]', 'helo not in ["a", "b"]'),
    ('client.ip in [10.0.0.0/8]', 'client.ip = 10.1.2.3'),
])
def test_w602_positive(tmp_path, first, second):
    text = f'list bad = ["a.example"]\non helo:\n    [first] reject if {first}\n    tag x if {second}\n' + NO_RELAY
    diags = only(lint(tmp_path, text), "W602")
    assert codes(diags) == [("W602", 4)], diags
    assert "rule `first` (line 3)" in diags[0].message


@pytest.mark.parametrize("first,second", [
    ('helo = "a"', 'helo = "b"'),
    ('helo in ["a", "b"]', 'helo = "c"'),
    ('helo = "a" and esmtp', 'helo = "a"'),
    ('helo not in ["a", "b"]', 'helo not in ["a"]'),
    ('helo like "*.example"', 'helo = "example"'),
    ('helo in bad', 'helo = "b.example"'),
    ('client.ip in [10.0.0.0/8]', 'client.ip = 11.1.2.3'),
])
def test_w602_negative(tmp_path, first, second):
    text = f'list bad = ["a.example"]\non helo:\n    [first] reject if {first}\n    tag x if {second}\n' + NO_RELAY
    assert only(lint(tmp_path, text), "W602") == []


def test_w602_needs_a_terminal_earlier_rule(tmp_path):
    text = 'on helo:\n    tag x if helo = "a"\n    monitor reject if helo = "a"\n    reject if helo = "a"\n' + NO_RELAY
    assert only(lint(tmp_path, text), "W602") == []


def test_w602_numeric_ranges(tmp_path):
    text = ('on data:\n    reject if message.size > 10M\n    reject if message.size >= 20M\n'
            '    reject if message.size < 5M\n' + NO_RELAY)
    assert codes(lint(tmp_path, text)) == [("W602", 3)]


def test_w602_list_file(tmp_path):
    text = 'list bad = file "bad.txt"\non helo:\n    reject if helo in bad\n    reject if helo = "b.example"\n' + NO_RELAY
    diags = lint(tmp_path, text, files={"bad.txt": "a.example\nb.example\n"})
    assert codes(diags) == [("W602", 4)]


# ---- W603 -----------------------------------------------------------------------------

def test_w603_unused(tmp_path):
    text = ('list a = ["x.example"]\nlist b = ["y.example"]\nzone z = dnsbl "bl.example"\n'
            'zone used = dnsbl "bl2.example"\nplugin p = "smtpfw.plugins_builtin:HeaderScore"\n'
            'on helo:\n    reject if helo in b\n    reject if client.ip listed in used\n' + NO_RELAY)
    diags = lint(tmp_path, text)
    assert codes(diags) == [("W603", 1), ("W603", 3), ("W603", 5)]
    assert diags[0].span.column == 6      # the name


def test_w603_plugin_fields_without_run(tmp_path):
    text = 'plugin p = "smtpfw.plugins_builtin:HeaderScore"\non data:\n    reject if p.points > 3\n' + NO_RELAY
    [d] = lint(tmp_path, text)
    assert d.code == "W603" and "never set" in d.message and "run p" in d.help


def test_w603_used_in_include(tmp_path):
    text = 'list a = ["x.example"]\ninclude "part.rules"\n' + NO_RELAY
    diags = lint(tmp_path, text, files={"part.rules": 'on helo:\n    reject if helo in a\n'})
    assert diags == []


def test_w603_not_reported_when_an_include_is_broken(tmp_path):
    text = 'list a = ["x.example"]\ninclude "missing.rules"\n' + NO_RELAY
    assert codes(lint(tmp_path, text)) == [("E003", 2)]


# ---- E701 -----------------------------------------------------------------------------

CLOSED = {
    "not-in": 'list local = ["example.com"]\non rcpt:\n    reject if rcpt.domain not in local\n',
    "not-paren": 'list local = ["example.com"]\non rcpt:\n    reject if not (rcpt.domain in local)\n',
    "accept-then-refuse": 'on rcpt:\n    accept if rcpt.domain in localnames\n    reject "no"\n',
    "eq": 'on rcpt:\n    accept if rcpt.domain = "example.com"\n    reject "no"\n',
    "trusted": 'list nets = [10.0.0.0/8]\non rcpt:\n    accept if client.ip in nets\n'
               '    reject if rcpt.domain != "example.com"\n',
    "auth": 'on rcpt:\n    accept if auth\n    accept if rcpt.domain in localnames\n    reject "no"\n',
    "or-of-restrictions": 'list nets = [10.0.0.0/8]\non rcpt:\n    accept if client.ip in nets or auth\n'
                          '    reject if rcpt.domain not within localnames\n',
    "tag": 'list nets = [10.0.0.0/8]\non connect:\n    tag trusted if client.ip in nets\non rcpt:\n'
           '    accept if tagged trusted\n    reject if rcpt.domain not in localnames\n',
    "connect": 'list nets = [10.0.0.0/8]\non connect:\n    reject if client.ip not in nets\non rcpt:\n    accept\n',
    "pattern": 'on rcpt:\n    accept if rcpt.domain like "*.example.com"\n    reject "no"\n',
    "and-not-auth": 'on rcpt:\n    reject if rcpt.domain not in localnames and not auth\n',
    "reference": None,
}


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_e701_closed(tmp_path, name):
    if CLOSED[name] is None:
        diags, _ = check_ruleset(REPO / "rules" / "reference.rules")
    else:
        diags = lint(tmp_path, CLOSED[name])
    assert only(diags, "E701") == [], diags


OPEN = {
    "no-rcpt": ('on helo:\n    reject if helo = "x"\n', 1),
    "empty": ("", 1),
    "fall-through": ('list bad = ["a@b.example"]\non rcpt:\n    reject if rcpt in bad\n', 2),
    "accept-all": ('on rcpt:\n    accept\n    reject if rcpt.domain not in localnames\n', 2),
    "or": ('on rcpt:\n    accept if rcpt.domain in localnames or helo = "x"\n    reject "no"\n', 2),
    "rcpt-local": ('on rcpt:\n    accept if rcpt.local = "postmaster"\n    reject "no"\n', 2),
    "monitor": ('on rcpt:\n    monitor reject if rcpt.domain not in localnames\n', 1),
    "untrusted-tag": ('on connect:\n    tag trusted if client.rdns within ["example.com"]\non rcpt:\n'
                      '    accept if tagged trusted\n    reject if rcpt.domain not in localnames\n', 4),
    "broad-regex": ('on rcpt:\n    accept if rcpt.domain matches "."\n    reject "no"\n', 2),
    "blacklist-accept": ('on rcpt:\n    accept if client.ip not in [192.0.2.0/24]\n    reject "no"\n', 2),
    "accept-at-connect-first": ('list nets = [10.0.0.0/8]\non connect:\n    accept if client.port = 25\n'
                                '    reject if client.ip not in nets\non rcpt:\n    accept\n', 6),
}


@pytest.mark.parametrize("name", sorted(OPEN))
def test_e701_open(tmp_path, name):
    text, line = OPEN[name]
    diags = only(lint(tmp_path, text), "E701")
    assert [d.span.line for d in diags] == [line], diags
    assert "relay" in diags[0].message
    assert "rcpt.domain not in" in diags[0].help


def test_e701_help_shows_the_path(tmp_path):
    text = ('list local = ["example.com"]\nlist nets = [10.0.0.0/8]\non rcpt:\n'
            '    [trusted] accept if client.ip in nets\n    [pm] accept if rcpt.local = "postmaster"\n'
            '    reject if rcpt.domain not in local\n')
    [d] = only(lint(tmp_path, text), "E701")
    assert "RCPT TO:<someone@relay.invalid>" in d.help
    assert "passes rule `trusted` (line 4)" in d.help
    assert "t.rules:5 (rule `pm`)" in d.help
    assert "rcpt.domain not in local`" in d.help


def test_e701_fall_through_points_at_hook(tmp_path):
    text = 'on helo:\n    reject if helo = "x"\n\n  on   rcpt:\n    tag x\n'
    [d] = only(lint(tmp_path, text), "E701")
    assert (d.span.line, d.span.column) == (4, 3)


def test_e701_skipped_on_syntax_error(tmp_path):
    assert codes(lint(tmp_path, "on rcpt:\n    accept if (\n")) == [("E002", 2)]


# ---- W702 -----------------------------------------------------------------------------

@pytest.mark.parametrize("rule", [
    "reject if sender.null",
    'reject if sender = ""',
    'reject if sender.domain = ""',
    'reject if sender.domain not in ["example.com"]',
    'reject if not sender.domain in ["example.com"]',
    'reject if sender not like "*@*"',
    'reject if sender.domain not in ["example.com"] and not auth',
    'reject if helo = "x" or sender.null',
    'tempfail "later"',
    'disconnect if sender.null',
])
def test_w702_positive(tmp_path, rule):
    assert codes(lint(tmp_path, f"on mail:\n    {rule}\n" + NO_RELAY)) == [("W702", 2)]


@pytest.mark.parametrize("rule", [
    'reject if sender.resolvable = "no"',         # <> has nothing to resolve: "yes"
    'reject if sender in ["spam@example.com"]',
    'reject if sender.domain listed in rhsbl "dbl.example"',
    'reject if not sender.null and sender.domain not in ["example.com"]',
    'reject if sender.domain = "spam.example" or client.ip listed in dnsbl "bl.example"',
    'reject if client.ip listed in dnsbl "bl.example"',
    'monitor reject if sender.null',
    'reject if sender.local = "postmaster"',
])
def test_w702_negative(tmp_path, rule):
    assert only(lint(tmp_path, f"on mail:\n    {rule}\n" + NO_RELAY), "W702") == []


def test_w702_accept_null_first(tmp_path):
    text = 'on mail:\n    accept if sender.null\n    reject if sender.domain not in ["example.com"]\n' + NO_RELAY
    assert lint(tmp_path, text) == []


def test_w702_catch_all_after_accept(tmp_path):
    text = 'on mail:\n    accept if auth\n    reject "authenticate first"\n' + NO_RELAY
    assert lint(tmp_path, text) == []


def test_w702_with_compile_errors_elsewhere(tmp_path):
    text = 'on mail:\n    reject if sender.null\n    reject if sender.domian = "x"\n' + NO_RELAY
    assert codes(lint(tmp_path, text)) == [("W702", 2), ("E102", 3)]


# ---- H703 -----------------------------------------------------------------------------

def test_h703_declared_and_inline(tmp_path):
    text = ('zone zen = dnsbl "zen.spamhaus.org"\n'
            'on connect:\n    reject if client.ip listed in zen\n'
            '    reject if client.ip listed in dnsbl "b.barracudacentral.org"\n'
            'on mail:\n    reject if sender.domain listed in rhsbl "multi.uribl.com"\n' + NO_RELAY)
    diags = lint(tmp_path, text)
    assert codes(diags) == [("H703", 1), ("H703", 4), ("H703", 6)]
    assert "codes [127.0.0.2-127.0.0.11]" in diags[0].help and "127.255.255" in diags[0].help
    assert "codes [mask 14]" in diags[2].help
    assert diags[0].level is Severity.HINT


@pytest.mark.parametrize("text", [
    'zone zen = dnsbl "zen.spamhaus.org" codes [127.0.0.2-127.0.0.11]\non connect:\n    reject if client.ip listed in zen\n',
    'zone zen = dnsbl "zen.spamhaus.org"\non connect:\n    reject if client.ip listed in zen codes [127.0.0.4-127.0.0.7]\n',
    'on connect:\n    reject if client.ip listed in dnsbl "bl.spamcop.net" codes [127.0.0.2]\n',
    'on connect:\n    reject if client.ip listed in dnsbl "bl.example.net"\n',
    'zone zen = dnsbl "zen.spamhaus.org"\non connect:\n    tempfail if client.ip lookup failed in zen\n',
])
def test_h703_negative(tmp_path, text):
    assert only(lint(tmp_path, text + NO_RELAY), "H703") == []


def test_public_zone_names():
    assert public_zone("ZEN.spamhaus.org.")[0] == "zen.spamhaus.org"
    assert public_zone("abcdef.zen.dq.spamhaus.net")[0] == "zen.spamhaus.org"
    assert public_zone("bl.test") is None
    assert public_zone("notzen.spamhaus.org") is None


# ---- compiler checks through lint (the list file's own line numbers) ------------

def test_list_file_problems_point_into_the_list(tmp_path, capsys):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "nets").write_text("10.0.0.0/8\n\n# c\n300.1.2.3\n10.0.0.0/8\n")
    (tmp_path / "t.rules").write_text('list nets = file "lists/nets"\non connect:\n'
                                      '    reject if client.ip not in nets\n' + NO_RELAY)
    code, out = run_cli(["lint", "--color", "never", "t.rules"], tmp_path, capsys)
    assert code == 1
    assert "lists/nets:4:1: error[E302] `300.1.2.3` is not an IP address or network" in out
    assert "lists/nets:5:1: warning[W303] duplicate entry `10.0.0.0/8` (first on line 1)" in out
    assert "4 | 300.1.2.3" in out


def test_disconnect_hook_is_refused(tmp_path):
    """The server never runs it (issue 12 item 13; tests/test_hardening_lint_semantics.py)."""
    assert codes(lint(tmp_path, 'on disconnect:\n    log "bye {client.ip}"\n' + NO_RELAY)) == [("E109", 1)]


# ---- robustness ---------------------------------------------------------------------

def test_check_crash_is_e999(tmp_path, monkeypatch):
    """A bug in a check is lint's own error, not the check's warning code."""
    from smtpfw.lang import check

    def boom(self):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(check._Linter, "check_order", boom)
    diags = lint(tmp_path, 'on helo:\n    reject "x"\n' + NO_RELAY)
    [d] = diags
    assert d.code == "E999" and d.level is Severity.ERROR and d.name == "internal-error"
    assert "internal error while looking for unreachable" in d.message and "RuntimeError: kaboom" in d.message
    assert "in boom)" in d.message                       # where it was raised
    assert "bug in smtpfw, please report it" in d.help


def test_compile_crash_is_e999_not_a_syntax_error(tmp_path, monkeypatch):
    from smtpfw.lang import check

    def boom(*a, **k):
        raise ValueError("bad")
    monkeypatch.setattr(check, "compile_program", boom)
    diags = lint(tmp_path, NO_RELAY)
    assert [d.code for d in diags] == ["E999"] and "internal error while compiling: ValueError: bad" in diags[0].message


def test_load_crash_is_e999(tmp_path, monkeypatch):
    from smtpfw.lang import check

    def boom(*a, **k):
        raise KeyError("x")
    monkeypatch.setattr(check, "load_program", boom)
    assert [d.code for d in lint(tmp_path, NO_RELAY)] == ["E999"]


def test_deep_not_chain(tmp_path):
    text = "on helo:\n    reject if " + "not " * 400 + "esmtp\n" + NO_RELAY
    diags = lint(tmp_path, text)
    assert all(isinstance(d, Diagnostic) for d in diags)


# ---- output ---------------------------------------------------------------------------

def test_text_format_and_summary():
    d = Diagnostic("W601", "this rule can never run", Span("x.rules", 2, 5, 2, 11), help="move it")
    out = format_text([d], {"x.rules": "on helo:\n    accept\n"}, summary=True)
    assert out == ("x.rules:2:5: warning[W601] this rule can never run\n"
                   "  |\n"
                   "2 |     accept\n"
                   "  |     ^^^^^^\n"
                   "  = help: move it\n"
                   "found 1 warning\n")
    assert summary_line([]) == "no problems found"


def test_text_format_color_only_when_asked():
    d = Diagnostic("E701", "open relay", Span("x.rules", 1, 1, 1, 3))
    assert "\033[" in format_text([d], {"x.rules": "on rcpt:\n"}, color=True)
    assert "\033[" not in format_text([d], {"x.rules": "on rcpt:\n"}, color=False)

    class Tty(io.StringIO):
        def isatty(self):
            return True
    assert use_color("auto", Tty()) is (os.environ.get("NO_COLOR") is None)
    assert use_color("auto", io.StringIO()) is False
    assert use_color("always", io.StringIO()) is True
    assert use_color("never", Tty()) is False


def test_text_format_control_characters_are_replaced():
    d = Diagnostic("E002", "nul", Span("x.rules", 1, 2, 1, 3))
    out = format_text([d], {"x.rules": "a\x00\x1bb\tc\n"})
    assert "\x00" not in out and "\x1b" not in out
    assert "1 | a\ufffd\ufffdb c" in out


def test_json_schema():
    d = Diagnostic("W602", "shadowed", Span("x.rules", 3, 5, 3, 9), help="remove it")
    data = json.loads(format_json([d, Diagnostic("E001", "cannot read")], ["x.rules"]))
    assert data["version"] == 1 and data["files"] == ["x.rules"]
    assert data["diagnostics"][0] == {
        "code": "W602", "name": "shadowed-rule", "severity": "warning", "message": "shadowed",
        "file": "x.rules", "line": 3, "column": 5, "end_line": 3, "end_column": 9,
        "help": "remove it", "url": "docs/lint.md#w602"}
    assert data["diagnostics"][1]["file"] is None
    assert data["summary"] == {"error": 1, "warning": 1, "hint": 0}


def test_docs_cover_every_code():
    text = (REPO / "docs" / "lint.md").read_text(encoding="utf-8")
    for code, info in CODES.items():
        assert f'<a id="{code.lower()}"></a>' in text, code
        assert f"{code} {info.label}" in text, code


# Producers not yet converted from "E302" to Code.E302_LIST_ENTRY_MALFORMED
# (owned by another part of issue 13); the test below fails once they are, so
# this set only shrinks.
BARE_CODES_ALLOWED = {"smtpfw/checks/lists.py"}


def _code_uses() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per smtpfw source file: bare code strings ("E302") and Code.<member> names used."""
    import ast

    bare: dict[str, set[str]] = {}
    members: dict[str, set[str]] = {}
    for path in sorted((REPO / "smtpfw").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[EWH]\d{3}",
                                                                                                 node.value):
                bare.setdefault(rel, set()).add(node.value)
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Code"
                  and re.fullmatch(r"[EWH]\d{3}_\w+", node.attr)):
                members.setdefault(rel, set()).add(node.attr)
    return bare, members


def test_codes_are_named_constants_not_strings():
    bare, _ = _code_uses()
    assert set(bare) - {"smtpfw/diagnostics.py"} == BARE_CODES_ALLOWED, {f: sorted(c) for f, c in bare.items()}
    assert set().union(*bare.values()) <= set(CODES)


def test_every_code_used_is_registered_and_named_after_its_label():
    from smtpfw.diagnostics import Code

    _, members = _code_uses()
    used = set().union(*members.values())
    assert used and used <= set(Code.__members__), sorted(used - set(Code.__members__))
    for member in Code:
        assert member.name == f"{member.value}_{member.label.upper().replace('-', '_')}"
        assert CODES[member.value] is member and member.anchor == member.value.lower()


def test_an_unregistered_code_is_refused():
    with pytest.raises(ValueError):
        Diagnostic("E000", "no such code")


def _doc_examples():
    """(code, bad files, lint output, fixed files) for each example in docs/lint.md."""
    text = (REPO / "docs" / "lint.md").read_text(encoding="utf-8")
    out = []
    for section in re.split(r'<a id="', text)[1:]:
        code = section[:4].upper()
        blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
        bad: dict = {}
        fixed: dict = {}
        output = None
        for lang, body in blocks:
            if lang == "console" and body.startswith("$ smtpfw lint ") and bad:
                output = body.split("\n", 1)[1]
            elif lang in ("rules", "text") and body.startswith("# "):
                name = body.split("\n", 1)[0][2:]
                (fixed if output is not None else bad)[name] = body
        if bad:
            out.append((code, bad, output, fixed))
    return out


def test_docs_examples_are_real_output(tmp_path, capsys):
    """docs/lint.md shows real output (SMTPFW_UPDATE_GOLDEN=1 rewrites it)."""
    docs = REPO / "docs" / "lint.md"
    examples = _doc_examples()
    assert {c for c, *_ in examples} == set(CODES) - NOT_IN_CORPUS - {"E001"}
    text = docs.read_text(encoding="utf-8")
    for code, bad, output, fixed in examples:
        for kind, files in (("bad", bad), ("fixed", fixed)):
            folder = tmp_path / code / kind
            for name, body in files.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text(body, encoding="utf-8")
        first = next(iter(bad))
        rc, actual = run_cli(["lint", "--color", "never", first], tmp_path / code / "bad", capsys)
        if UPDATE and actual != output:
            text = text.replace(f"$ smtpfw lint {first}\n{output}", f"$ smtpfw lint {first}\n{actual}", 1)
        else:
            assert actual == output, code
        assert f"[{code}]" in actual
        rc, clean = run_cli(["lint", "--color", "never", "--fail-on", "hint", next(iter(fixed))],
                            tmp_path / code / "fixed", capsys)
        assert (rc, clean) == (0, "no problems found\n"), (code, clean)
    if UPDATE:
        docs.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("zone", sorted(PUBLIC_ZONES))
def test_public_zone_codes_are_valid_rules(tmp_path, zone):
    info = PUBLIC_ZONES[zone]
    kind = "rhsbl" if info.lists == "domain" else "dnsbl"
    field = "sender.domain" if kind == "rhsbl" else "client.ip"
    hook = "mail" if kind == "rhsbl" else "connect"
    text = (f'zone z = {kind} "{zone}" codes [{info.codes}]\non {hook}:\n    reject if {field} listed in z\n'
            + NO_RELAY)
    assert lint(tmp_path, text) == []


# ---- exit codes, end to end ---------------------------------------------------------

def _smtpfw(*args, cwd=CORPUS):
    return subprocess.run([sys.executable, "-m", "smtpfw", "lint", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args,code", [
    (["clean.rules"], 0),
    (["clean.rules", "--fail-on", "hint"], 0),
    (["e701-open-relay.rules"], 1),
    (["w601-unreachable-rule.rules"], 0),
    (["w601-unreachable-rule.rules", "--fail-on", "warning"], 1),
    (["h703-public-zone-without-codes.rules", "--fail-on", "warning"], 0),
    (["h703-public-zone-without-codes.rules", "--fail-on", "hint"], 1),
    (["no-such-file.rules"], 2),
    (["--fail-on", "nonsense", "clean.rules"], 2),
    (["lists"], 2),                       # a folder without .rules files
])
def test_exit_codes(args, code):
    proc = _smtpfw(*args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    if code == 2 and "nonsense" not in args:
        assert proc.stderr.startswith("smtpfw lint: ")


def test_json_output_end_to_end():
    proc = _smtpfw("--format", "json", "w602-shadowed-rule.rules")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0
    assert [d["code"] for d in data["diagnostics"]] == ["W602", "W602", "W602"]


def test_folder_lints_included_fragments_as_part_of_their_ruleset(tmp_path, capsys):
    (tmp_path / "main.rules").write_text('include "frag.rules"\non rcpt:\n    reject if rcpt.domain not in local\n')
    (tmp_path / "frag.rules").write_text('list local = ["example.com"]\n')
    code, out = run_cli(["lint", "--color", "never", "."], tmp_path, capsys)
    assert (code, out) == (0, "no problems found\n")
    code, out = run_cli(["lint", "--color", "never", "frag.rules"], tmp_path, capsys)
    assert code == 1 and "E701" in out      # named on its own, it is a ruleset


def test_w602_state_changes_between_rules(tmp_path):
    text = ('plugin p = "smtpfw.plugins_builtin:HeaderScore"\non data:\n'
            '    reject if tagged bad\n    tag bad if message.size > 1M\n    reject if tagged bad\n'
            '    reject if p.points > 5\n    run p\n    reject if p.points > 5\n'
            '    reject if p.points > 9\n' + NO_RELAY)
    assert codes(lint(tmp_path, text)) == [("W602", 9)]


def test_w702_only_at_mail(tmp_path):
    text = ('on rcpt:\n    reject "one recipient per bounce" if sender.null and rcpt.count > 0\n'
            '    reject if rcpt.domain not in localnames\n')
    assert lint(tmp_path, text) == []


def test_realistic_site_ruleset_is_clean(tmp_path):
    text = '''option delay_reject = yes
list local      = ["example.com", "example.net"]
list mynetworks = [127.0.0.0/8, 192.0.2.0/24, "::1"]
list users      = ["alice@example.com", "@example.net"]
list badhelo    = ["localhost", ".dyn.example"]
zone zen = dnsbl "zen.spamhaus.org" codes [127.0.0.2-127.0.0.11]
zone dbl = rhsbl "dbl.spamhaus.org" codes [127.0.1.2-127.0.1.106]
plugin spamscore = "smtpfw.plugins_builtin:HeaderScore"

on connect:
    [trusted] tag trusted if client.ip in mynetworks
    [zen] reject 554 5.7.1 "Blocked: {dnsbl.txt}" if client.ip listed in zen and not tagged trusted
    [zen-down] monitor tempfail 451 "DNSBL down" if client.ip lookup failed in zen
on helo:
    [helo-ip] reject 550 "Use your name" if helo matches "^\\\\[?[0-9.]+\\\\]?$" and not tagged trusted
    [badhelo] reject 550 "Bad HELO" if helo within badhelo and not tagged trusted
on mail:
    [bounce-ok] accept if sender.null
    [dbl] reject 550 "Sender domain listed" if sender.domain listed in dbl
    [unresolvable] reject 550 "No such domain" if sender.resolvable = "no"
    [dns-down] tempfail 451 "Try later" if sender.resolvable = "failed"
    [spoof] reject 550 "Spoofed" if sender.domain within local and not tagged trusted and not auth
on rcpt:
    [relay-hack] reject 550 "Bad address" if rcpt.local matches "[%!@]"
    [trusted-relay] accept if tagged trusted or auth
    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not within local
    [unknown-user] reject 550 5.1.1 "No such user" if rcpt not in users
    [too-many] tempfail 452 "Too many recipients" if rcpt.count >= 50
on data:
    run spamscore
    [spam] reject 550 "Spam ({spamscore.reasons})" if spamscore.points >= 8
    [spam-tag] add_header "X-Spam" "{spamscore.points}" if spamscore.points >= 4
    [huge] reject 552 "Too big" if message.size > 50M
'''
    assert lint(tmp_path, text) == []


MODE_RULES = """on connect:
    [eager] reject 554 5.7.1 "Talk after the greeting" if client.pregreet
on rcpt:
    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
on data:
    [spam] reject 550 5.7.1 "No" if header.subject matches "(?i)viagra" or message.size > 1000000
"""


@pytest.mark.parametrize("modes,expected", [
    ([], []),
    (["smtp"], []),
    (["milter"], [("milter", "client.pregreet")]),
    (["policy"], [("policy", "client.pregreet"), ("policy", "header.subject"), ("policy", "message.size")]),
])
def test_mode_warns_of_fields_it_never_has(tmp_path, capsys, modes, expected):
    (tmp_path / "mode.rules").write_text(MODE_RULES, encoding="utf-8")
    args = [a for m in modes for a in ("--mode", m)]
    rc, out = run_cli(["lint", "--format", "json", *args, "mode.rules"], tmp_path, capsys)
    found = json.loads(out)["diagnostics"]
    assert all(d["code"] == "W604" and d["severity"] == "warning" for d in found), found
    got = sorted((re.search(r"in (\w+) mode", d["message"]).group(1), d["message"].split("`")[1]) for d in found)
    assert got == sorted(expected)
    assert rc == 0
    rc, _ = run_cli(["lint", "--fail-on", "warning", *args, "mode.rules"], tmp_path, capsys)
    assert rc == (1 if expected else 0)


def test_mode_is_checked_by_the_parser(tmp_path):
    (tmp_path / "mode.rules").write_text(MODE_RULES, encoding="utf-8")
    done = _smtpfw("--mode", "sendmail", "mode.rules", cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice" in done.stderr


ZONE_RULES = """zone zen = dnsbl "zen.spamhaus.org" codes [127.0.0.2-127.0.0.11]
on connect:
    [dnsbl] reject 554 5.7.1 "Service unavailable; client [{client.ip}] blocked" if client.ip listed in zen
on rcpt:
    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames
"""


@pytest.mark.parametrize("servers,warned", [(["8.8.8.8"], True), (["127.0.0.1", "2606:4700:4700::1111"], True),
                                            (["127.0.0.53"], False), (None, False)])
def test_a_public_resolver_in_the_config_is_warned_of(tmp_path, capsys, servers, warned):
    (tmp_path / "dnsbl.rules").write_text(ZONE_RULES, encoding="utf-8")
    args = ["lint", "--format", "json", "dnsbl.rules"]
    if servers is not None:
        (tmp_path / "smtpfw.yaml").write_text(json.dumps({"dns": {"nameservers": servers}}), encoding="utf-8")
        args[1:1] = ["--config", "smtpfw.yaml"]
    rc, out = run_cli(args, tmp_path, capsys)
    found = json.loads(out)["diagnostics"]
    assert [(d["code"], d["line"], d["column"]) for d in found] == ([("W705", 1, 6)] if warned else [])
    if warned:
        assert "zen.spamhaus.org" in found[0]["message"] and "dns.nameservers" in found[0]["help"]
    assert rc == 0
