"""`smtpfw trace`: a session step by step, with live, recorded or no DNS."""

from __future__ import annotations

import json

from smtpfw.replay.build import make_record
from tests.support.cli import run as smtpfw
from tests.support.server import REPO

REFERENCE = REPO / "rules" / "reference.rules"


def test_trace_with_live_dns_from_the_shared_zones(shared_dns):
    host, port = shared_dns.address
    run = smtpfw("trace", "--rules", REFERENCE, "--dns", f"{host}:{port}", "--ip", "192.0.2.66",
                 "--helo", "mx.example.org", "--from", "alice@example.org", "--rcpt", "bob@example.net")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert f"DNS: live, from {host}:{port}" in out
    assert ">>> connect from 192.0.2.66" in out
    assert "dns   dnsbl 192.0.2.66 in bl.test: listed 127.0.0.2 \"Listed in bl.test: 192.0.2.66 is a test listing\"" in out
    assert "rule  dnsbl (rules/reference.rules:21): matched -> reject" in out
    assert 'client.ip listed in bl  = true   [client.ip = "192.0.2.66"]' in out
    assert "=> connect: continue  (refusal held until RCPT (delay_reject))" in out
    assert ">>> EHLO mx.example.org" in out
    assert ">>> MAIL FROM:<alice@example.org>" in out
    assert "dns   rhsbl example.org in dbl.test: clear" in out
    assert ">>> RCPT TO:<bob@example.net>" in out
    assert "<<< 554 5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.test" in out
    assert "not reached: no accepted recipient" in out
    assert out.rstrip().endswith("rules matched: dnsbl")
    assert "verdict: rejected at rcpt by dnsbl (554)" in out


def test_trace_each_rule_with_its_values_without_dns():
    run = smtpfw("trace", "--rules", REFERENCE, "--no-dns", "--helo", "BAD.helo.example",
                 "--from", "<>", "--rcpt", "x@elsewhere.example", "--rcpt", "bob@example.net",
                 "--header", "Subject: hello", "--size", "4321")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "DNS: none (--no-dns: every lookup counts as failed)" in out
    assert "dns   dnsbl 192.0.2.1 in bl.test: failed: no DNS (--no-dns)" in out
    assert 'helo in badhelo  = true   [helo = "bad.helo.example"]' in out
    assert ">>> MAIL FROM:<>" in out
    assert "an earlier refusal" not in out.split(">>> MAIL")[0]
    assert 'rcpt.domain not in rcpthosts  = true   [rcpt.domain = "elsewhere.example"]' in out
    assert "=> rcpt: reject by badhelo  (refusal held from helo (delay_reject))" in out
    assert out.count("<<< 550 5.7.1 Helo command rejected: host name bad.helo.example is not acceptable") == 2
    assert ">>> DATA (4321 bytes, headers: subject)" in out
    assert "verdict: rejected at rcpt by badhelo (550)" in out


def test_trace_accepted_session_json():
    run = smtpfw("trace", "--rules", REFERENCE, "--no-dns", "--helo", "mx.example.org", "--from",
                 "alice@example.org", "--rcpt", "bob@example.net", "--format", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["verdict"]["kind"] == "accepted"
    steps = doc["steps"]
    assert [s["cmd"] for s in steps] == ["connect", "ehlo", "mail", "rcpt", "data"]
    assert steps[-1]["reply"] == "250 2.0.0 Message accepted"
    rcpt_rules = steps[3]["rules"]
    assert [r["rule"] for r in rcpt_rules] == ["relay-hack", "badrcptto", "rcpthosts"]
    assert rcpt_rules[2]["leaves"] == [{"condition": "rcpt.domain not in rcpthosts",
                                       "value": 'rcpt.domain = "example.net"', "result": False}]


def test_trace_a_recorded_session_uses_recorded_dns(tmp_path):
    from smtpfw.checks.dnsresult import DnsAnswer, Lookup, LookupKind

    records = [make_record(ip="192.0.2.7", helo="mx.example.org", sender="news@spam.example",
                           rcpts=["bob@example.net"], session_id=f"rec{i}",
                           dns={Lookup(LookupKind.RHSBL, "spam.example", "dbl.test"):
                                DnsAnswer("listed", ("127.0.0.2",), "spam.example is listed")}) for i in (1, 2)]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    for spec in (f"{path}:2", f"{path}:rec2"):
        run = smtpfw("trace", "--rules", REFERENCE, "--session", spec)
        assert run.returncode == 0, run.stderr
        out = run.stdout
        assert "session rec2: client 192.0.2.7" in out
        assert "DNS: recorded answers" in out
        assert "dns   dnsbl 192.0.2.7 in bl.test: failed: not in recording" in out
        assert "dns   rhsbl spam.example in dbl.test: listed 127.0.0.2 \"spam.example is listed\"" in out
        assert "verdict: rejected at rcpt by rhsbl (550)" in out
    run = smtpfw("trace", "--rules", REFERENCE, "--session", path)
    assert "session rec1" in run.stdout


def test_trace_errors_exit_2(tmp_path):
    cases = [
        (["--from", "a@b.example"], "--from needs --helo"),
        (["--helo", "x", "--rcpt", "a@b.example"], "--rcpt needs --from"),
        (["--ip", "300.1.1.1"], "is not an IP address"),
        (["--helo", "x", "--header", "nocolon"], "--header"),
        (["--session", tmp_path / "none.jsonl"], "no such file"),
        (["--session", f"{tmp_path / 'none.jsonl'}:3"], "no such file"),
        (["--rules", tmp_path / "none.rules", "--no-dns"], "cannot read"),
    ]
    for args, message in cases:
        extra = [] if "--rules" in args else ["--rules", REFERENCE]
        run = smtpfw("trace", *extra, *args)
        assert run.returncode == 2, (args, run.stdout)
        assert message in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(make_record(session_id="only")) + "\n")
    run = smtpfw("trace", "--rules", REFERENCE, "--session", f"{path}:7")
    assert run.returncode == 2 and "no session '7'" in run.stderr
