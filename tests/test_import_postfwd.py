"""smtpfw.importers.postfwd_conf: a postfwd ruleset -> an smtpfw ruleset and a
report of every rule, item, action and macro.

Golden fixture, tests/data/postfwd-conf/<name>/:

    postfwd.cf       a real postfwd ruleset; its first line cites the source (repository, path, commit, licence)
    expected.rules   the ruleset
    expected.report  the report
    expected.files   the other files the import gives: name, lines, sha256

Regenerate them after an intended change with
``SMTPFW_UPDATE_GOLDEN=1 python -m pytest tests/test_import_postfwd.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import smtplib
from pathlib import Path

import pytest

from smtpfw.importers import ImportResult, Status, import_postfwd_cf, parse_postfwd
from tests.support.importers import lint_clean, manifest, run_ruleset_tests

DATA = Path(__file__).resolve().parent / "data" / "postfwd-conf"
UPDATE = os.environ.get("SMTPFW_UPDATE_GOLDEN") == "1"
FIXTURES = ["sample"]


def run_import(name: str) -> ImportResult:
    return import_postfwd_cf(str(DATA / name / "postfwd.cf"))








def write_cf(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    path = tmp_path / "postfwd.cf"
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- the real configuration ---------------------------------------------------------

@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_golden(name):
    result = run_import(name)
    base = DATA / name
    got = {"expected.rules": result.ruleset_text, "expected.report": result.report_text(),
           "expected.files": manifest(result.files)}
    if UPDATE:
        for file, text in got.items():
            (base / file).write_text(text, encoding="utf-8")
    for file, text in got.items():
        assert text == (base / file).read_text(encoding="utf-8"), f"{name}/{file} differs from the import"


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_lints_clean(name, tmp_path):
    assert lint_clean(run_import(name), tmp_path) == []


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_cites_its_source(name):
    first = (DATA / name / "postfwd.cf").read_text(encoding="utf-8").splitlines()[0]
    assert re.match(r"# Source: [\w.-]+/[\w.-]+, .+, commit [0-9a-f]{40} .*licence: ", first), first


@pytest.mark.parametrize("name", FIXTURES)
def test_every_rule_item_action_and_macro_is_reported(name):
    """Never a silent drop: each rule, each of its items and actions (with
    the line it is written on) and each macro has a report line."""
    path = DATA / name / "postfwd.cf"
    rules, macros, bad = parse_postfwd(path.read_text(encoding="utf-8"), base=str(path.parent))
    result = run_import(name)
    seen = {(r.parameter, r.original.strip(), r.line) for r in result.report}
    for rule in rules:
        shown = {r.original for r in result.report if r.parameter == rule.rid}
        assert shown, rule.rid
        for item in [*rule.items, *rule.actions, *rule.singles.values()]:
            if item.key == "id":
                continue
            assert (rule.rid, item.text, item.line) in seen, (rule.rid, item.text, item.line)
    for macro in macros:
        assert any(r.parameter == macro for r in result.report), macro
    assert not bad
    counts = result.counts()
    assert counts[Status.TRANSLATED] + counts[Status.APPROXIMATED] > counts[Status.NOT_TRANSLATED]


SAMPLE_TESTS = """\
# a Saturday at noon: the weekday greylisting (GREY_007) and the maintenance window do not apply
dns zen.spamhaus.org 203.0.113.66 = listed 127.0.0.2
dns bl.spamcop.net 203.0.113.66 = listed 127.0.0.2
dns zen.spamhaus.org 192.168.1.5 = listed 127.0.0.2
dns bl.spamcop.net 192.168.1.5 = listed 127.0.0.2
dns zen.spamhaus.org 203.0.113.70 = listed 127.0.0.4
dns bl.spamcop.net 203.0.113.80 = listed 127.0.0.2
dns ptr 203.0.113.80 = found mail.good.example
dns ptr 203.0.113.90 = found mail.good.example
dns ptr 203.0.113.91 = found mail.good.example

# listed in two DNSBLs (RBL_001 counts them): RBL_002 refuses
client 203.0.113.66 ehlo mx.example.org from a@example.org rcpt postmaster@localhost at 2026-01-17T12:00 \\
    -> reject at rcpt by RBL_002 code 554 text "blocked using"
# the same listings from a trusted network (WL_001) or for a trusted SASL user (WL_003): no refusal
client 192.168.1.5 ehlo mx.example.org from a@example.org rcpt postmaster@localhost at 2026-01-17T12:00 -> accept
client 203.0.113.66 auth bob ehlo mx.example.org from a@example.org rcpt postmaster@localhost \\
    at 2026-01-17T12:00 -> accept
# one listing and no name (client_name=unknown, &&DYNAMIC): RBL_003
client 203.0.113.70 ehlo mx.example.org from a@example.org rcpt postmaster@localhost at 2026-01-17T12:00 \\
    -> reject at rcpt by RBL_003 text "looks like dynip"
# one listing, a verified name, HELO not that name: RBL_004
client 203.0.113.80 ehlo other.example from a@example.org rcpt postmaster@localhost at 2026-01-17T12:00 \\
    -> reject at rcpt by RBL_004 text "does not match mail.good.example"
# not listed, a verified name that looks static (&&STATIC: ^mail.): RWL_003 needs a DNSWL hit, GREY_001 exempts it
client 203.0.113.90 ehlo mail.good.example from a@example.org rcpt postmaster@localhost at 2026-01-17T12:00 \\
    -> accept
# a dynamic-looking client (no name) on a weekday: greylisted (GREY_004), then the relay check
client 203.0.113.99 ehlo pc.example from a@example.org rcpt postmaster@localhost at 2026-01-14T12:00 \\
    -> tempfail at rcpt by GREY_004 code 451
client 203.0.113.91 ehlo mail.good.example from a@example.org rcpt x@elsewhere.example at 2026-01-17T12:00 \\
    -> reject at rcpt by no-relay code 554
"""


def test_imported_sample_refuses_what_postfwd_refuses(tmp_path):
    result = run_import("sample")
    result.write(str(tmp_path))
    assert run_ruleset_tests(tmp_path / "imported.rules", SAMPLE_TESTS) == SAMPLE_TESTS.count("->")


# ---- syntax, items and actions ------------------------------------------------------------

def test_syntax_macros_operators_and_reported_leftovers(tmp_path):
    path = write_cf(tmp_path, (
        "# comment\n"
        "&&BAD { sender=~/@spam\\.example$/ ; helo_name==localhost };\n"
        "id=R1; &&BAD ; action=REJECT go away\n"
        "id=R2 ; client_address=10.0.0.0/8, 192.0.2.1 ; action=DUNNO\n"
        "id=R3\n"
        "\trecipient_domain==trap.example\n"
        "\taction=550 5.1.1 no such user $$recipient\n"
        "id=R4; frobnicate=1; action=REJECT\n"
        "id=R5; &&UNDEFINED; action=REJECT\n"
        "id=R6; sender==x@example.org\n"
        "this is not a rule\n"
        "id=R7; sender==y@example.org; action=jump(R9)\n"
        "id=R8; recipient==z@localhost; action=REJECT skipped for y\n"
        "id=R9; size>=1000000; action=DEFER too big now\n"
        "id=R10; sender==a@example.org; action=rate(sender/2/3600/450 4.7.1 slow down)\n"))
    result = import_postfwd_cf(path)
    text = result.ruleset_text
    by = {(r.parameter, r.original): r for r in result.report}
    assert re.search(r'\[R1\] reject 554 5.7.1 "go away" if not sender.null\s+and sender matches "@spam\\.example\$"'
                     r'\s+and helo = "localhost"\n', text)
    assert 'client.ip not in [10.0.0.0/8, 192.0.2.1]' not in text
    assert "not (client.ip in [10.0.0.0/8, 192.0.2.1])" in text
    assert '[R3] reject 550 5.1.1 "no such user {rcpt}" if rcpt.domain = "trap.example"' in text
    assert by[("R4", "frobnicate=1")].status is Status.NOT_UNDERSTOOD
    assert by[("R4", "id=R4")].status is Status.NOT_TRANSLATED
    assert by[("(line)", "id=R5; &&UNDEFINED; action=REJECT")].status is Status.NOT_UNDERSTOOD
    assert "no action" in by[("(line)", "id=R6; sender==x@example.org")].note
    assert by[("(line)", "this is not a rule")].status is Status.NOT_UNDERSTOOD
    # jump(R9): R8 is skipped for what R7 matches
    r8 = text.split("[R8]")[1].split("# id=")[0]
    r9 = text.split("[R9]")[1].split("# id=")[0]
    assert 'not (sender = "y@example.org")' in r8 and "y@example.org" not in r9
    assert r9.startswith(' tempfail 450 4.7.1 "too big now" if mail.size >= 1000000')
    assert "limit rate_r10 = 2 per 1h by sender" in text and "limit.rate_r10.exceeded" in text
    assert lint_clean(result, tmp_path / "out") == []
    run_ruleset_tests(tmp_path / "out" / "imported.rules",
        "client 203.0.113.5 ehlo localhost from joe@spam.example rcpt u@localhost -> reject at rcpt by R1\n"
        "client 10.1.2.3 ehlo localhost from joe@spam.example rcpt u@localhost -> reject at rcpt by R1\n"
        "client 203.0.113.5 ehlo mx.a.example from joe@spam.example rcpt u@localhost -> accept\n"
        "client 10.1.2.3 ehlo mx.a.example from joe@ok.example rcpt u@trap.example -> reject at rcpt by no-relay\n"
        "client 203.0.113.5 ehlo mx.a.example from y@example.org rcpt z@localhost -> accept\n"
        "client 203.0.113.5 ehlo mx.a.example from q@example.org rcpt z@localhost -> reject at rcpt by R8\n"
        "client 203.0.113.5 ehlo mx.a.example from a@example.org rcpt u@localhost rcpt v@localhost "
        "rcpt w@localhost -> accept\n")


def test_client_name_unknown_and_field_comparisons(tmp_path):
    path = write_cf(tmp_path, (
        "id=N1; client_name==unknown; action=REJECT no name\n"
        "id=N2; client_name==!!($$(helo_name)); sender_domain==example.org; action=REJECT helo mismatch\n"
        "id=N3; sender==<>; recipient_localpart=~^trap; action=REJECT no bounces to traps\n"))
    result = import_postfwd_cf(path)
    assert lint_clean(result, tmp_path / "out") == []
    run_ruleset_tests(tmp_path / "out" / "imported.rules",
        "dns ptr 203.0.113.7 = found mx.example.org\n"
        "dns ptr 203.0.113.8 = found mx.example.org unconfirmed\n"
        "client 203.0.113.9 ehlo a.example from x@example.net rcpt u@localhost -> reject at rcpt by N1\n"
        "client 203.0.113.8 ehlo mx.example.org from x@example.net rcpt u@localhost -> reject at rcpt by N1\n"
        "client 203.0.113.7 ehlo mx.example.org from x@example.org rcpt u@localhost -> accept\n"
        "client 203.0.113.7 ehlo other.example from x@example.org rcpt u@localhost -> reject at rcpt by N2\n"
        "client 203.0.113.7 ehlo mx.example.org from <> rcpt trap1@localhost -> reject at rcpt by N3\n"
        "client 203.0.113.7 ehlo mx.example.org from x@example.net rcpt trap1@localhost -> accept\n")


def test_untranslatable_items_and_actions_are_explained(tmp_path):
    path = write_cf(tmp_path, (
        "id=T1; ccert_fingerprint==AA:BB; action=OK\n"
        "id=T2; sender=~(?<=x)y; action=REJECT\n"
        "id=T3; sender==a@b.example; action=score(2.5)\n"
        "id=T4; sender==c@b.example; action=HOLD\n"
        "id=T5; sender==d@b.example; action=check_postfix_class\n"
        "id=T6; sender==e@b.example; action=ask(127.0.0.1:10031)\n"))
    result = import_postfwd_cf(path)
    by = {(r.parameter, r.original): r for r in result.report}
    assert "certificate" in by[("T1", "ccert_fingerprint==AA:BB")].note
    assert "later rules apply to more requests" in by[("T1", "id=T1")].note
    assert "E404" in by[("T2", "sender=~(?<=x)y")].note
    assert by[("T3", "action=score(2.5)")].status is Status.NOT_TRANSLATED
    assert by[("T4", "action=HOLD")].status is Status.NOT_TRANSLATED
    assert "restriction class" in by[("T5", "action=check_postfix_class")].note
    assert "policy server" in by[("T6", "action=ask(127.0.0.1:10031)")].note
    assert lint_clean(result, tmp_path / "out") == []


def test_file_lists_are_read_and_a_missing_one_is_reported(tmp_path):
    path = write_cf(tmp_path, (
        "id=F1; client_address=file:/etc/postfwd/nets ; action=REJECT listed net\n"
        "id=F2; sender==file:missing_senders; action=REJECT listed sender\n"),
        {"nets": "# networks\n198.51.100.0/24\n203.0.113.7\n"})
    result = import_postfwd_cf(path)
    assert "client.ip in [198.51.100.0/24, 203.0.113.7]" in result.ruleset_text
    notes = " ".join(r.note for r in result.report)
    assert "missing_senders was not found" in notes
    assert lint_clean(result, tmp_path / "out") == []


def test_a_list_that_names_itself_is_reported_not_followed(tmp_path):
    path = write_cf(tmp_path, "id=L1; client_address==file:loop.txt; action=REJECT listed\n",
                    {"loop.txt": "192.0.2.1\nfile:loop.txt\n"})
    result = import_postfwd_cf(path)
    assert "client.ip" in result.ruleset_text and "192.0.2.1" in result.ruleset_text
    assert any("a loop" in r.note for r in result.report)


# ---- the command, and a real server ---------------------------------------------------------

def test_the_command_writes_a_ruleset_that_lints_clean(tmp_path):
    from tests.support.cli import run
    out = tmp_path / "out"
    proc = run("import", "postfwd-config", DATA / "sample" / "postfwd.cf", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "summary:" in proc.stdout and (out / "imported.rules").exists()
    assert run("lint", out / "imported.rules").returncode == 0
    again = run("import", "postfwd-config", DATA / "sample" / "postfwd.cf", "-o", out)
    assert again.returncode == 2 and "--force" in again.stderr
    assert run("import", "postfwd-config", DATA / "sample" / "postfwd.cf", "-o", out, "--force").returncode == 0


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_a_file_that_cannot_be_read_is_a_clear_error(tmp_path, where):
    from tests.support.cli import run
    target = tmp_path / "nope" / "postfwd.cf" if where == "missing" else tmp_path
    proc = run("import", "postfwd-config", target, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(target) in proc.stderr


def test_a_listed_client_is_refused_by_a_real_server(tmp_path, shared_dns):
    """rbl= on the loopback DNS server (bl.test lists 127.0.0.2), the imported
    ruleset on a real server: the listed client's recipient is refused."""
    from tests.support.server import running_server
    path = write_cf(tmp_path, "id=BL; rbl=bl.test; action=REJECT listed on $$client_address\n")
    result = import_postfwd_cf(path)
    result.write(str(tmp_path / "out"))
    with running_server(tmp_path / "out" / "imported.rules", dns=shared_dns) as srv:
        for source, expected in (("127.0.0.2", 554), ("127.0.0.3", 250)):
            with smtplib.SMTP(*srv.address, source_address=(source, 0), timeout=10) as s:
                s.ehlo("mx.example.org")
                s.mail("a@example.org")
                code, msg = s.rcpt("postmaster@localhost")
                assert code == expected, (source, code, msg)
                if code == 554:
                    assert b"listed on 127.0.0.2" in msg


# ---- the imported ruleset against postfwd itself ---------------------------------------------

ROUND_TRIP_CF = r"""# rules whose every item the importer translates; postfwd2 (Debian) decides the same requests
id=R1; client_address==192.0.2.0/24; action=REJECT blocked network
id=R2; sender_domain==spam.example; action=550 5.7.1 no spam
id=R3; helo_name=~^\[?[0-9.]+\]?$; action=REJECT bare IP helo
id=R4; recipient==trap@example.net; action=DEFER try later
id=OK1; sender==vip@partner.example; action=DUNNO
id=R6; sasl_username==; recipient_domain==submission.example; action=REJECT authenticate first
id=R7; sasl_username!=alice; recipient_domain==alice.example; action=REJECT alice only
id=R8; sender_domain==; recipient==postmaster@example.net; action=REJECT no bounces to postmaster
id=R9; client_address!=198.51.100.0/24; recipient_domain==internal.example; action=REJECT internal only
id=R5; recipient_domain!=example.net; recipient_domain!=elsewhere.example; sender==or@test.example; action=REJECT either
"""
ROUND_TRIP_REQUESTS = [
    {},
    {"client_address": "192.0.2.9"},
    {"sender": "x@spam.example"},
    {"helo_name": "[203.0.113.5]"},
    {"recipient": "trap@example.net"},
    {"sender": "vip@partner.example", "recipient": "bob@elsewhere.example"},
    {"recipient": "x@submission.example"},
    {"recipient": "x@submission.example", "sasl_username": "bob"},
    {"recipient": "x@alice.example"},
    {"recipient": "x@alice.example", "sasl_username": "alice"},
    {"recipient": "x@alice.example", "sasl_username": "bob"},
    {"sender": "", "recipient": "postmaster@example.net"},
    {"sender": "a@b.example", "recipient": "postmaster@example.net"},
    {"recipient": "x@internal.example"},
    {"recipient": "x@internal.example", "client_address": "198.51.100.20"},
    {"recipient": "bob@elsewhere.example"},
    {"sender": "or@test.example"},
    {"sender": "or@test.example", "recipient": "bob@elsewhere.example"},
]


def ask_once(address, attrs: dict) -> str:
    """One request on a connection of its own: one SMTP session each."""
    from tests.support.policy import PolicyClient
    client = PolicyClient(address)
    try:
        return client.ask(**attrs)
    finally:
        client.close()


def _outcome(action: str) -> str:
    """A policy answer as what the client hears: "pass", or the reply code."""
    word = action.split(None, 1)[0].upper() if action.strip() else "DUNNO"
    if word in ("DUNNO", "OK", "PREPEND", "WARN") or word.isdigit() and word.startswith("2"):
        return "pass"
    return {"REJECT": "554", "DEFER": "450", "DEFER_IF_PERMIT": "450"}.get(word, word)


def test_the_imported_ruleset_answers_as_postfwd_does(tmp_path):
    """The same policy requests to postfwd2 with a postfwd.cf and to smtpfw
    (as a policy service) with its import: the same refusals, with the same
    codes, for every request."""
    import tempfile

    from smtpfw.config import Listener
    from tests.support.postfix import free_port
    from tests.support.postfwd import Postfwd, postfwd_available
    from tests.support.server import running_server

    why = postfwd_available()
    if why:
        pytest.fail(why)
    folder = Path(tempfile.mkdtemp(prefix="smtpfw-postfwd-"))     # postfwd's user must read its config
    folder.chmod(0o755)
    cf = folder / "postfwd.cf"
    cf.write_text(ROUND_TRIP_CF)
    cf.chmod(0o644)
    result = import_postfwd_cf(str(cf))
    result.write(str(tmp_path / "out"))
    rules = tmp_path / "out" / "imported.rules"
    # postfwd leaves relaying to Postfix: the import's relay check gets every domain asked here
    rules.write_text('list localnames = ["example.net", "submission.example", "alice.example", '
                     '"internal.example", "elsewhere.example"]\n' + rules.read_text())
    base = {"protocol_state": "RCPT", "protocol_name": "ESMTP", "client_address": "203.0.113.7",
            "client_name": "mx.good.example", "reverse_client_name": "mx.good.example",
            "helo_name": "mx.good.example", "sender": "alice@good.example", "recipient": "bob@example.net",
            "sasl_username": "", "size": "100", "queue_id": ""}
    pw = Postfwd(folder, cf, free_port())
    try:
        pw.start()
        theirs = [_outcome(ask_once(("127.0.0.1", pw.port), {**base, **r, "instance": f"p{i}"}))
                  for i, r in enumerate(ROUND_TRIP_REQUESTS)]
    finally:
        pw.stop()
    listen = (Listener("127.0.0.1", 0, "policy", kind="policy"),)
    with running_server(str(rules), listen=listen) as srv:
        ours = [_outcome(ask_once(srv.address, {**base, **r, "instance": f"s{i}"}))
                for i, r in enumerate(ROUND_TRIP_REQUESTS)]
    differ = [(r, t, o) for r, t, o in zip(ROUND_TRIP_REQUESTS, theirs, ours) if t != o]
    assert not differ, (differ, theirs)
    assert theirs.count("pass") >= 3 and len(set(theirs)) >= 3          # the requests do tell rules apart
