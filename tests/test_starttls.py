"""STARTTLS: offered when a certificate is configured; `tls` is known to rules."""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess

import pytest

from tests.support.server import running_server

RULES = """
on mail:
    [need-tls] reject 530 5.7.0 "Must issue a STARTTLS command first" if not tls
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.test", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_starttls_and_tls_field(cert):
    certfile, keyfile = cert
    with running_server(rules_text=RULES, tls_cert=str(certfile), tls_key=str(keyfile)) as srv:
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            s.ehlo("client.example")
            assert s.has_extn("starttls")
            assert s.mail("a@b.example")[0] == 530
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
            assert s.docmd("STARTTLS")[0] == 502
