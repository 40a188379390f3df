"""rules/examples/ translations of public configurations, on the real
server with a real DNS server on loopback: postscreen's weighted DNSBL
(docker-mailserver) and iRedMail's HELO restrictions around a Postfix pcre
table in the form of iRedMail's helo_access.pcre (smtpfw's own, loaded as it
is).  The replies are the exact ones a client sees."""

from __future__ import annotations

import pytest

from tests.support.dnsserver import DnsServer
from tests.support.server import recorded_sessions, running_server
from tests.test_examples import EXAMPLES, session

OK_RCPT = "250 2.1.5 Recipient OK"

# ---- postscreen_dnsbl.rules -----------------------------------------------------

ZONES = ("zen.spamhaus.org", "bl.mailspike.net", "b.barracudacentral.org", "bl.spameatingmonkey.net",
         "dnsbl.sorbs.net", "psbl.surriel.com", "list.dnswl.org")

# client address -> {zone: answer}; weights: zen 3, barracuda 2, the others 1,
# dnswl -2/-3/-4 by trust level (the last octet); threshold 3, allowlist -1.
LISTINGS = {
    "127.0.0.2": {zone: "127.0.0.2" for zone in ZONES[:-1]},          # RFC 5782 test entry
    "127.0.0.10": {"zen.spamhaus.org": "127.0.0.4"},                    # 3
    "127.0.0.11": {"b.barracudacentral.org": "127.0.0.2", "psbl.surriel.com": "127.0.0.2"},   # 2 + 1
    "127.0.0.12": {"b.barracudacentral.org": "127.0.0.2"},              # 2
    "127.0.0.13": {"zen.spamhaus.org": "127.0.0.2", "b.barracudacentral.org": "127.0.0.2",
                   "list.dnswl.org": "127.0.5.1"},                      # 3 + 2 - 3
    "127.0.0.14": {"list.dnswl.org": "127.0.9.3"},                      # -4: allowlisted
    "127.0.0.15": {"bl.mailspike.net": "127.0.0.3", "b.barracudacentral.org": "127.0.0.2"},  # 0 + 2
    "127.0.0.16": {"bl.mailspike.net": "127.0.0.12", "b.barracudacentral.org": "127.0.0.2"},  # 1 + 2
    "127.0.0.17": {"zen.spamhaus.org": "127.0.0.255"},                  # not a listing: 0
}


def _reversed(ip: str) -> str:
    return ".".join(reversed(ip.split(".")))


@pytest.fixture(scope="module")
def postscreen_dns():
    records = {(f"{_reversed(ip)}.{zone}.", "A"): [code]
               for ip, answers in LISTINGS.items() for zone, code in answers.items()}
    with DnsServer(records=records, authoritative=[f"{zone}." for zone in ZONES]) as server:
        yield server


def screened_loopback() -> str:
    """postscreen_dnsbl.rules without 127.0.0.0/8 in mynetworks (docker-mailserver
    has it there, as postscreen_access_list's default permits mynetworks), so
    that clients on loopback are screened."""
    text = (EXAMPLES / "postscreen_dnsbl.rules").read_text()
    assert "[127.0.0.0/8, " in text and 'include "../default.rules"' in text
    return text.replace("[127.0.0.0/8, ", "[").replace(
        'include "../default.rules"', f'include "{EXAMPLES.parent / "default.rules"}"')


def blocked(ip: str, rank: int) -> str:
    return f"550 5.7.1 Service unavailable; client [{ip}] blocked using DNSBLs (rank {rank})"


@pytest.mark.parametrize("source,rcpt_reply", [
    ("127.0.0.10", blocked("127.0.0.10", 3)),
    ("127.0.0.11", blocked("127.0.0.11", 3)),
    ("127.0.0.16", blocked("127.0.0.16", 3)),
    ("127.0.0.2", blocked("127.0.0.2", 9)),
    ("127.0.0.12", OK_RCPT),
    ("127.0.0.13", OK_RCPT),
    ("127.0.0.14", OK_RCPT),
    ("127.0.0.15", OK_RCPT),
    ("127.0.0.17", OK_RCPT),
    ("127.0.0.30", OK_RCPT),                  # listed nowhere
])
def test_postscreen_weighted_dnsbl(postscreen_dns, source, rcpt_reply):
    """postscreen_dnsbl_action = enforce: the client is greeted, its HELO
    and MAIL are taken, and every RCPT gets the 550."""
    with running_server(rules_text=screened_loopback(), dns=postscreen_dns) as srv:
        helo, mail, rcpts, _ = session(srv, source=source, rcpts=("u@localhost", "postmaster@localhost"))
    assert helo.startswith("250 ") and mail == "250 2.1.0 Sender OK"
    assert rcpts == {"u@localhost": rcpt_reply, "postmaster@localhost": rcpt_reply}


def test_postscreen_score_breakdown_is_recorded(postscreen_dns, tmp_path):
    """The session record says which entry of postscreen_dnsbl_sites added what."""
    with running_server(rules_text=screened_loopback(), dns=postscreen_dns, recording_enabled=True,
                        recording_path=str(tmp_path / "rec")) as srv:
        assert session(srv, source="127.0.0.13")[2] == {"u@localhost": OK_RCPT}
        assert session(srv, source="127.0.0.2")[2] == {"u@localhost": blocked("127.0.0.2", 9)}
        records = {r["client"]["ip"]: r for r in recorded_sessions(tmp_path / "rec", 2)}
    assert records["127.0.0.13"]["scores"] == {
        "dnsbl": {"total": 2, "by": [["zen", 3], ["barracuda", 2], ["dnswl-1", -3]]}}
    assert records["127.0.0.2"]["scores"]["dnsbl"]["total"] == 9


def test_postscreen_permits_mynetworks(postscreen_dns):
    """As shipped, mynetworks (127.0.0.0/8 here) skip the screening."""
    with running_server(EXAMPLES / "postscreen_dnsbl.rules", dns=postscreen_dns) as srv:
        assert session(srv, source="127.0.0.2")[2] == {"u@localhost": OK_RCPT}


# ---- helo_access_pcre.rules -----------------------------------------------------

BAD = "554 5.7.1 Bad HELO"
LOCALHOST = f"{BAD} localhost: that is every machine's name for itself; say your public host name"
VIA_PROVIDER = "send through your provider's mail server"


@pytest.fixture(scope="module")
def helo_dns():
    with DnsServer(records={("mx.good.example.", "A"): ["192.0.2.1"],
                            ("relay.good.example.", "MX"): ["10 mx.good.example."]},
                   authoritative=["example."]) as server:
        yield server


@pytest.mark.parametrize("helo,rcpt_reply", [
    # the pcre table, first match wins
    ("localhost", LOCALHOST),
    ("printer.local", f"{BAD} printer.local: that name exists only inside a private network and cannot be looked up"),
    ("192.0.2.7", f"{BAD} 192.0.2.7: an address is written in brackets, as [192.0.2.7], or give your host name"),
    ("[10.0.0.2]", f"{BAD} 10.0.0.2: a private network address cannot be where this connection comes from"),
    ("host7.adsl.isp.example",
     f"{BAD}: the name looks like a dynamic or broadband customer line (adsl); {VIA_PROVIDER}"),
    ("192-0-2-7.pool.isp.example", f"{BAD}: the name carries an address (192-0-2-7), like a customer line's; {VIA_PROVIDER}"),
    ("gmail.com", "554 5.7.1 Forged HELO gmail.com: that provider's servers do not greet with their bare domain"),
    ("[127.0.0.2]", OK_RCPT),              # OK: a bracketed literal, before the "address in the name" line
    ("[192.0.2.300]", "501 5.5.2 <[192.0.2.300]>: Helo command rejected: invalid ip address"),   # DUNNO, then the syntax check
    # not in the table: iRedMail's next restrictions
    ("mx.good.example", OK_RCPT),
    ("relay.good.example", OK_RCPT),
    ("mailhost", "504 5.5.2 <mailhost>: Helo command rejected: need fully-qualified hostname"),
    ("mx.unknown.example", "450 4.7.1 <mx.unknown.example>: Helo command rejected: Host not found"),
])
def test_helo_access_pcre(helo_dns, helo, rcpt_reply):
    """smtpd_delay_reject = yes: the HELO and MAIL are taken, the RCPT
    gets the map's (or the restriction's) refusal."""
    with running_server(EXAMPLES / "helo_access_pcre.rules", dns=helo_dns) as srv:
        helo_reply, mail, rcpts, _ = session(srv, helo=helo, source="127.0.0.2")
    assert helo_reply.startswith("250 ") and mail == "250 2.1.0 Sender OK"
    assert rcpts == {"u@localhost": rcpt_reply}


def test_helo_access_pcre_permits_mynetworks_first(helo_dns):
    """permit_mynetworks (127.0.0.1) comes before check_helo_access."""
    with running_server(EXAMPLES / "helo_access_pcre.rules", dns=helo_dns) as srv:
        assert session(srv, helo="localhost", source="127.0.0.1")[2] == {"u@localhost": OK_RCPT}
        assert session(srv, helo="localhost", source="127.0.0.3")[2] == {"u@localhost": LOCALHOST}


def test_helo_access_pcre_dns_failure_defers():
    with DnsServer(mode="servfail") as dead, \
            running_server(EXAMPLES / "helo_access_pcre.rules", dns=dead) as srv:
        assert session(srv, helo="mx.good.example", source="127.0.0.2")[2] == {
            "u@localhost": "450 4.7.1 <mx.good.example>: Helo command rejected: Host not found"}
        # the table does not need DNS
        assert session(srv, helo="localhost", source="127.0.0.2")[2] == {"u@localhost": LOCALHOST}
