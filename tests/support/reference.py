"""The reference sessions (shared/policy/README) and what each RCPT must
get: smtpfw inline (tests/test_reference_policy.py), and Postfix asking
smtpfw as a policy service or a milter, reach the same verdicts."""

from __future__ import annotations

import smtplib
from pathlib import Path

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


# ---- the reference policy in Postfix's own terms (bench/policy_bench.py, the round-trip test) ----

def read_list(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def postfix_native(tmp: Path, policy: Path) -> dict[str, str]:
    """The reference policy in Postfix's own restrictions.  Access tables are
    texthash (no postmap; keys are case-folded); with
    parent_domain_matches_subdomains not naming smtpd_access_maps and
    relay_domains (see base_settings), list entries match exactly, as the
    reference wants (``domain`` in access(5) is badmailfrom's ``@domain``)."""
    d = tmp / "postfix-tables"
    d.mkdir()
    (d / "badhelo").write_text("".join(f"{h} 550 5.7.1 not acceptable\n" for h in read_list(policy / "badhelo")))
    (d / "badmailfrom").write_text("".join(
        f"{a.removeprefix('@')} 550 5.7.1 your envelope sender is in my badmailfrom list\n"
        for a in read_list(policy / "badmailfrom")))
    (d / "badrcptto").write_text("".join(f"{a} 550 5.7.1 blocked by badrcptto\n"
                                         for a in read_list(policy / "badrcptto")))
    (d / "relayhack").write_text("/[%!@].*@/ 550 5.7.1 Relaying denied: address form not accepted\n")
    (d / "rbl_reply").write_text("dbl.test 550 5.7.1 Sender address rejected: domain $rbl_what blocked using "
                                 "$rbl_domain${rbl_reason?; $rbl_reason}\n")
    for f in d.iterdir():
        f.chmod(0o644)
    return {
        "rbl_reply_maps": f"texthash:{d / 'rbl_reply'}",
        "smtpd_recipient_restrictions": ", ".join([
            "reject_rbl_client bl.test",
            f"check_helo_access texthash:{d / 'badhelo'}",
            f"check_sender_access texthash:{d / 'badmailfrom'}",
            "reject_rhsbl_sender dbl.test",
            f"check_recipient_access regexp:{d / 'relayhack'}",
            f"check_recipient_access texthash:{d / 'badrcptto'}",
            "reject_unauth_destination",
        ]),
    }


def base_settings(sink_port: int, policy: Path) -> dict[str, str]:
    return {
        "relay_domains": ", ".join(read_list(policy / "rcpthosts")),
        "relayhost": f"[127.0.0.1]:{sink_port}",
        "smtp_dns_support_level": "disabled",
        "parent_domain_matches_subdomains": "debug_peer_list, fast_flush_domains, mynetworks, "
                                            "permit_mx_backup_networks, qmqpd_authorized_clients",
        "smtpd_policy_service_timeout": "100s",
    }
