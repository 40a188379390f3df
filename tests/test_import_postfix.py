"""`smtpfw import postfix` on a sample log with the usual Postfix line
formats (tests/data/postfix/maillog): reject at RCPT, accepted and queued,
lost connection, TLS, SASL submission, header_checks, garbage lines; then
real logs from public sources for what the importer used to lose
(tests/data/postfix-logs/README.md names each file's source): refusals at
MAIL without from=, unconfirmed PTR names of older Postfix, refusals at
DATA and at the end of the message, logs that begin mid-session or were
filtered, postscreen, older TLS and lost-connection lines, and the report
of what became of every line."""

from __future__ import annotations

import gzip
import json

import pytest

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import check_record
from smtpfw.replay.postfix import import_lines, restriction, summary
from smtpfw.replay.session import recorded_verdict, replay_record
from tests.support.cli import run as smtpfw
from tests.support.server import REPO

MAILLOG = REPO / "tests" / "data" / "postfix" / "maillog"
LOGS = REPO / "tests" / "data" / "postfix-logs"


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
    assert report.unparseable_by == {"no syslog prefix": 2, "refusals in a shape not known": 1}
    assert report.ignored == 5          # anvil, qmgr "removed", sshd, pickup, qmgr for the pickup message
    assert report.ignored_by == {"other programs": 1, "postfix/anvil": 1, "postfix/pickup": 1, "postfix/qmgr": 1,
                                 "queue ids of no smtpd session (pickup, bounces)": 1}
    assert report.lines == report.used + report.ignored + report.unparseable == 61


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


def test_a_listing_in_the_sites_own_rbl_reply_words_is_recorded():
    """rbl_reply_maps lets a site word the reply; a text that names the
    entity before "blocked using ZONE" is still that list's refusal, and
    the listing is recorded (Postfix 3.7, tests/test_postfix_roundtrip.py)."""
    lines = [
        "Nov 30 17:35:06 mx postfix/smtpd[22234]: connect from unknown[127.0.0.1]",
        "Nov 30 17:35:06 mx postfix/smtpd[22234]: NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 550 5.7.1 "
        "<bob@example.net>: Sender address rejected: domain x@SPAM.Example blocked using dbl.test; Domain "
        "spam.example is listed in dbl.test; from=<x@SPAM.Example> to=<bob@example.net> proto=ESMTP "
        "helo=<mx.good.example>",
        "Nov 30 17:35:06 mx postfix/smtpd[22234]: disconnect from unknown[127.0.0.1] ehlo=1 mail=1 rcpt=0/1 "
        "quit=1 commands=3/4",
    ]
    records, _report = import_lines(lines, 2026)
    assert [e[3] for e in envelope(records[0])[2:]] == ["postfix:reject_rhsbl_sender dbl.test"]
    assert {"lookup": {"kind": "rhsbl", "name": "spam.example", "zone": "dbl.test"},
            "answer": {"status": "listed"}} in dns_of(records[0])
    assert restriction("Client host rejected: 192.0.2.1 is blocked using zen.example.org") == \
        "postfix:reject_rbl_client zen.example.org"
    assert restriction("Sender address rejected: blocked using our rules") == "postfix:check_sender_access"


def test_cli_writes_jsonl_and_gz_and_reports_on_stderr(tmp_path):
    out = tmp_path / "sessions.jsonl"
    run = smtpfw("import", "postfix", MAILLOG, "-o", out, "--year", "2024")
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert "11 sessions, 4 messages accepted" in run.stderr
    assert "53 lines used, 5 ignored, 3 not understood" in run.stderr
    assert "  not understood: 2 no syslog prefix, 1 refusals in a shape not known" in run.stderr
    assert f"not understood {MAILLOG}:13: this line is not a syslog line at all" in run.stderr
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


# ---- real logs: what the importer used to lose ---------------------------------------

def imported_log(name: str, year: int = 2024):
    """The records of a fixture log by client IP and port (a list each), and the report."""
    path = LOGS / name
    with open(path, encoding="utf-8") as fh:
        records, report = import_lines(fh, year=year, source=str(path))
    for r in records:
        check_record(json.loads(json.dumps(r)), r["id"])
    by_ip: dict = {}
    for r in records:
        by_ip.setdefault(r["client"]["ip"], []).append(r)
    return by_ip, report, records


def verdict(r) -> tuple:
    v = recorded_verdict(r)
    return (v.kind, v.stage, v.rule, v.code)


def ptr_of(r):
    return [d["answer"] for d in dns_of(r) if d["lookup"]["kind"] == "ptr"]


def test_mail_refusal_without_from_is_a_refusal_at_mail():
    """Class 1: smtpd checks SIZE= (and a milter sees MAIL) before it sets the
    sender, so these lines have no from=; they were dropped as no mail."""
    by_ip, _, _ = imported_log("old-formats.log")
    size, milter = [r for r in by_ip["10.0.0.1"] if r["events"] and r["events"][-1]["cmd"] == "mail"]
    assert envelope(size) == [("ehlo", "localhost", C, None), ("mail", "", "reject", "postfix:message_size_limit")]
    assert size["events"][1]["reply"] == "552 Message size exceeds fixed limit"
    assert verdict(size) == ("rejected", "mail", "postfix:message_size_limit", 552)
    assert "a sender (the log names it only in reject and qmgr lines)" in size["source"]["missing"]
    assert verdict(milter) == ("rejected", "mail", "postfix:milter", 553)
    assert milter["events"][1]["decision"]["enhanced"] == "5.1.7"


def test_unconfirmed_ptr_names_of_older_postfix():
    """Class 2: Postfix before 2.9 logged "IP: address not listed for hostname
    NAME" and "IP: hostname NAME verification failed"; the name was found but
    does not resolve back, which is not the same as no name."""
    by_ip, _, _ = imported_log("old-formats.log")
    listed, verify = by_ip["192.168.0.1"][0], by_ip["10.0.0.1"][0]
    peer_init = by_ip["192.168.0.1"][1]
    assert ptr_of(listed) == [{"status": "found", "names": ["sample.net"]}]
    assert ptr_of(verify) == [{"status": "found", "names": ["sample.com"]}]
    assert ptr_of(peer_init) == [{"status": "found", "names": ["example.com"]}]
    rules = ('on connect:\n'
             '    [no-ptr] tempfail 450 4.7.1 "cannot find your reverse hostname" if client.ptr = "none"\n'
             '    [unconfirmed] tempfail 450 4.7.25 "cannot find your hostname" if not client.fcrdns\n')
    rs, diags = compile_ruleset("ptr.rules", text=rules)
    assert rs is not None, diags
    v = replay_record(rs, listed).verdict
    assert (v.kind, v.stage, v.rule) == ("tempfailed", "connect", "unconfirmed")


def test_refusals_at_data_and_at_the_end_of_the_message():
    """Class 3: milter-reject at DATA (smtpd) and at END-OF-MESSAGE (cleanup,
    a reply with only an enhanced code), reject: BDAT, and recipients named
    only in such a line or in an action that refuses nothing."""
    by_ip, report, _ = imported_log("data-refusals.log")
    tried_later = by_ip["254.65.43.194"][0]
    assert envelope(tried_later)[2:] == [("rcpt", "h-7abde52c2@h-ffd2115d4f.com", C, None),
                                         ("data", None, "tempfail", "postfix:milter")]
    assert tried_later["events"][-1]["reply"] == "451 4.7.1 Try again later"
    assert tried_later["events"][-1]["headers"] == {
        "message-id": "<h-ce543fda118a39748f465e46bebdc3338@h-79b594737831a5d176dabf9.com>"}
    assert verdict(tried_later) == ("tempfailed", "data", "postfix:milter", 451)
    spam = by_ip["117.165.155.187"][0]
    assert [e[1:3] for e in envelope(spam)[2:]] == [
        ("h-f91a317fd08716dbf2@h-ff6b5e9182fd933.com", "reject"),
        ("h-0b38f31d8f5146498e8862@h-ff6b5e9182fd933.com", "reject"),
        ("h-688f0f21f362894034ba55@h-ff6b5e9182fd933.com", C),      # named only in the milter's refusal
        (None, "reject")]
    assert verdict(spam) == ("rejected", "data", "postfix:milter", 550)
    filtered = by_ip["30.207.11.100"][0]
    assert [e[1:3] for e in envelope(filtered)[2:]] == [("h-2d34d8bb8@h-93a1a37cd1.com", "tempfail"),
                                                        ("h-3c3175932cb3b@h-526472e87.com", C)]
    assert verdict(filtered) == ("accepted", None, None, None)           # rcpt=1/2, then QUIT
    assert report.rejections == 5 and report.unparseable == 0    # the milter's second line for a message: not again
    assert report.ignored_by == {"comments": 1}                          # NOQUEUE: filter is read, not ignored

    by_ip, _, _ = imported_log("grep-filtered.log")
    milter = by_ip["192.0.2.151"][0]
    assert envelope(milter) == [("ehlo", "192-0-2-151.mail-mail.example.com", C, None),
                                ("mail", "security@mail.example.com", C, None),
                                ("rcpt", "hostmaster@example.com", C, None), ("data", None, "reject", "postfix:milter")]
    bdat = by_ip["192.0.2.109"][0]
    assert bdat["listener"]["name"] == "submission"                     # postfix-smo/submission/smtpd
    assert envelope(bdat)[2:] == [("rcpt", "some@example.com", C, None),
                                  ("data", None, "reject", "postfix:reject_multi_recipient_bounce")]
    assert verdict(bdat) == ("rejected", "data", "postfix:reject_multi_recipient_bounce", 550)


def test_accepted_recipients_no_line_names_are_said_to_be_missing():
    by_ip, report, _ = imported_log("postscreen.log")
    second = by_ip["199.229.127.90"][1]            # client= then QUIT: rcpt=1, no DATA, no line names it
    assert "the accepted recipients of 14DE83012026 (no line names them)" in second["source"]["missing"]
    assert report.unnamed_recipients == 1


def test_a_log_filtered_with_grep_gives_a_session_for_every_refusal():
    """Class 4: no connect line before the refusals (fail2ban's test log is
    such a log): each refusal becomes a session with what is known."""
    by_ip, report, records = imported_log("grep-filtered.log")
    assert report.unparseable == 0
    assert report.sessions == len(records) == report.without_connect == 30
    refused = [r for r in records if recorded_verdict(r).kind in ("rejected", "tempfailed")]
    assert len(refused) == 21 and report.rejections == 22     # smtpd[7150] refused one client twice
    for r in records:
        assert "the start of the session (no connect line: the log begins mid-session or was filtered)" \
            in r["source"]["missing"]
    relay = next(r for r in by_ip["1.2.3.4"] if r["source"]["lines"][0] == 2)   # smtpd[8738]: three clients
    assert (relay["id"], envelope(relay)[-1]) == (
        "postfix.saturn.8738.2", ("rcpt", "smtp@example.org", "reject", "postfix:reject_unauth_destination"))
    assert [r["id"] for r in by_ip["192.51.100.65"] + by_ip["192.51.100.43"]] == [
        "postfix.xxx.8738.3", "postfix.xxx.8738.5"]
    connect = by_ip["192.0.2.114"][0]
    assert connect["events"] == [] and verdict(connect)[:2] == ("tempfailed", "connect")
    assert connect["connect"]["decision"]["code"] == 450
    ehlo = by_ip["78.107.251.238"][0]
    assert envelope(ehlo) == [("helo", "User", "reject", "postfix:reject_non_fqdn_helo_hostname")]
    twice = by_ip["93.184.216.34"][0]              # smtpd[7150]: two refusals a second apart, one session
    assert [e[0] for e in envelope(twice)] == ["ehlo", "mail", "rcpt", "rcpt"]
    # "foo[IP]" is a name smtpd confirmed; "unknown" with no warning line before it is not known
    assert ptr_of(by_ip["192.51.100.65"][0]) == [{"status": "found", "names": ["foo"], "confirmed": True}]
    assert ptr_of(by_ip["192.0.2.236"][0]) == []
    assert report.ignored_by["VRFY and ETRN refusals (smtpfw has no hook for them)"] == 1
    # a lone "lost connection after DATA": a transaction the log holds nothing else of
    assert report.ignored_by["ends of sessions the log does not hold (no other line of theirs)"] == 1
    # a lone disconnect whose counts show no MAIL: a whole session, and no mail
    lone = next(r for r in by_ip["192.0.2.1"] if r["id"] == "postfix.srv.123.29")
    assert envelope(lone) == [("helo", "[192.0.2.1]", C, None)] and verdict(lone)[0] == "no-mail"


def test_postscreen_sessions():
    """Class 5: postscreen's lines are imported: what it kept out is a
    session of its own, what it passed continues in the smtpd session."""
    by_ip, report, records = imported_log("postscreen.log")
    assert (report.screened_out, report.screened_in, report.unparseable) == (7, 3, 0)

    enforced = by_ip["155.63.95.6"][0]             # DNSBL rank 3, "enforce": refused at every RCPT
    assert enforced["listener"] == {"address": "170.45.1.1", "port": 25, "name": "postscreen"}
    assert enforced["client"] == {"ip": "155.63.95.6", "port": 63966}
    assert envelope(enforced) == [("ehlo", "WIN-QGFOVKPDT6T", C, None), ("mail", "h-9a34f8b@h-8ed5c3b550.com", C, None),
                                  ("rcpt", "h-9a34f8b@h-8ed5c3b550.com", "reject", "postfix:postscreen_dnsbl_sites")]
    assert enforced["events"][-1]["reply"] == ("550 5.7.1 Service unavailable; client [155.63.95.6] blocked using "
                                               "h-b8ce05d1c068e5c0")
    assert dns_of(enforced) == [{"lookup": {"kind": "dnsbl", "name": "155.63.95.6", "zone": "h-b8ce05d1c068e5c0"},
                                 "answer": {"status": "listed", "codes": ["58.1.1.1", "58.1.1.8", "58.1.1.23"]}}]
    assert enforced["source"]["postscreen"] == {"dnsbl_rank": 3, "verdict": "DISCONNECT", "failed": ["dnsbl"]}

    hung_up = by_ip["8.229.244.8"][0]              # PREGREET, DNSBL rank 5, then the client left
    assert hung_up["behaviour"] == {"pregreet": True, "pregreet_text": "EHLO USER\\r\\n", "pregreet_ms": 10}
    assert hung_up["events"] == [] and verdict(hung_up)[0] == "no-mail"
    assert hung_up["source"]["end"] == "HANGUP after 0.02 in tests after SMTP handshake"
    assert {d["lookup"]["zone"] for d in dns_of(hung_up)} == {"h-b8ce05d1c068e5c0", "h-9d12c781ba86500d5e85a4"}

    pipelined = by_ip["112.103.155.150"]           # two connections at once, told apart by port
    assert [r["client"]["port"] for r in pipelined] == [45414, 45833]
    assert all(r["behaviour"]["unauth_pipelining"] and r["behaviour"]["pregreet"] for r in pipelined)

    dropped = by_ip["222.85.244.30"][0]            # PREGREET, then DISCONNECT: "drop", 521 and hang up
    assert dropped["connect"]["decision"] == {"outcome": "disconnect", "code": 521, "enhanced": "5.5.1",
                                              "text": "Protocol error", "rule": "postfix:postscreen_greet_action"}
    assert verdict(dropped) == ("disconnected", "connect", "postfix:postscreen_greet_action", 521)
    dnsbl_drop = by_ip["172.15.63.8"][0]           # PREGREET (ignored), DNSBL rank 3 (dropped)
    assert dnsbl_drop["connect"]["reply"] == ("521 5.7.1 Service unavailable; client [172.15.63.8] blocked using "
                                              "h-b8ce05d1c068e5c0")

    passed = by_ip["199.45.11.65"][0]              # PASS OLD, then smtpd: one session
    assert passed["id"] == "postfix.mail.11200.10"  # smtpd's process; first line: postscreen's CONNECT
    assert passed["source"]["lines"] == [10, 25]
    assert passed["client"] == {"ip": "199.45.11.65", "port": 51763}
    assert passed["listener"] == {"address": "170.45.1.1", "port": 25, "name": "smtpd"}
    assert passed["behaviour"] == {"pregreet_cached": True}
    assert passed["tls"] is True and verdict(passed)[0] == "accepted"
    assert passed["source"]["postscreen"] == {"verdict": "PASS OLD"}
    assert {"lookup": {"kind": "dnsbl", "name": "199.45.11.65", "zone": "h-3824e3d85a1cce"},
            "answer": {"status": "listed", "codes": ["58.1.38.1"]}} in dns_of(passed)
    new = by_ip["199.229.127.90"][0]
    assert new["source"]["postscreen"] == {"verdict": "PASS NEW"} and "behaviour" not in new
    assert verdict(new) == ("rejected", "rcpt", "postfix:reject_unlisted_recipient", 550)
    assert len(records) == 11


POSTSCREEN_RULES = '''option delay_reject = yes
zone bl = dnsbl "h-b8ce05d1c068e5c0"
on connect:
    [greet] disconnect 521 5.5.1 "Protocol error" if client.pregreet and not client.ip listed in bl
    [dnsbl-drop] disconnect 521 5.7.1 "Service unavailable" if client.pregreet and client.ip listed in bl
    [dnsbl] reject 550 5.7.1 "Service unavailable; client [{client.ip}] blocked using bl" if client.ip listed in bl
'''


def test_replay_of_postscreen_sessions_gives_the_verdicts_postfix_logged():
    """A ruleset saying what this postscreen did replays its sessions to the
    same verdicts (the rules are smtpfw's, so only the kind, stage and code
    can agree)."""
    by_ip, _, _ = imported_log("postscreen.log")
    rs, diags = compile_ruleset("postscreen.rules", text=POSTSCREEN_RULES)
    assert rs is not None, diags
    for ip in ("155.63.95.6", "222.85.244.30", "172.15.63.8", "199.45.11.65"):
        r = by_ip[ip][0]
        replayed, recorded = replay_record(rs, r).verdict, recorded_verdict(r)
        assert (replayed.kind, replayed.stage, replayed.code) == (recorded.kind, recorded.stage, recorded.code), ip


def test_older_tls_and_lost_connection_lines():
    """Classes 6 and 7: "TLS connection established from" without
    Anonymous/Trusted/Untrusted (Postfix 2.2-2.4), "(approximately N bytes)"
    (before 2.6), "NOQUEUE: lost connection" (3.10)."""
    by_ip, _, _ = imported_log("old-formats.log")
    tls = next(r for r in by_ip["192.168.0.1"] if r["source"]["rdns"] == "example.com")
    assert tls["tls"] is True
    lost = next(r for r in by_ip["10.0.0.1"] if r["source"]["end"].startswith("lost"))
    assert lost["source"]["end"] == "lost connection after DATA"
    by_ip, _, _ = imported_log("grep-filtered.log")
    assert by_ip["192.0.2.25"][0]["source"]["end"] == "lost connection after CONNECT"
    assert verdict(by_ip["192.0.2.25"][0])[0] == "no-mail"


def test_lines_of_other_programs_are_ignored_not_misread():
    """Class 7: dovecot logs without a process id; such lines are other
    programs' lines, not lines the importer failed to read."""
    _, report, _ = imported_log("postscreen.log")
    assert report.ignored_by["other programs"] == 19       # policyd-spf, opendkim, opendmarc, amavis, dovecot
    assert report.unparseable == 0


def test_the_report_says_what_became_of_every_line():
    """Class 8: lines read, used, ignored and not understood, each by reason,
    in the summary the command prints and as JSON."""
    for name in ("grep-filtered.log", "postscreen.log", "data-refusals.log", "old-formats.log"):
        _, report, _ = imported_log(name)
        assert report.lines == report.used + report.ignored + report.unparseable
        assert sum(report.used_by.values()) == report.used
        assert sum(report.ignored_by.values()) == report.ignored
        assert sum(report.unparseable_by.values()) == report.unparseable
    _, report, _ = imported_log("postscreen.log")
    text = summary("postscreen.log", report).splitlines()
    assert text[0] == ("postscreen.log: 87 lines read: 11 sessions, 1 messages accepted, 2 rejections; "
                       "64 lines used, 23 ignored, 0 not understood")
    assert text[1] == "  used: 37 postscreen, 12 smtpd, 9 dnsblog, 2 cleanup, 2 qmgr, 1 delivery, 1 smtpd refusals"
    assert text[2] == "  ignored: 19 other programs, 2 postfix/anvil, 1 comments, 1 postfix/qmgr"
    assert "  postscreen: 7 sessions ended there, 3 were handed to smtpd" in text
    as_json = report.to_json()
    assert as_json["used"]["postscreen"] == 37 and as_json["not_understood"] == {}
    assert (as_json["screened_out"], as_json["screened_in"]) == (7, 3)


def test_cli_imports_the_real_logs_and_dry_run_replays_them(tmp_path):
    """What the importer writes, `smtpfw dry-run` reads: every session of
    every fixture replays, and the baseline verdicts are the recorded ones."""
    for name in ("grep-filtered.log", "postscreen.log", "data-refusals.log", "old-formats.log"):
        out = tmp_path / (name + ".jsonl")
        run = smtpfw("import", "postfix", LOGS / name, "-o", out, "--year", "2024")
        assert run.returncode == 0, run.stderr
        assert "lines read" in run.stderr and "  used: " in run.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        expected: dict = {}
        for r in records:
            kind = recorded_verdict(r).kind
            expected[kind] = expected.get(kind, 0) + 1
        run = smtpfw("dry-run", "--rules", "rules/reference.rules", "--format", "json", out)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["sessions"] == len(records)
        assert {k: v for k, v in report["baseline_verdicts"].items() if v} == expected, name
