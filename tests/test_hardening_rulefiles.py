"""What people editing rule and list files by hand meet (issue 12, items
14, 16, 19 and 20): paths and sizes of list files, byte-order marks and
invisible characters, the slips of non-programmers, and globs in lists.

Everything goes through the real `smtpfw lint` (smtpfw.cli.main) or a real
server (running_server + smtplib) on real files in tmp_path.
"""

from __future__ import annotations

import json
import os
import smtplib
from pathlib import Path

import pytest

from smtpfw.checks.lists import MAX_LIST_BYTES
from smtpfw.cli import main
from tests.support.server import running_server

NO_RELAY = '\non rcpt:\n    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n'


def lint(tmp_path: Path, rules: str, capsys, files: dict | None = None, name: str = "t.rules",
         fmt: str = "text") -> tuple[int, str]:
    """Write the files, run `smtpfw lint` on the rule file, return (exit code, output)."""
    for fname, content in (files or {}).items():
        p = tmp_path / fname
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    (tmp_path / name).write_text(rules, encoding="utf-8")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(["lint", "--color", "never", "--format", fmt, name])
    finally:
        os.chdir(old)
    return code, capsys.readouterr().out


def diagnostics(tmp_path, rules, capsys, files=None) -> list[dict]:
    code, out = lint(tmp_path, rules, capsys, files, fmt="json")
    return json.loads(out)["diagnostics"]


def refusal(srv, sender: str, rcpt: str) -> str:
    """The refusal ("CODE TEXT") a MAIL FROM + RCPT TO meets, "" when both are accepted."""
    with smtplib.SMTP(*srv.address, timeout=10) as s:
        s.ehlo("client.example")
        code, text = s.mail(sender)
        if code == 250:
            code, text = s.rcpt(rcpt)
        return "" if code == 250 else f"{code} {text.decode()}"


# ---- 14: include and list paths, size of list files --------------------------------

def test_list_file_that_is_a_device_is_refused_without_reading_it(tmp_path, capsys):
    code, out = lint(tmp_path, 'list bad = file "/dev/zero"\non mail:\n    reject if sender.domain in bad\n'
                     + NO_RELAY, capsys)
    assert code == 1
    assert "t.rules:1:1: error[E301]" in out and "/dev/zero is not a regular file" in out
    assert "Traceback" not in out and out.count("error[") == 1


def test_list_file_larger_than_the_cap_is_refused(tmp_path, capsys):
    big = tmp_path / "big"
    with open(big, "wb") as fh:          # sparse: costs no disk
        fh.truncate(MAX_LIST_BYTES + 1)
    code, out = lint(tmp_path, 'list bad = file "big"\non mail:\n    reject if sender.domain in bad\n'
                     + NO_RELAY, capsys)
    assert code == 1
    assert "error[E301]" in out and f"larger than {MAX_LIST_BYTES // 2**20} MiB" in out
    assert out.count("error[") == 1


def test_a_file_that_is_not_a_list_is_not_echoed(tmp_path, capsys):
    secret = ("root:$6$SECRETHASH$abc:19000:0:99999:7:::\n"
              "daemon:*:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "shadow").write_text(secret)
    shadow = tmp_path / "etc" / "shadow"
    for path in (str(shadow), "etc/shadow", "../" + tmp_path.name + "/etc/shadow"):
        code, out = lint(tmp_path, f'list bad = file "{path}"\non mail:\n    reject if sender in bad\n'
                         + NO_RELAY, capsys)
        assert code == 1
        assert "SECRETHASH" not in out and "daemon" not in out, out
        assert out.count("error[E302]") == 1 and "does not look like a list of addresses" in out


def test_a_list_with_a_few_bad_entries_still_shows_them(tmp_path, capsys):
    code, out = lint(tmp_path, 'list bad = file "bad"\non mail:\n    reject if sender in bad\n' + NO_RELAY,
                     capsys, {"bad": "a@b.example\nc@d.example\njoe\n"})
    assert code == 1 and "bad:3:1: error[E302] `joe` is not an address" in out


def test_an_include_must_be_a_rules_file(tmp_path, capsys):
    code, out = lint(tmp_path, 'include "secret.txt"\n' + NO_RELAY, capsys,
                     {"secret.txt": "password = hunter2\n"})
    assert code == 1
    assert "hunter2" not in out
    assert "t.rules:1:9: error[E003] an include names a rule file ending in .rules" in out


def test_absolute_and_parent_paths_are_allowed(tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "local").write_text("example.com\n")
    (tmp_path / "common.rules").write_text('list other = ["other.example"]\n')
    sub = tmp_path / "etc"
    sub.mkdir()
    code, out = lint(sub, f'include "../common.rules"\nlist local = file "{lists / "local"}"\n'
                     'on rcpt:\n    reject if rcpt.domain not in local and rcpt.domain not in other\n',
                     capsys)
    assert (code, out) == (0, "no problems found\n")


# ---- 16: byte-order marks and invisible characters -------------------------------

def test_bom_in_a_list_file_does_not_drop_the_first_entry(tmp_path, capsys):
    local = tmp_path / "local"
    local.write_bytes("\ufeffexample.com\nexample.org\n".encode("utf-8"))
    rules = tmp_path / "site.rules"
    rules.write_text('list local = file "local"\non rcpt:\n'
                     '    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in local\n')
    with running_server(rules) as srv:
        assert refusal(srv, "a@client.example", "postmaster@example.com") == ""
        assert refusal(srv, "a@client.example", "someone@elsewhere.example") == "554 5.7.1 Relaying denied"
    code, out = lint(tmp_path, rules.read_text(), capsys, name="site.rules")
    assert (code, out) == (0, "no problems found\n")


def test_bom_in_a_rule_file_is_ignored(tmp_path, capsys):
    (tmp_path / "site.rules").write_bytes(("\ufeff" + NO_RELAY.lstrip()).encode("utf-8"))
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(["lint", "--color", "never", "site.rules"])
    finally:
        os.chdir(old)
    assert (code, capsys.readouterr().out) == (0, "no problems found\n")


def test_invisible_characters_are_named_with_line_and_column(tmp_path, capsys):
    rules = ('list local = file "local"\non helo:\n    reject "No\u00a0way" if helo = "mx\u200b.example"\n'
             'on rcpt:\n    [no-relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in local\n')
    code, out = lint(tmp_path, rules, capsys, {"local": "# ours\nexample.com\u200b\nexample.org\u00ad\n"})
    assert code == 0, out
    assert "t.rules:3:15: warning[W004] invisible character U+00A0 NO-BREAK SPACE" in out
    assert "t.rules:3:34: warning[W004] invisible character U+200B ZERO WIDTH SPACE" in out
    assert "local:2:12: warning[W004] invisible character U+200B ZERO WIDTH SPACE" in out
    assert "local:3:12: warning[W004] invisible character U+00AD SOFT HYPHEN" in out
    assert "3 |     reject \"No\ufffdway\"" in out          # shown, not invisible
    assert out.endswith("found 4 warnings\n")


def test_invisible_character_in_a_malformed_entry_is_named_once(tmp_path, capsys):
    code, out = lint(tmp_path, 'list local = file "local"\non rcpt:\n    reject if rcpt.domain not in local\n',
                     capsys, {"local": "example.com\nexample.net\nexample.\u202eorg\n"})
    assert code == 1
    assert "local:3:1: error[E302] `example.\ufffdorg` is not a domain" in out
    assert "it contains an invisible character, U+202E RIGHT-TO-LEFT OVERRIDE (column 9)" in out
    assert "\u202e" not in out and out.endswith("found 1 error\n")


def test_invisible_character_outside_text_is_one_diagnostic(tmp_path, capsys):
    code, out = lint(tmp_path, "on helo:\n    reject if\u00a0esmtp\n" + NO_RELAY, capsys)
    assert code == 1
    assert "t.rules:2:14: error[E002] invisible character U+00A0 NO-BREAK SPACE" in out
    assert out.endswith("found 1 error\n")


# ---- 19: the commonest slips ---------------------------------------------------------

SLIPS = [
    # (rule lines, line, column, words in the message, words in the help)
    ("on helo:\n    reject 'Bad HELO' if helo = \"x\"", 2, 12, "single quotes", '"Bad HELO"'),
    ("on helo:\n    reject \u201cBad HELO\u201d if helo = \"x\"", 2, 12, "typographic quote", '"Bad HELO"'),
    ("on helo:\n    reject if helo = \"x\" && esmtp", 2, 26, "`&&`", "`and`"),
    ("on helo:\n    reject if helo = \"x\" || esmtp", 2, 26, "`||`", "`or`"),
    ("on data:\n    reject if message.size > 10X", 2, 30, "`10X` is not a number", "10M"),
    ("on data:\n    reject if message.size > 10MB", 2, 30, "`10MB` is not a number", "`10M`"),
    ("on mail\n    reject if sender = \"x@y.example\"", 1, 8, "`on mail` needs a colon", "`on mail:`"),
    ('on helo:\n    reject "Bad HELO if helo = "x"', 2, 12, "no closing quote", '"Bad HELO" if'),
    ('on helo:\n    reject "Bad {helo" if helo = "x"', 2, 17, "`{helo` is not closed", "{helo}"),
    ("option mode = monitor", 1, 15, "text values are written in double quotes", '"monitor"'),
    ("on helo:\n    reject if helo = mx.example.org", 2, 22, "text values are written in double quotes",
     '"mx.example.org"'),
]


@pytest.mark.parametrize("text,line,column,message,help_", SLIPS, ids=[s[3] for s in SLIPS])
def test_slip_gives_one_diagnostic_with_the_fix(tmp_path, capsys, text, line, column, message, help_):
    diags = diagnostics(tmp_path, text + "\n" + NO_RELAY, capsys)
    assert len(diags) == 1, diags
    [d] = diags
    assert (d["line"], d["column"]) == (line, column), d
    assert message in d["message"], d
    assert help_ in (d["help"] or ""), d
    assert len(d["message"]) < 160, d


def test_escaped_braces_and_closed_placeholders_are_fine(tmp_path, capsys):
    code, out = lint(tmp_path, 'on helo:\n    reject "{{literal}} and {helo}" if helo = "x"\n' + NO_RELAY, capsys)
    assert (code, out) == (0, "no problems found\n")


def test_missing_include_is_one_diagnostic_with_the_nearest_file(tmp_path, capsys):
    files = {"common.rules": 'list local = ["a.example"]\nlist badmailfrom = ["x@y.example"]\n'
                             'zone bl = dnsbl "bl.example"\n'}
    rules = ('include "comon.rules"\non connect:\n    reject if client.ip listed in bl\n'
             'on rcpt:\n    reject if rcpt.domain not in local\n    reject if sender in badmailfrom\n')
    diags = diagnostics(tmp_path, rules, capsys, files)
    assert len(diags) == 1, diags
    assert diags[0]["code"] == "E003" and "did you mean `common.rules`?" in diags[0]["help"]


# ---- 20: globs in list files ------------------------------------------------------------

def test_star_at_domain_in_an_address_list_means_anyone_there(tmp_path, capsys):
    (tmp_path / "badmailfrom").write_text("*@evil.example\nspammer@other.example\n")
    rules = tmp_path / "site.rules"
    rules.write_text('list badmailfrom = file "badmailfrom"\non mail:\n'
                     '    [badmailfrom] reject 550 5.7.1 "Go away" if sender in badmailfrom\n' + NO_RELAY)
    with running_server(rules) as srv:
        assert refusal(srv, "anyone@evil.example", "postmaster@localhost") == "550 5.7.1 Go away"
        assert refusal(srv, "spammer@other.example", "postmaster@localhost") == "550 5.7.1 Go away"
        assert refusal(srv, "friend@other.example", "postmaster@localhost") == ""
        assert refusal(srv, "a@sub.evil.example", "postmaster@localhost") == ""
    code, out = lint(tmp_path, rules.read_text(), capsys, name="site.rules")
    assert (code, out) == (0, "no problems found\n")


def test_star_dot_domain_in_a_domain_list_means_its_subdomains(tmp_path):
    (tmp_path / "badhosts").write_text("*.acme.example\n")
    rules = tmp_path / "site.rules"
    rules.write_text('list badhosts = file "badhosts"\non mail:\n'
                     '    reject 550 5.7.1 "Go away" if sender.domain in badhosts\n' + NO_RELAY)
    with running_server(rules) as srv:
        assert refusal(srv, "a@mail.acme.example", "postmaster@localhost") == "550 5.7.1 Go away"
        assert refusal(srv, "a@acme.example", "postmaster@localhost") == ""


@pytest.mark.parametrize("field,entry,fix", [
    ("sender.domain", "*acme.example", "`acme.example` for the domain itself and `.acme.example`"),
    ("sender.domain", "mail*.acme.example", "list each name"),
    ("sender", "joe*@evil.example", "`@evil.example`"),
    ("sender", "*@*.evil.example", "sender.domain"),
    ("client.ip", "10.*", "`10.0.0.0/8`"),
    ("client.ip", "192.168.1.*", "`192.168.1.0/24`"),
])
def test_other_globs_in_lists_are_refused_with_the_way_to_write_them(tmp_path, capsys, field, entry, fix):
    hook = "connect" if field == "client.ip" else "mail"
    code, out = lint(tmp_path, f'list bad = file "bad"\non {hook}:\n    reject if {field} in bad\n' + NO_RELAY,
                     capsys, {"bad": f"good.example\n{entry}\nok.example\n" if field == "sender.domain"
                              else f"{entry}\n" + ("a@b.example\nc@d.example\n" if field == "sender"
                                                   else "192.0.2.1\n192.0.2.2\n")})
    assert code == 1
    assert "error[E302]" in out and f"`{entry}` is a pattern" in out, out
    assert fix in out, out
    assert out.count("error[") == 1


# ---- follow-ups: what only the disconnect and FIFO cases show ------------------

def test_an_include_that_is_a_fifo_is_refused_without_blocking(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.rules")           # open() on it would wait for a writer forever
    code, out = lint(tmp_path, 'include "pipe.rules"\n' + NO_RELAY, capsys)
    assert code == 1 and "error[E003]" in out and "not a regular file" in out


def test_unknown_hook_help_names_only_hooks_that_run(tmp_path, capsys):
    (d,) = [d for d in diagnostics(tmp_path, "on mial:\n    accept\n" + NO_RELAY, capsys) if d["code"] == "E101"]
    assert "mail" in d["help"] and "disconnect" not in d["help"]


def test_ruleset_tests_cannot_expect_a_stage_that_never_runs(tmp_path):
    from tests.support.cli import run
    (tmp_path / "t.rules").write_text(NO_RELAY)
    (tmp_path / "t.tests").write_text("client 192.0.2.1 ehlo a.example from a@b.example rcpt x@far.example"
                                      " -> reject at disconnect\n")
    proc = run("test", str(tmp_path / "t.rules"))
    assert proc.returncode != 0 and "unknown stage `disconnect`" in proc.stdout + proc.stderr
