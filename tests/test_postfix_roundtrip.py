"""The round trip that makes an import trustworthy (issue 20): a real
Postfix (Debian's package) runs the reference policy in its own
restrictions over the reference sessions; its main.cf and its mail log are
imported (`smtpfw import postfix-config`, `smtpfw import postfix`), the
imported ruleset is dry-run over the imported sessions, and the dry-run
agrees with what Postfix logged on every session.

Postfix resolves through /etc/resolv.conf only (port 53): it runs in a
mount namespace of its own whose resolv.conf names the test's DNS server
on a loopback address's port 53 (as bench/policy_bench.py does)."""

from __future__ import annotations

import json
import re
import shutil
import smtplib

import pytest

from tests.support.cli import run, wait_until
from tests.support.dnsserver import DnsServer
from tests.support.downstream import Downstream
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.reference import SESSIONS, base_settings, postfix_native
from tests.support.server import SHARED

DNS_HOST = "127.0.54.53"     # not the benchmark's 127.0.53.53, so both can run


def run_cli(*args) -> tuple[int, str, str]:
    proc = run(*args)
    return proc.returncode, proc.stdout, proc.stderr


def _send(port: int, client: str, helo: str, sender: str, rcpts: dict) -> bool:
    """One reference session; DATA when a recipient was accepted.  Whether
    a message was accepted."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(client, 0), timeout=30) as s:
        s.ehlo(helo)
        if s.mail(sender)[0] != 250:
            return False
        accepted = [r for r in rcpts if s.rcpt(r)[0] == 250]
        if not accepted:
            return False
        code, _ = s.data(f"From: <{sender}>\r\nSubject: round trip\r\n\r\nhello\r\n".encode())
        return code == 250


@pytest.fixture(scope="module")
def postfix_run(tmp_path_factory):
    """Postfix with the reference policy, after the reference sessions: (main.cf, maillog, accepted)."""
    why = postfix_available()
    if why:
        pytest.fail(why)
    tmp = tmp_path_factory.mktemp("roundtrip")
    tmp.chmod(0o755)
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_HOST}\noptions timeout:2 attempts:1\n")
    resolv.chmod(0o644)
    zones = [SHARED / "zones" / "bl.test", SHARED / "zones" / "dbl.test"]
    with DnsServer(zones, authoritative=["example.", "in-addr.arpa."], host=DNS_HOST, port=53) as _dns, \
            Downstream() as sink:
        settings = {**base_settings(sink.port, SHARED / "policy"), **postfix_native(tmp, SHARED / "policy")}
        with PostfixInstance(settings, resolv=resolv) as pf:
            accepted = sum(_send(pf.port, c, h, s, r) for c, h, s, r, _ in SESSIONS)
            sink.wait_for_messages(accepted, timeout=30)
            wait_until(lambda: pf.log.count(" disconnect from ") >= len(SESSIONS)
                       and pf.log.count("status=sent") >= accepted, 30, "postfix log complete")
            main_cf = tmp / "main.cf"
            shutil.copy(pf.root / "conf" / "main.cf", main_cf)
            maillog = tmp / "maillog"
            maillog.write_text(pf.log)
    return main_cf, maillog, accepted


def test_the_imported_config_dry_run_over_the_imported_log_agrees_with_postfix(postfix_run, tmp_path):
    main_cf, maillog, accepted = postfix_run
    out = tmp_path / "imported"
    code, _stdout, stderr = run_cli("import", "postfix-config", str(main_cf), "-o", str(out))
    assert code == 0, stderr
    sessions = tmp_path / "sessions.jsonl"
    code, _stdout, stderr = run_cli("import", "postfix", str(maillog), "-o", str(sessions))
    assert code == 0, stderr
    assert "0 not understood" in stderr, stderr

    code, stdout, stderr = run_cli("dry-run", "--rules", str(out / "imported.rules"), "--format", "json",
                                   str(sessions))
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["sessions"] == len(SESSIONS) + 1     # + PostfixInstance's readiness probe (connect, close)
    assert report["baseline"]["compared_by_outcome"] == {"postfix": len(SESSIONS) + 1}
    # Postfix's verdicts (recorded) and smtpfw's on the imported ruleset agree on every session
    assert report["changes"]["sessions"] == 0, json.dumps(report["changes"], indent=1)[:3000]
    assert report["verdicts"] == report["baseline_verdicts"]
    assert report["verdicts"].get("accepted", 0) == accepted
    # and the refusals come from the translated restrictions, not from a catch-all
    hits = report["rule_hits"]
    assert any("rbl" in rule for rule in hits), hits
    assert any("helo" in rule for rule in hits), hits


def test_a_changed_ruleset_shows_what_it_would_change_against_postfix(postfix_run, tmp_path):
    """The same round trip shows a difference when there is one: the
    imported ruleset without its DNSBL restriction accepts the two listed
    clients that Postfix refused."""
    main_cf, maillog, _accepted = postfix_run
    out = tmp_path / "imported"
    assert run_cli("import", "postfix-config", str(main_cf), "-o", str(out))[0] == 0
    sessions = tmp_path / "sessions.jsonl"
    assert run_cli("import", "postfix", str(maillog), "-o", str(sessions))[0] == 0
    rules = (out / "imported.rules").read_text()
    lines = [ln for ln in rules.splitlines() if not re.search(r"listed in bl\b", ln)]
    assert len(lines) < len(rules.splitlines()), rules
    (out / "edited.rules").write_text("\n".join(lines) + "\n")
    code, stdout, stderr = run_cli("dry-run", "--rules", str(out / "edited.rules"), "--format", "json", str(sessions))
    assert code == 0, stderr
    changes = json.loads(stdout)["changes"]
    assert changes["sessions"] == 2, changes
    assert changes["newly_accepted"]["count"] == 2
    assert [g["key"] for g in changes["newly_accepted"]["groups"]] == ["postfix:reject_rbl_client bl.test"]
