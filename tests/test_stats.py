"""`smtpfw stats`: hits per rule, rules never hit, who is refused most —
from recorded sessions and from a running server's metrics endpoint."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

from tests.support.cli import REPO, run, serve_with, wait_until
from tests.support.server import recorded_sessions, running_server

RULES = REPO / "rules" / "default.rules"


def session(address, sender: str, rcpt: str) -> int:
    with smtplib.SMTP(*address, timeout=30) as s:
        s.ehlo("client.example")
        s.mail(sender)
        return s.rcpt(rcpt)[0]


def record_traffic(tmp_path: Path) -> Path:
    rec = tmp_path / "rec"
    with running_server(RULES, recording_enabled=True, recording_path=str(rec)) as srv:
        for _ in range(3):
            assert session(srv.address, "a@good.example", "root@localhost") == 250
        for _ in range(2):
            assert session(srv.address, "spam@Bad.Example", "x@example.net") == 554
        recorded_sessions(rec, 5)
    return rec


def test_stats_from_recordings(tmp_path):
    rec = record_traffic(tmp_path)
    proc = run("stats", rec, "--rules", RULES, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["sessions"] == 5
    assert got["rule_hits"]["local-domain"] == 3 and got["rule_hits"]["no-relay"] == 2
    assert "relay-hack" in got["never_hit"]
    assert got["top_refused"]["client"] == [["127.0.0.1", 2]]
    assert got["top_refused"]["sender"] == [["spam@Bad.Example", 2]]
    assert got["top_refused"]["sender domain"] == [["bad.example", 2]]
    text = run("stats", rec, "--rules", RULES).stdout
    assert "never hit: relay-hack" in text and "top refused by client: 127.0.0.1 2" in text


def test_stats_for_the_last_days_leaves_older_sessions_out(tmp_path):
    rec = record_traffic(tmp_path)
    (path,) = [p for p in rec.iterdir() if p.suffix == ".jsonl"]
    lines = path.read_text().splitlines()
    old = [json.loads(line) for line in lines]
    for record in old[:3]:
        record["time"] -= 40 * 86400                      # three sessions 40 days ago
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    got = json.loads(run("stats", rec, "--rules", RULES, "--days", "30", "--format", "json").stdout)
    assert (got["sessions"], got["older_sessions_skipped"]) == (2, 3)
    assert got["rule_hits"]["local-domain"] == 0 and got["rule_hits"]["no-relay"] == 2


def test_stats_from_a_running_servers_metrics(tmp_path):
    with serve_with(tmp_path, {"metrics": {"listen": "127.0.0.1:0"}}) as srv:
        url = srv.wait_for(r"metrics on (http://\S+)").group(1)
        assert session(srv.address, "a@good.example", "root@localhost") == 250
        assert session(srv.address, "a@good.example", "x@example.net") == 554
        wait_until(lambda: "sessions: 2" in run("stats", "--metrics", url, "--rules", RULES).stdout, 10,
                   "two sessions counted")
        got = json.loads(run("stats", "--metrics", url, "--rules", RULES, "--format", "json").stdout)
    assert got["rule_hits"]["local-domain"] == 1 and got["rule_hits"]["no-relay"] == 1
    assert got["verdicts"] == {"rcpt accept": 1, "rcpt reject": 1, "connect continue": 2, "helo continue": 2,
                               "mail continue": 2}


def test_stats_needs_recordings_or_metrics():
    proc = run("stats")
    assert proc.returncode == 2 and "give recorded sessions" in proc.stderr
    proc = run("stats", "--metrics", "http://127.0.0.1:1/metrics", "--rules", RULES)
    assert proc.returncode == 2 and "cannot read the metrics" in proc.stderr


def test_an_unhealthy_dns_list_shows_in_the_metrics_and_in_stats(tmp_path):
    from tests.support.dnsserver import DnsServer
    rules = tmp_path / "z.rules"
    rules.write_text('zone bl = dnsbl "bl.test"\non connect:\n    reject 554 5.7.1 "listed" if client.ip listed in bl\n'
                     'on rcpt:\n    reject 554 5.7.1 "Relaying denied" if rcpt.domain not in localnames\n')
    with DnsServer([], fixed_a="127.0.0.2") as dns:        # lists everything, its test entry 127.0.0.1 too
        settings = {"metrics": {"listen": "127.0.0.1:0"}, "dns": {"nameservers": [f"{dns.host}:{dns.port}"]},
                    "rules": str(rules)}
        with serve_with(tmp_path, settings) as srv:
            url = srv.wait_for(r"metrics on (http://\S+)").group(1)
            srv.wait_for(r"zone bl.test is unhealthy")
            got = json.loads(run("stats", "--metrics", url, "--rules", rules, "--format", "json").stdout)
    assert got["unhealthy_dns_lists"] == ["dnsbl bl.test"]
