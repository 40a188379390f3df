"""`smtpfw import postfix` on a sample log with the usual Postfix line
formats (tests/data/postfix/maillog): reject at RCPT, accepted and queued,
lost connection, TLS, SASL submission, header_checks, garbage lines."""

from __future__ import annotations

import gzip
import json

import pytest

from smtpfw.recording import check_record
from smtpfw.replay.postfix import import_lines, restriction
from smtpfw.replay.session import recorded_verdict
from tests.support.cli import run as smtpfw
from tests.support.server import REPO

MAILLOG = REPO / "tests" / "data" / "postfix" / "maillog"


def dns_of(record: dict) -> list[dict]:
    """A record's DNS facts in the (lookup, answer) shape these tests write."""
    return [{"lookup": f["key"], "answer": f["value"]} for f in record["facts"] if f["provider"] == "dns"]


@pytest.fixture(scope="module")
def imported():
    with open(MAILLOG, encoding="utf-8") as fh:
        records, report = import_lines(fh, year=2024, source=str(MAILLOG))
    return {r["id"].split(".")[2]: r for r in records}, report, records


def envelope(rec):
    out = []
    for e in rec["events"]:
        d = e.get("decision") or {}
        out.append((e["cmd"], e.get("arg", e.get("addr")), d.get("outcome"), d.get("rule")))
    return out


C = "continue"


def test_every_record_is_valid_format_v1(imported):
    _by_pid, _report, records = imported
    for r in records:
        check_record(json.loads(json.dumps(r)), r["id"])
    assert [r["id"] for r in records] == sorted((r["id"] for r in records), key=lambda i: int(i.split(".")[-1]))


def test_counts_and_unparseable_lines(imported):
    _by_pid, report, records = imported
    assert len(records) == 11
    assert report.sessions == 11
    assert report.messages == 4
    assert report.unparseable == 3
    assert [n for n, _ in report.examples] == [13, 41, 57]
    assert report.examples[0][1] == "this line is not a syslog line at all"
    assert report.ignored == 5          # anvil, qmgr "removed", sshd, pickup, qmgr for the pickup message


def test_rbl_reject_at_rcpt(imported):
    r = imported[0]["2001"]
    assert r["client"] == {"ip": "192.0.2.66", "port": 0}
    assert envelope(r) == [("ehlo", "mx.example.org", C, None), ("mail", "alice@example.org", C, None),
                           ("rcpt", "bob@example.net", "reject", "postfix:reject_rbl_client bl.test")]
    rcpt = r["events"][2]
    assert rcpt["decision"]["code"] == 554 and rcpt["decision"]["enhanced"] == "5.7.1"
    assert rcpt["reply"].startswith("554 5.7.1 Service unavailable; Client host [192.0.2.66] blocked using bl.test")
    # the listing the reject names becomes a recorded DNS answer, so replay sees it offline
    assert {"lookup": {"kind": "dnsbl", "name": "192.0.2.66", "zone": "bl.test"},
            "answer": {"status": "listed", "txt": "Listed in bl.test: 192.0.2.66 is a test listing"}} in dns_of(r)
    assert r["time"] == pytest.approx(__import__("time").mktime((2024, 1, 10, 10, 0, 1, 0, 0, -1)))
    assert r["duration"] == 1.0
    v = recorded_verdict(r)
    assert (v.kind, v.stage, v.code) == ("rejected", "rcpt", 554)


def test_accepted_and_queued_with_tls(imported):
    r = imported[0]["2002"]
    assert r["tls"] is True
    assert envelope(r) == [("ehlo", "[198.51.100.7]", C, None), ("mail", "carol@example.org", C, None),
                           ("rcpt", "bob@example.net", C, None), ("data", None, C, None)]
    data = r["events"][-1]
    assert data["size"] == 2345
    assert data["headers"] == {"message-id": "<20240110100002.1234@mail.example.org>"}
    assert data["reply"] == "250 2.0.0 Ok: queued as 4Bq0Yx1Zz3z9"
    assert {"lookup": {"kind": "ptr", "name": "198.51.100.7", "zone": ""},
            "answer": {"status": "found", "names": ["mail.example.org"], "confirmed": True}} in dns_of(r)
    assert "helo name (the log shows it only in reject lines)" in r["source"]["missing"]
    assert recorded_verdict(r).kind == "accepted"


def test_queued_message_with_rejected_recipients_and_a_second_transaction(imported):
    r = imported[0]["2003"]
    assert envelope(r) == [
        ("ehlo", "relay.example.com", C, None), ("mail", "news@example.com", C, None),
        ("rcpt", "trap@example.net", "reject", "postfix:check_recipient_access"),
        ("rcpt", "someone@elsewhere.example", "reject", "postfix:reject_unauth_destination"),
        ("rcpt", "Carol@Example.NET", C, None),             # orig_to: the address the client sent
        ("data", None, C, None)]
    assert recorded_verdict(r).kind == "accepted"


def test_lost_connection_and_connect_only(imported):
    r = imported[0]["2004"]
    assert r["source"]["end"] == "lost connection after RCPT"
    assert envelope(r)[-1] == ("rcpt", "x@example.net", "reject", "postfix:check_sender_access")
    r = imported[0]["2005"]
    assert r["source"]["end"] == "lost connection after CONNECT"
    assert r["events"] == []
    assert recorded_verdict(r).kind == "no-mail"


def test_helo_tempfail_header_checks_and_bounce(imported):
    by_pid = imported[0]
    assert envelope(by_pid["2006"])[0] == ("helo", "BAD.HELO.EXAMPLE", C, None)     # proto=SMTP: HELO
    assert envelope(by_pid["2006"])[-1][3] == "postfix:check_helo_access"
    v = recorded_verdict(by_pid["2007"])
    assert (v.kind, v.code) == ("tempfailed", 450)
    r = by_pid["2008"]
    assert envelope(r) == [("ehlo", "x.example", C, None), ("mail", "spam@x.example", C, None),
                           ("rcpt", "bob@example.net", C, None), ("data", None, "reject", "postfix:header_checks")]
    assert r["events"][-1]["headers"] == {"subject": "Buy cheap pills now"}
    assert r["events"][-1]["decision"]["enhanced"] == "5.7.1"
    r = by_pid["2009"]
    assert envelope(r)[1] == ("mail", "", C, None)                         # the null sender
    assert {"lookup": {"kind": "ptr", "name": "198.51.100.44", "zone": ""},
            "answer": {"status": "found", "names": ["bounce.example.com"]}} in dns_of(r)   # not forward-confirmed


def test_submission_with_sasl_and_iso_timestamps(imported):
    r = imported[0]["2010"]
    assert r["listener"] == {"address": "", "port": 587, "name": "submission"}
    assert r["client"] == {"ip": "198.51.100.80", "port": 51234}
    assert (r["auth"], r["auth_user"], r["tls"]) == (True, "alice", True)
    assert [e["addr"] for e in r["events"] if e["cmd"] == "rcpt"] == ["friend@elsewhere.example",
                                                                     "other@elsewhere.example"]
    r = imported[0]["2011"]
    assert r["time"] == pytest.approx(1704880830.123, abs=0.001)
    assert [e[3] for e in envelope(r)[2:]] == ["postfix:reject_rhsbl_sender dbl.test"] * 2
    assert {"lookup": {"kind": "rhsbl", "name": "spam.example", "zone": "dbl.test"},
            "answer": {"status": "listed", "txt": "Domain spam.example is listed in dbl.test"}} in dns_of(r)


def test_restriction_names():
    assert restriction("Relay access denied") == "postfix:reject_unauth_destination"
    assert restriction("<a@b>: Sender address rejected: Domain not found") == "postfix:reject_unknown_sender_domain"
    assert restriction("something else") == "postfix:reject"


def test_cli_writes_jsonl_and_gz_and_reports_on_stderr(tmp_path):
    out = tmp_path / "sessions.jsonl"
    run = smtpfw("import", "postfix", MAILLOG, "-o", out, "--year", "2024")
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert "11 sessions, 4 messages accepted" in run.stderr
    assert "3 unparseable" in run.stderr
    assert f"unparseable {MAILLOG}:13: this line is not a syslog line at all" in run.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 11
    gz_in = tmp_path / "maillog.gz"
    gz_in.write_bytes(gzip.compress(MAILLOG.read_bytes()))
    gz_out = tmp_path / "sessions.jsonl.gz"
    run = smtpfw("import", "postfix", gz_in, "-o", gz_out, "--year", "2024")
    assert run.returncode == 0
    def strip(text_lines):
        out = [json.loads(x) for x in text_lines]
        for r in out:
            r["source"].pop("file")
        return out

    assert strip(gzip.decompress(gz_out.read_bytes()).decode().splitlines()) == strip(lines)
    run = smtpfw("import", "postfix", MAILLOG, "--year", "2024")          # stdout by default
    assert run.stdout.splitlines() == lines
    # and the sessions dry-run: the Postfix verdicts are the baseline
    run = smtpfw("dry-run", "--rules", "rules/reference.rules", "--format", "json", out)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["sessions"] == 11
    assert report["baseline_verdicts"] == {"accepted": 4, "rejected": 5, "tempfailed": 1, "disconnected": 0,
                                           "no-mail": 1}
    relayed = report["changes"]["newly_rejected"]["groups"]
    assert [(g["rule"], g["count"]) for g in relayed] == [("rcpthosts", 1)]     # the SASL submission


def test_cli_unreadable_log_exits_2(tmp_path):
    run = smtpfw("import", "postfix", tmp_path / "nope.log")
    assert run.returncode == 2 and "nope.log" in run.stderr and "Traceback" not in run.stderr


def test_dry_run_says_when_a_codes_filter_meets_a_listing_without_codes(tmp_path):
    """Issue 14: a mail log says "blocked using bl.test", not which A record
    the list answered, so a zone with `codes [...]` cannot match an imported
    listing.  Dry-run says so instead of silently not matching."""
    out = tmp_path / "sessions.jsonl"
    assert smtpfw("import", "postfix", MAILLOG, "-o", out, "--year", "2024").returncode == 0
    rules = tmp_path / "coded.rules"
    rules.write_text('zone bl = dnsbl "bl.test" codes [127.0.0.2-127.0.0.11]\n'
                     'on connect:\n    [bl] reject 554 5.7.1 "listed" if client.ip listed in bl\n'
                     'on rcpt:\n    [relay] reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n')
    run = smtpfw("dry-run", "--rules", rules, out)
    assert run.returncode == 0, run.stderr
    assert ("note: 1 session had a listing in bl.test without its return codes (sessions imported from a "
            "mail log do not carry them), so a `codes [...]` filter never matched it") in run.stdout
    report = json.loads(smtpfw("dry-run", "--rules", rules, "--format", "json", out).stdout)
    assert report["listings_without_codes"] == {"bl.test": 1}
    # without a filter the imported listing matches, and nothing is noted
    rules.write_text(rules.read_text().replace(' codes [127.0.0.2-127.0.0.11]', ''))
    report = json.loads(smtpfw("dry-run", "--rules", rules, "--format", "json", out).stdout)
    assert report["listings_without_codes"] == {} and report["rule_hits"]["bl"] == 1
