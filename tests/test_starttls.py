"""STARTTLS: offered when a certificate is configured; `tls` is known to rules."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from tests.smtp_client import RawClient
from tests.support.server import running_server

RULES = """
on mail:
    [need-tls] reject 530 5.7.0 "Must issue a STARTTLS command first" if not tls
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


def test_starttls_and_tls_field(cert):
    certfile, keyfile = cert
    with running_server(rules_text=RULES, tls_cert=str(certfile), tls_key=str(keyfile)) as srv:
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            s.ehlo("client.example")
            assert s.has_extn("starttls")
            code, text = s.mail("a@b.example")
            assert code == 530 and text.startswith(b"5.7.0 ")           # RFC 3207: STARTTLS first
            s.rset()
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            assert s.starttls(context=ctx)[0] == 220
            s.ehlo("client.example")
            assert not s.has_extn("starttls")
            assert s.sendmail("a@b.example", ["u@localhost"], b"Subject: tls\r\n\r\nx\r\n") == {}


def test_no_starttls_without_certificate():
    with running_server(rules_text=RULES) as srv:
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            s.ehlo("client.example")
            assert not s.has_extn("starttls")
            code, text = s.docmd("STARTTLS")
            assert code == 502 and text.startswith(b"5.5.1 "), text


# ---- SMTP AUTH (after STARTTLS) -------------------------------------------

AUTH_RULES = """
on rcpt:
    [authenticated] accept if auth and auth.user = "alice"
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


def _tls(s):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo("client.example")


def test_auth_offered_only_after_starttls_and_lets_users_relay(cert, users):
    certfile, keyfile = cert
    with running_server(rules_text=AUTH_RULES, tls_cert=str(certfile), tls_key=str(keyfile),
                        auth_users_file=str(users)) as srv:
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            s.ehlo("client.example")
            assert not s.has_extn("auth")
            code, text = s.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")
            assert code == 538 and text.startswith(b"5.7.11 ")           # RFC 4954: encryption required
            _tls(s)
            assert s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"]
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                s.login("alice", "wrong")
            assert err.value.smtp_code == 535 and err.value.smtp_error.startswith(b"5.7.8 ")
            s.login("alice", "s3cret")
            assert s.sendmail("alice@example.org", ["bob@far.example"], b"Subject: relayed\r\n\r\nx\r\n") == {}
        with smtplib.SMTP(*srv.address, timeout=10) as s:          # no AUTH: no relay
            s.ehlo("client.example")
            _tls(s)
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                s.sendmail("alice@example.org", ["bob@far.example"], b"Subject: x\r\n\r\nx\r\n")


def test_auth_login_mechanism_plaintext_allowed(users):
    with running_server(rules_text=AUTH_RULES, auth_users_file=str(users), auth_allow_plaintext=True) as srv:
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            s.ehlo("client.example")
            s.user, s.password = "alice", "s3cret"
            assert s.auth("LOGIN", s.auth_login)[0] == 235
            assert s.sendmail("alice@example.org", ["bob@far.example"], b"Subject: x\r\n\r\nx\r\n") == {}


def test_failed_logins_are_cut_off(users):
    with running_server(rules_text=AUTH_RULES, auth_users_file=str(users), auth_allow_plaintext=True,
                        max_errors=3) as srv:
        c = RawClient(srv.address)
        c.reply()
        c.cmd("EHLO client.example")
        replies = [c.cmd("AUTH PLAIN AGFsaWNlAG5vcGU=") for _ in range(4)]     # alice / nope
        assert all(r.startswith("535 5.7.8") for r in replies)
        assert c.line().startswith("421 4.7.0")          # more failures than max_errors
        assert c.closed()


def test_users_file_errors_name_the_line(tmp_path):
    from smtpfw.auth import Users
    from smtpfw.config import ConfigError
    bad = tmp_path / "users"
    bad.write_text("alice:plaintext\n")
    with pytest.raises(ConfigError, match=r"users:1: expected USER:scrypt"):
        Users.load(str(bad))


def test_recorded_auth_replays(tmp_path, users):
    """AUTH is a session event: a dry-run of the recording sees who authenticated, and when."""
    from smtpfw.lang.compiler import compile_ruleset
    from smtpfw.recording import read_records
    from smtpfw.replay.session import replay_record, same_as_recorded

    rec_dir = tmp_path / "sessions"
    with running_server(rules_text=AUTH_RULES, auth_users_file=str(users), auth_allow_plaintext=True,
                        recording_enabled=True, recording_path=str(rec_dir)) as srv:
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            s.ehlo("client.example")
            s.login("alice", "s3cret")
            s.sendmail("alice@example.org", ["bob@far.example"], b"Subject: x\r\n\r\nx\r\n")
        rules_path = srv.server.rules_path
    (record,) = [r for f in rec_dir.iterdir() for r in read_records(str(f))]
    assert {"cmd": "auth", "user": "alice"} in record["events"]
    ruleset, _ = compile_ruleset(rules_path)
    result = replay_record(ruleset, record)
    assert same_as_recorded(record, result)
