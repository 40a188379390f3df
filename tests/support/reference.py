"""The reference sessions (shared/policy/README) and what each RCPT must
get: smtpfw inline (tests/test_reference_policy.py), and Postfix asking
smtpfw as a policy service or a milter, reach the same verdicts."""

from __future__ import annotations

import smtplib

# The refusals of reference.rules, each naming its rule (several share the
# code 550 5.7.1: the text says which rule refused).
OK = "250 2.1.5"
DNSBL = "554 5.7.1 Service unavailable; client [{ip}] blocked using bl.test: "
HELO = "550 5.7.1 Helo command rejected: host name {helo} is not acceptable"
MAILFROM = "550 5.7.1 Sender address rejected: your envelope sender is in my badmailfrom list"
RHSBL = "550 5.7.1 Sender address rejected: domain {domain} blocked using dbl.test: "
RCPTTO = "550 5.7.1 Recipient address rejected: blocked by badrcptto"
RELAY = "554 5.7.1 Relay access denied"

# (client ip, helo, sender, {rcpt: the start of the expected RCPT reply}, expect delivery)
SESSIONS = [
    ("127.0.0.1", "mx.good.example", "alice@good.example", {"bob@example.net": OK}, True),
    ("127.0.0.1", "mx.good.example", "", {"bob@example.net": OK}, True),                  # null sender
    ("127.0.0.2", "mx.good.example", "alice@good.example", {"bob@example.net": DNSBL}, False),
    ("127.0.0.5", "mx.good.example", "alice@good.example", {"bob@example.net": DNSBL}, False),  # code 4
    ("127.0.0.1", "bad.helo.example", "alice@good.example", {"bob@example.net": HELO}, False),
    ("127.0.0.1", "BAD.HELO.Example", "alice@good.example", {"bob@example.net": HELO}, False),
    ("127.0.0.1", "spam-helo.example", "alice@good.example", {"bob@example.net": HELO}, False),
    ("127.0.0.1", "not.bad.helo.example", "alice@good.example", {"bob@example.net": OK}, True),
    ("127.0.0.1", "mx.good.example", "joe@evil.example", {"bob@example.net": MAILFROM}, False),
    ("127.0.0.1", "mx.good.example", "JOE@Evil.Example", {"bob@example.net": MAILFROM}, False),
    ("127.0.0.1", "mx.good.example", "other@evil.example", {"bob@example.net": OK}, True),
    ("127.0.0.1", "mx.good.example", "anyone@spammer.example", {"bob@example.net": MAILFROM}, False),
    ("127.0.0.1", "mx.good.example", "anyone@sub.spammer.example", {"bob@example.net": OK}, True),
    ("127.0.0.1", "mx.good.example", "x@spam.example", {"bob@example.net": RHSBL}, False),
    ("127.0.0.1", "mx.good.example", "x@SPAM.Example", {"bob@example.net": RHSBL}, False),
    ("127.0.0.1", "mx.good.example", "x@bad.example", {"bob@example.net": RHSBL}, False),
    ("127.0.0.1", "mx.good.example", "x@sub.spam.example", {"bob@example.net": OK}, True),
    ("127.0.0.1", "mx.good.example", "alice@good.example",
     {"blocked@example.net": RCPTTO, "trap@example.net": RCPTTO, "TRAP@EXAMPLE.NET": RCPTTO,
      "bob@example.net": OK}, True),
    ("127.0.0.1", "mx.good.example", "alice@good.example",
     {"bob@other.example": RELAY, "bob@sub.example.net": RELAY, "bob@example.net": OK}, True),
    ("127.0.0.1", "mx.good.example", "alice@good.example", {"bob@EXAMPLE.NET": OK}, True),
]


SESSION_IDS = [f"{s[0]}-{s[1]}-{s[2] or 'null'}-{'+'.join(s[3])}" for s in SESSIONS]


def expected(want: str, client: str, helo: str, sender: str) -> str:
    return want.format(ip=client, helo=helo.lower(), domain=sender.rpartition("@")[2].lower())


def check_rcpts_behind_postfix(port: int, client: str, helo: str, sender: str, rcpts: dict) -> None:
    """One reference session through a Postfix that asks smtpfw: each RCPT
    gets the reference's code and enhanced code, and the text smtpfw gives
    inline (Postfix may put "<rcpt>: Recipient address rejected: " first)."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(client, 0), timeout=30) as s:
        assert s.ehlo(helo)[0] == 250
        s.mail(sender)
        for rcpt, want in rcpts.items():
            code, text = s.rcpt(rcpt)
            want_code, want_enhanced, want_text = (expected(want, client, helo, sender).split(" ", 2) + [""])[:3]
            assert (code, text.split()[0].decode()) == (int(want_code), want_enhanced), (rcpt, code, text)
            assert want_text in text.decode(), (rcpt, text)
