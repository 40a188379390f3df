"""Shared fixtures: a loopback DNS server with ../shared/zones, downstreams."""

from __future__ import annotations

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
