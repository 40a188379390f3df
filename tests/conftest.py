"""Shared fixtures: a loopback DNS server with ../shared/zones, a TLS
certificate, an AUTH users file."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.dnsserver import DnsServer
from tests.support.server import SHARED

ZONES = SHARED / "zones"


@pytest.fixture(scope="session")
def shared_dns():
    """A real DNS server on loopback serving the reference zones."""
    with DnsServer([ZONES / "bl.test", ZONES / "dbl.test"],
                   records={("mx.example.", "MX"): ["10 mail.mx.example."],
                            ("null.example.", "MX"): ["0 ."]},
                   authoritative=["example.", "in-addr.arpa."]) as server:
        yield server


@pytest.fixture(scope="session")
def cert(tmp_path_factory):
    """A self-signed certificate for mx.test (ECDSA P-256): (cert, key) paths."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed for the TLS tests")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=mx.test", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return str(d / "cert.pem"), str(d / "key.pem")


@pytest.fixture(scope="session")
def users(tmp_path_factory):
    """An AUTH users file: alice / s3cret."""
    from smtpfw.auth import hash_password
    path = tmp_path_factory.mktemp("auth") / "users"
    path.write_text(f"# test users\nalice:{hash_password('s3cret')}\n")
    return str(path)
