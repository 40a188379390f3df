"""Envelope paths as RFC 5321 writes them (smtpfw.protocol.address)."""

from __future__ import annotations

import pytest

from smtpfw.protocol.address import parse_path


@pytest.mark.parametrize("text, expected", [
    ("<alice@example.org>", ("alice@example.org", "")),
    ("<alice@example.org> SIZE=100 BODY=8BITMIME", ("alice@example.org", "SIZE=100 BODY=8BITMIME")),
    ("alice@example.org", ("alice@example.org", "")),                         # bare, as real clients send
    ("alice@example.org SIZE=1", ("alice@example.org", "SIZE=1")),
    ('<"john doe"@example.org>', ('"john doe"@example.org', "")),             # quoted local part
    ('<"a\\"b"@example.org>', ('"a\\"b"@example.org', "")),
    ("<user@[192.0.2.1]>", ("user@[192.0.2.1]", "")),                          # address literal
    ("<user@[IPv6:2001:db8::1]>", ("user@[IPv6:2001:db8::1]", "")),
    ("<@relay.example,@hop.example:user@example.org>", ("user@example.org", "")),   # source route dropped
    ("<Postmaster>", ("Postmaster", "")),
    ("<jörg@bücher.example>", ("jörg@bücher.example", "")),                  # SMTPUTF8
    ("<a.b+tag@sub.example.org>", ("a.b+tag@sub.example.org", "")),
])
def test_paths(text, expected):
    assert parse_path(text) == expected


@pytest.mark.parametrize("text", [
    "", "<>", "<", "<alice>", "alice", '"', "<a@b.example", "a@b.example>", "<a..b@example.org>",
    "<.a@example.org>", "<a@-example.org>", "<a@exa mple.org>", "<a@b.example>x", "(comment) <a@b.example>",
    "<a@b.example (comment)>", "<a b@example.org>", '!1@[é@', "<a@[]>", "<a@example.org.>",
])
def test_not_paths(text):
    assert parse_path(text) is None


def test_local_part_limit():
    assert parse_path("<" + "a" * 65 + "@example.org>", local_part_limit=64) is None
    assert parse_path("<" + "a" * 64 + "@example.org>", local_part_limit=64) is not None
