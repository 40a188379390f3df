"""Sender authentication on the real server: SPF at MAIL, DKIM, ARC and
DMARC at DATA, an Authentication-Results header on accepted mail (forged
ones for our authserv-id removed), with the DNS answers from a loopback DNS
server; and the verdicts replayed offline from the recording."""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path

import dkim
import nacl.encoding
import nacl.signing
import pytest

from smtpfw.lang.compiler import compile_ruleset
from smtpfw.replay.session import replay_record
from tests.smtp_client import RawClient
from tests.support.server import maildir_messages, recorded_sessions, running_server
from tests.support.zoneserver import ZoneServer

RULES = """
option authentication_results = "mx.test"
on mail:
    [spf-fail] reject 550 5.7.23 "SPF: {client.ip} may not send for {sender.domain}" if spf = "fail"
on rcpt:
    [local] accept if rcpt.domain in localnames
    [relay] reject 554 5.7.1 "Relaying denied"
on data:
    [dmarc-reject] reject 550 5.7.1 "DMARC: {dmarc.from} asks to reject unauthenticated mail" if dmarc = "fail" and dmarc.policy = "reject"
    [signed-by] add_header "X-Signed-By" "{dkim.domains}" if dkim = "pass"
"""


@pytest.fixture(scope="module")
def key():
    signer = nacl.signing.SigningKey.generate()
    txt = "v=DKIM1; k=ed25519; p=" + signer.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
    return signer.encode(encoder=nacl.encoding.Base64Encoder), txt


@pytest.fixture(scope="module")
def dns_server(key):
    with ZoneServer() as srv:
        srv.set_zone({
            ("example.com.", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
            ("_dmarc.example.com.", "TXT"): ["v=DMARC1; p=reject"],
            ("ed._domainkey.example.com.", "TXT"): [key[1]],
            ("bank.test.", "TXT"): ["v=spf1 -all"],
            ("_dmarc.bank.test.", "TXT"): ["v=DMARC1; p=reject; sp=quarantine"],
            ("strict.test.", "TXT"): ["v=spf1 ip4:192.0.2.1 -all"],
            ("other.test.", "TXT"): ["v=spf1 +all"],
        })
        yield srv


def message(sender_header: str, body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return (f"{extra}From: {sender_header}\r\nTo: root@localhost\r\nSubject: test\r\n"
            f"Message-ID: <x@example.com>\r\n\r\n{body}").encode()


def signed(msg: bytes, key) -> bytes:
    return dkim.sign(msg, b"ed", b"example.com", key[0], signature_algorithm=b"ed25519-sha256",
                     include_headers=[b"from", b"to", b"subject", b"message-id"]) + msg


def send(srv, sender: str, msg: bytes) -> tuple[int, str]:
    with smtplib.SMTP(*srv.address, timeout=30) as s:
        s.ehlo("mail.example.com")
        try:
            s.sendmail(sender, ["root@localhost"], msg)
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        except smtplib.SMTPSenderRefused as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, ""


def test_authenticated_mail_gets_its_authentication_results(tmp_path, dns_server, key):
    with running_server(rules_text=RULES, dns=dns_server) as srv:
        forged = "Authentication-Results: mx.test; spf=pass smtp.mailfrom=evil.example; dmarc=pass\r\n" \
                 "Authentication-Results: other.example; spf=fail\r\n"
        assert send(srv, "alice@example.com", signed(message("Alice <alice@example.com>", extra=forged), key)) \
            == (250, "")
        (got,) = maildir_messages(Path(srv.tmpdir) / "maildir")
    head = got.split(b"\r\n\r\n", 1)[0].decode()
    ours = [h for h in head.replace("\r\n\t", " ").split("\r\n") if h.startswith("Authentication-Results: mx.test")]
    assert len(ours) == 1, head                                     # the forged one is gone
    assert "spf=pass smtp.mailfrom=alice@example.com" in ours[0]
    assert "dkim=pass" in ours[0] and "header.d=example.com" in ours[0] and "dmarc=pass" in ours[0]
    assert "Authentication-Results: other.example; spf=fail" in head     # another server's stays
    assert "X-Signed-By: example.com" in head
    assert head.index("Authentication-Results: mx.test") < head.index("Received:")


def test_dmarc_reject_is_honoured(dns_server):
    with running_server(rules_text=RULES, dns=dns_server) as srv:
        # the envelope passes SPF for other.test, but From: is bank.test: not aligned, no signature
        code, text = send(srv, "x@other.test", message("Bank <service@bank.test>"))
        assert (code, text) == (550, "5.7.1 DMARC: bank.test asks to reject unauthenticated mail")
        # a subdomain of bank.test: sp=quarantine, not reject: the rules let it in
        assert send(srv, "x@other.test", message("<news@mail.bank.test>")) == (250, "")


def test_spf_fail_is_refused_at_mail(dns_server):
    with running_server(rules_text=RULES, dns=dns_server) as srv:
        with RawClient(srv.address, timeout=30) as c:
            c.reply()
            c.cmd("EHLO mail.example.com")
            assert c.cmd("MAIL FROM:<bob@strict.test>") == \
                "550 5.7.23 SPF: 127.0.0.1 may not send for strict.test"


def test_a_changed_body_fails_dkim_and_then_dmarc(dns_server, key):
    with running_server(rules_text=RULES, dns=dns_server) as srv:
        good = signed(message("Alice <alice@example.com>"), key)
        tampered = good.replace(b"Hello.", b"Hullo.")
        # SPF still passes and is aligned for example.com: DMARC passes on SPF alone
        assert send(srv, "alice@example.com", tampered) == (250, "")
        # from a sender whose SPF does not align, only the (broken) signature could have passed DMARC
        assert send(srv, "x@other.test", tampered)[0] == 550


def test_the_verdicts_replay_offline(tmp_path, dns_server, key):
    rec = tmp_path / "rec"
    with running_server(rules_text=RULES, dns=dns_server, recording_enabled=True, recording_path=str(rec)) as srv:
        assert send(srv, "alice@example.com", signed(message("Alice <alice@example.com>"), key)) == (250, "")
        assert send(srv, "x@other.test", message("Bank <service@bank.test>"))[0] == 550
        records = recorded_sessions(rec, 2)
        rules = Path(srv.tmpdir) / "test.rules"
        ruleset, diags = compile_ruleset(str(rules))
    assert ruleset is not None, diags
    providers = sorted({f["provider"] for r in records for f in r["facts"]})
    assert providers == ["dkim", "dmarc", "spf"]
    verdicts = [replay_record(ruleset, r).verdict.key() for r in records]
    assert verdicts == [("accepted", None, None, None), ("rejected", "data", "dmarc-reject", 550)]


# ---- scanners: real clamd and spamd ----------------------------------------------------

SCAN_RULES = """
on rcpt:
    [local] accept if rcpt.domain in localnames
    [relay] reject 554 5.7.1 "Relaying denied"
on data:
    [trusted] accept if client.ip = "127.0.0.9"
    [virus] reject 554 5.7.1 "Virus found: {virus.name}" if virus = "infected"
    [scanner-down] tempfail 451 4.7.0 "Cannot scan for viruses now, try again later" if virus = "error"
    [spam] reject 550 5.7.1 "Spam ({spam.score} points)" if spam = "spam"
    [spam-score] add_header "X-Spam-Score" "{spam.score}" if spam = "ham"
"""


@pytest.fixture(scope="module")
def scanners():
    from tests.support.scanners import ClamdInstance, SpamdInstance, scanners_available
    for kind in ("clamd", "spamd"):
        why = scanners_available(kind)
        if why:
            pytest.fail(why)
    with ClamdInstance() as clamd, SpamdInstance() as spamd:
        yield clamd, spamd


def ham(extra: str = "", body: str = "Hello Bob, the minutes of today's meeting are attached.\r\n") -> bytes:
    return (f"From: Alice <alice@example.com>\r\nTo: Bob <root@localhost>\r\nSubject: minutes\r\n"
            f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n{extra}\r\n{body}").encode()


def with_attachment(data: bytes) -> bytes:
    return ham('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n',
               "--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b1\r\n"
               "Content-Type: application/octet-stream; name=\"x.com\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.b64encode(data).decode() + "\r\n--b1--\r\n")


def test_viruses_and_spam_are_refused_with_real_scanners(scanners):
    from tests.support.scanners import EICAR, EICAR_VIRUS, GTUBE
    clamd, spamd = scanners
    with running_server(rules_text=SCAN_RULES, scanners_clamd=clamd.address, scanners_spamd=spamd.address,
                        scanners_timeout=10) as srv:
        assert send(srv, "alice@example.com", with_attachment(EICAR)) == (554, f"5.7.1 Virus found: {EICAR_VIRUS}")
        code, text = send(srv, "alice@example.com", ham(body=f"{GTUBE}\r\n"))
        assert code == 550 and text.startswith("5.7.1 Spam (1000") , text
        assert send(srv, "alice@example.com", ham()) == (250, "")
        (got,) = maildir_messages(Path(srv.tmpdir) / "maildir")
        assert b"X-Spam-Score: " in got


def test_a_dead_scanner_tempfails_within_the_timeout_and_rules_can_skip_it(scanners):
    import time

    from tests.support.scanners import ClamdInstance
    clamd, spamd = scanners
    with ClamdInstance() as doomed, running_server(rules_text=SCAN_RULES, scanners_clamd=doomed.address,
                                                   scanners_spamd=spamd.address, scanners_timeout=1) as srv:
        doomed.pause()
        try:
            started = time.monotonic()
            assert send(srv, "alice@example.com", ham()) == (451, "4.7.0 Cannot scan for viruses now, try again later")
            assert time.monotonic() - started < 4
        finally:
            doomed.resume()
        doomed.kill()
        assert send(srv, "alice@example.com", ham())[0] == 451
        # a rule before the scan decides: the trusted client is never scanned
        with smtplib.SMTP(*srv.address, timeout=30, source_address=("127.0.0.9", 0)) as s:
            s.ehlo("relay.example.com")
            assert s.sendmail("alice@example.com", ["root@localhost"], ham()) == {}


def test_scans_are_recorded_and_replay(tmp_path, scanners):
    from tests.support.scanners import EICAR
    clamd, spamd = scanners
    rec = tmp_path / "rec"
    with running_server(rules_text=SCAN_RULES, scanners_clamd=clamd.address, scanners_spamd=spamd.address,
                        recording_enabled=True, recording_path=str(rec)) as srv:
        assert send(srv, "alice@example.com", with_attachment(EICAR))[0] == 554
        (record,) = recorded_sessions(rec, 1)
        ruleset, diags = compile_ruleset(str(Path(srv.tmpdir) / "test.rules"))
    assert ruleset is not None, diags
    scans = [f for f in record["facts"] if f["provider"] == "scan"]
    assert [f["value"]["status"] for f in scans] == ["infected"]             # spamd was never asked: lazy
    assert replay_record(ruleset, record).verdict.key() == ("rejected", "data", "virus", 554)


# ---- header and body checks, MIME structure -------------------------------------------

CHECK_RULES = """
map header_checks = regexp "header_checks"
map body_checks = pcre "body_checks"
on rcpt:
    [local] accept if rcpt.domain in localnames
    [relay] reject 554 5.7.1 "Relaying denied"
on data:
    [header-checks] apply header_checks(headers)
    [body-checks] apply body_checks(body.lines)
    [exe] reject 554 5.7.1 "Executable attachments are not accepted: {attachment.names}" if attachment.names matches "(?i)\\\\.(exe|scr|com|bat)$"
    [zip-type] tag archive if attachment.types = "application/zip"
"""


def test_header_and_body_checks_and_attachment_names(tmp_path):
    import shutil
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "header_checks").write_text(
        "# Postfix header_checks(5), as it is\n"
        "/^Subject:.*viagra/   REJECT Spam subject\n"         # case-insensitive (Postfix's default; /i toggles)
        "/^X-Mailer: SpamBot/   550 5.7.1 Known spam software\n")
    (folder / "body_checks").write_text("/^Click here to claim your prize/   REJECT Spam body\n")
    (folder / "site.rules").write_text(CHECK_RULES)
    with running_server(folder / "site.rules") as srv:
        assert send(srv, "a@example.com", ham("Subject-Extra: x\r\n").replace(b"Subject: minutes", b"Subject: Cheap VIAGRA")) \
            == (554, "5.7.1 Spam subject")
        assert send(srv, "a@example.com", ham("X-Mailer: SpamBot 2.0\r\n"))[0] == 550
        assert send(srv, "a@example.com", ham(body="Hi!\r\nClick here to claim your prize\r\n")) \
            == (554, "5.7.1 Spam body")
        code, text = send(srv, "a@example.com", with_attachment(b"MZ...").replace(b'name="x.com"', b'name="invoice.PDF.exe"'))
        assert (code, text) == (554, "5.7.1 Executable attachments are not accepted: invoice.PDF.exe")
        assert send(srv, "a@example.com", with_attachment(b"%PDF-1.4").replace(b'name="x.com"', b'name="report.pdf"')) \
            == (250, "")
    shutil.rmtree(folder)


def test_attachment_names_are_recorded_and_replay(tmp_path):
    rec = tmp_path / "rec"
    rules = tmp_path / "site.rules"
    rules.write_text(CHECK_RULES.replace('map header_checks = regexp "header_checks"\n', "")
                     .replace('map body_checks = pcre "body_checks"\n', "")
                     .replace("    [header-checks] apply header_checks(headers)\n", "")
                     .replace("    [body-checks] apply body_checks(body.lines)\n", ""))
    with running_server(rules, recording_enabled=True, recording_path=str(rec)) as srv:
        msg = with_attachment(b"MZ").replace(b'name="x.com"', b'name="setup.exe"')
        assert send(srv, "a@example.com", msg)[0] == 554
        (record,) = recorded_sessions(rec, 1)
    (mime,) = [f for f in record["facts"] if f["provider"] == "mime"]
    assert mime["value"] == {"names": ["setup.exe"],
                             "types": ["multipart/mixed", "text/plain", "application/octet-stream"]}
    ruleset, diags = compile_ruleset(str(rules))
    assert ruleset is not None, diags
    assert replay_record(ruleset, record).verdict.key() == ("rejected", "data", "exe", 554)


def test_one_ruleset_for_dmarc_viruses_scanner_outage_and_authentication_results(tmp_path, dns_server, key,
                                                                                 scanners):
    """The issue's end to end: rejects DMARC p=reject failures and viruses,
    tempfails when the scanner is out, adds Authentication-Results."""
    from tests.support.scanners import EICAR, ClamdInstance
    rules = RULES + "\n".join(line for line in SCAN_RULES.splitlines() if "[virus]" in line or "[scanner-down]" in line)
    clamd, _spamd = scanners
    with ClamdInstance() as own_clamd, \
            running_server(rules_text=rules, dns=dns_server, scanners_clamd=own_clamd.address, scanners_timeout=1) as srv:
        good = signed(message("Alice <alice@example.com>"), key)
        assert send(srv, "alice@example.com", good) == (250, "")
        assert send(srv, "x@other.test", message("Bank <service@bank.test>"))[0] == 550            # DMARC
        infected = signed(with_attachment(EICAR).replace(b"From: Alice <alice@example.com>\r\n", b"")
                          .replace(b"To: Bob", b"From: Alice <alice@example.com>\r\nTo: Bob"), key)
        assert send(srv, "alice@example.com", infected)[0] == 554                                 # virus
        own_clamd.kill()
        assert send(srv, "alice@example.com", good) == (451, "4.7.0 Cannot scan for viruses now, try again later")
        (delivered,) = maildir_messages(Path(srv.tmpdir) / "maildir")
    assert b"Authentication-Results: mx.test;" in delivered and b"dmarc=pass" in delivered
