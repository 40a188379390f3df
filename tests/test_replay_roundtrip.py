"""Round trip: sessions recorded by the real server under ruleset A replay
under A to exactly the recorded verdicts; under ruleset B (A plus one rule)
dry-run reports exactly the sessions B treats differently.

Real parts only: the server (tests.support.server), recording on, a real
DNS server on loopback serving shared/zones (clients 127.0.0.2 and
127.0.0.5 are listed in bl.test), smtplib clients, and the CLI run as a
subprocess.
"""

from __future__ import annotations

import json
import smtplib

import pytest

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import read_records
from smtpfw.replay.session import recorded_verdict, replay_record
from tests.support.cli import run as _smtpfw
from tests.support.server import REPO, running_server

LISTS = REPO / "config" / "lists"

RULES_A = f"""
list badhelo     = file "{LISTS / 'badhelo'}"
list badmailfrom = file "{LISTS / 'badmailfrom'}"
list badrcptto   = file "{LISTS / 'badrcptto'}"
list rcpthosts   = file "{LISTS / 'rcpthosts'}"
zone bl  = dnsbl "bl.test"
zone dbl = rhsbl "dbl.test"

on connect:
    [dnsbl] reject 554 5.7.1 "blocked using bl.test: {{dnsbl.txt}}" if client.ip listed in bl
on helo:
    [badhelo] reject 550 5.7.1 "bad HELO" if helo in badhelo
on mail:
    [badmailfrom] reject 550 5.7.1 "bad sender" if sender in badmailfrom
    [rhsbl] reject 550 5.7.1 "sender domain listed: {{rhsbl.txt}}" if sender.domain listed in dbl
on rcpt:
    [bye] disconnect 421 4.7.0 "go away" if rcpt = "bye@example.net"
    [greylist] tempfail 451 4.7.1 "try later" if rcpt = "grey@example.net"
    [badrcptto] reject 550 5.7.1 "bad recipient" if rcpt in badrcptto
    [rcpthosts] reject 554 5.7.1 "Relay access denied" if rcpt.domain not in rcpthosts
on data:
    [spam-subject] reject 550 5.7.1 "spam" if header.subject matches "(?i)viagra"
"""
# B = A plus one rule: mail from example.org is refused at MAIL.
RULES_B = RULES_A + """
on mail:
    [no-example-org] reject 550 5.7.1 "no mail from example.org" if sender.domain = "example.org"
"""

MSG = b"Subject: %s\r\nFrom: someone\r\n\r\nbody\r\n"

# (key, client ip, helo, transactions [(sender, rcpts, subject or None)],
#  A's verdict (kind, stage, rule), changed under B?)
SESSIONS = [
    ("clean", "127.0.0.1", "s-clean.example", [("alice@example.org", ["bob@example.net"], "hi")],
     ("accepted", None, None), True),
    ("clean-other", "127.0.0.1", "s-other.example", [("carol@example.com", ["bob@example.net"], "hi")],
     ("accepted", None, None), False),
    ("null", "127.0.0.1", "s-null.example", [("", ["postmaster@example.net"], "bounce")],
     ("accepted", None, None), False),
    ("listed", "127.0.0.2", None, [], ("rejected", "connect", "dnsbl"), False),
    ("listed-4", "127.0.0.5", None, [], ("rejected", "connect", "dnsbl"), False),
    ("badhelo", "127.0.0.1", "bad.helo.example", [], ("rejected", "helo", "badhelo"), False),
    ("badmailfrom", "127.0.0.1", "s-badmf.example", [("joe@evil.example", ["bob@example.net"], None)],
     ("rejected", "mail", "badmailfrom"), False),
    ("rhsbl", "127.0.0.1", "s-rhsbl.example", [("x@spam.example", ["bob@example.net"], None)],
     ("rejected", "mail", "rhsbl"), False),
    ("relay-partly", "127.0.0.1", "s-relay1.example",
     [("alice@example.org", ["x@elsewhere.example", "bob@example.net"], "hi")], ("accepted", None, None), True),
    ("relay-all", "127.0.0.1", "s-relay2.example", [("carol@example.com", ["x@elsewhere.example"], None)],
     ("rejected", "rcpt", "rcpthosts"), False),
    ("badrcpt-org", "127.0.0.1", "s-badrcpt.example", [("alice@example.org", ["trap@example.net"], None)],
     ("rejected", "rcpt", "badrcptto"), True),
    ("greylist", "127.0.0.1", "s-grey.example", [("carol@example.com", ["grey@example.net"], None)],
     ("tempfailed", "rcpt", "greylist"), False),
    ("spam", "127.0.0.1", "s-spam.example", [("carol@example.com", ["bob@example.net"], "cheap VIAGRA")],
     ("rejected", "data", "spam-subject"), False),
    ("two-txns", "127.0.0.1", "s-two.example",
     [("carol@example.com", ["bob@example.net"], "one"), ("alice@example.org", ["bob@example.net"], "two")],
     ("accepted", None, None), True),
    ("bye", "127.0.0.1", "s-bye.example", [("carol@example.com", ["bye@example.net", "bob@example.net"], None)],
     ("disconnected", "rcpt", "bye"), False),
    ("helo-only", "127.0.0.1", "s-quiet.example", [], ("no-mail", None, None), False),
]


def _session(address, ip, helo, txns):
    try:
        s = smtplib.SMTP(*address, source_address=(ip, 0), timeout=10)
    except smtplib.SMTPConnectError:
        return
    try:
        if s.ehlo(helo)[0] != 250:
            return
        for sender, rcpts, subject in txns:
            if s.mail(sender)[0] != 250:
                s.rset()
                continue
            codes = []
            for r in rcpts:
                codes.append(s.rcpt(r)[0])
                if codes[-1] == 421:
                    return
            if 250 in codes and subject is not None:
                s.data(MSG % subject.encode())
            else:
                s.rset()
    finally:
        try:
            s.quit()
        except smtplib.SMTPServerDisconnected:
            pass


@pytest.fixture(scope="module")
def recorded(shared_dns, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roundtrip")
    (tmp / "a.rules").write_text(RULES_A)
    (tmp / "b.rules").write_text(RULES_B)
    sessions = tmp / "sessions"
    with running_server(tmp / "a.rules", dns=shared_dns, recording_enabled=True,
                        recording_path=str(sessions), maildir=str(tmp / "maildir")) as srv:
        for _key, ip, helo, txns, _a, _b in SESSIONS:
            _session(srv.address, ip, helo, txns)
    records = [r for f in sorted(sessions.iterdir()) for r in read_records(str(f))]
    by_key = {}
    for rec in records:
        helo = next((e["arg"] for e in rec["events"] if e["cmd"] in ("helo", "ehlo")), None)
        key = next(k for k, ip, h, *_ in SESSIONS if ip == rec["client"]["ip"] and h == helo)
        by_key[key] = rec
    assert sorted(by_key) == sorted(s[0] for s in SESSIONS), "one record per session"
    return tmp, sessions, by_key


def test_recorded_verdicts_are_the_expected_ones(recorded):
    _tmp, _sessions, by_key = recorded
    for key, _ip, _helo, _txns, (kind, stage, rule), _b in SESSIONS:
        v = recorded_verdict(by_key[key])
        assert (v.kind, v.stage, v.rule) == (kind, stage, rule), key


def test_replay_under_a_reproduces_every_recorded_decision(recorded):
    tmp, _sessions, by_key = recorded
    ruleset, diags = compile_ruleset(tmp / "a.rules")
    assert ruleset is not None, diags
    for key, rec in by_key.items():
        result = replay_record(ruleset, rec)
        assert result.verdict == recorded_verdict(rec), key
        assert result.connect.reply == rec["connect"]["reply"] or not result.connect.refused
        for event, replayed in zip(rec["events"], result.events):
            assert replayed.reached, (key, event)
            if "decision" in event:
                want = event.get("queue") if event["cmd"] == "data" and "queue" in event else event["decision"]
                assert replayed.decision.to_json() == want, (key, event)
            if replayed.refused:
                assert replayed.reply == event["reply"], (key, event)


def test_dry_run_under_a_reports_no_change(recorded):
    tmp, sessions, _by_key = recorded
    run = _smtpfw("dry-run", "--rules", tmp / "a.rules", "--format", "json", "--fail-on-change", sessions)
    assert run.returncode == 0, run.stderr + run.stdout
    report = json.loads(run.stdout)
    assert report["sessions"] == len(SESSIONS)
    assert report["changes"]["sessions"] == 0
    assert report["verdicts"] == report["baseline_verdicts"]
    assert report["verdicts"]["accepted"] == 5
    assert report["verdicts"]["tempfailed"] == 1
    assert report["verdicts"]["disconnected"] == 1
    assert report["rule_hits"]["dnsbl"] == 2
    assert report["never_fired"] == []


def _changed_ids(report: dict) -> dict[str, set]:
    out = {}
    for cat in ("newly_rejected", "newly_accepted", "changed"):
        ids = set()
        for g in report["changes"][cat]["groups"]:
            assert len(g["examples"]) == g["count"]          # --examples is large enough to list all
            ids |= {ex["id"] for ex in g["examples"]}
        out[cat] = ids
    return out


@pytest.mark.parametrize("baseline", [None, "a.rules"], ids=["vs-recorded", "vs-baseline-a"])
def test_dry_run_under_b_reports_exactly_the_sessions_b_changes(recorded, baseline):
    tmp, sessions, by_key = recorded
    args = ["dry-run", "--rules", tmp / "b.rules", "--format", "json", "--examples", "100"]
    if baseline:
        args += ["--baseline", tmp / baseline]
    run = _smtpfw(*args, "--fail-on-change", sessions)
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    ids = _changed_ids(report)
    expected = {by_key[s[0]]["id"] for s in SESSIONS if s[5]}
    assert ids["newly_rejected"] | ids["newly_accepted"] | ids["changed"] == expected
    assert report["changes"]["sessions"] == len(expected)
    # accepted under A, refused at MAIL under B: newly rejected by the new rule
    assert ids["newly_rejected"] == {by_key[k]["id"] for k in ("clean", "relay-partly")}
    group = next(g for g in report["changes"]["newly_rejected"]["groups"])
    assert group["rule"] == "no-example-org" and group["count"] == 2
    # refused either way, now at MAIL instead of RCPT; and a later transaction changed
    assert ids["changed"] == {by_key[k]["id"] for k in ("badrcpt-org", "two-txns")}
    assert ids["newly_accepted"] == set()


def test_dry_run_a_against_b_reports_the_same_sessions_newly_accepted(recorded):
    tmp, sessions, by_key = recorded
    run = _smtpfw("dry-run", "--rules", tmp / "a.rules", "--baseline", tmp / "b.rules", "--format", "json",
                  "--examples", "100", sessions)
    assert run.returncode == 0, run.stderr
    ids = _changed_ids(json.loads(run.stdout))
    assert ids["newly_accepted"] == {by_key[k]["id"] for k in ("clean", "relay-partly")}
    assert ids["newly_rejected"] == set()


def test_dry_run_text_output(recorded):
    tmp, sessions, by_key = recorded
    run = _smtpfw("dry-run", "--rules", tmp / "b.rules", sessions)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "over 16 sessions" in out
    assert "compared with the verdicts recorded in the sessions" in out
    assert "newly rejected: 2 sessions" in out
    assert "no-example-org" in out
    assert by_key["clean"]["id"] in out
    assert "never fired: badrcptto" in out      # its only session is now refused at MAIL
    assert run.stderr == ""          # no progress bar when stderr is not a terminal


def test_trace_of_a_recorded_session(recorded):
    tmp, sessions, by_key = recorded
    rec = by_key["rhsbl"]
    path = next(sessions.iterdir())
    run = _smtpfw("trace", "--rules", tmp / "a.rules", "--session", f"{path}:{rec['id']}")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "DNS: recorded answers" in out
    assert "rhsbl spam.example in dbl.test: listed 127.0.0.2" in out
    assert "rule  rhsbl" in out and "matched -> reject" in out
    assert "<<< 550 5.7.1 sender domain listed" in out
    assert "verdict: rejected at mail by rhsbl (550)" in out
