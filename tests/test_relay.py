"""Not an open relay (issue 9).

The probes public open-relay testers send (percent hack, source routes,
quoted local parts, user@local@other, bang paths, IP literals, trailing
dots, case games, unqualified names, comments, escapes, local-looking
HELO, null and forged local senders), against rules/default.rules (local
domain "localhost", Maildir) and rules/reference.rules (local domain
"example.net", forward mode, real loopback DNS).

"Relays" means: a RCPT for a mailbox that is not in a local domain gets a
2xx.  None may.  Each probe is its own session; after the refusal a DATA
must find no valid recipient, and at the end nothing at all has reached
the Maildir or the downstream.  A few forms do name a local mailbox (a
source route ending at a local address, which RFC 5321 C says to ignore,
or a local domain with a trailing dot): they may be accepted, but then
only the local mailbox may be what is delivered to.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest

from tests.smtp_client import RawClient
from tests.support.downstream import Downstream
from tests.support.server import REPO, maildir_messages, running_server

OTHER = "relay-target.example"
OTHER2 = "second-hop.example"

# (HELO, MAIL FROM argument, RCPT TO argument) templates; {L} local domain,
# {O}/{P} foreign domains.
PROBES = [
    ("client.example", "<probe@client.example>", "<user@{O}>"),
    ("client.example", "<probe@client.example>", "user@{O}"),
    ("client.example", "<probe@client.example>", "<USER@{OU}>"),
    ("client.example", "<probe@client.example>", "<user@{O}.>"),
    ("client.example", "<probe@client.example>", "<user@{O}..>"),
    ("client.example", "<probe@client.example>", "<user%{O}@{L}>"),
    ("client.example", "<probe@client.example>", "<USER%{OU}@{LU}>"),
    ("client.example", "<probe@client.example>", "<user%{O}@[127.0.0.1]>"),
    ("client.example", "<probe@client.example>", "<user%{O}%{P}@{L}>"),
    ("client.example", "<probe@client.example>", "<\"user@{O}\"@{L}>"),
    ("client.example", "<probe@client.example>", "<\"user%{O}\"@{L}>"),
    ("client.example", "<probe@client.example>", "<\"user@{O}\">"),
    ("client.example", "<probe@client.example>", "<\"{O}!user\"@{L}>"),
    ("client.example", "<probe@client.example>", "<user\\@{O}@{L}>"),
    ("client.example", "<probe@client.example>", "<user@{O}@{L}>"),
    ("client.example", "<probe@client.example>", "<user@{L}@{O}>"),
    ("client.example", "<probe@client.example>", "<{O}!user@{L}>"),
    ("client.example", "<probe@client.example>", "<{O}!{P}!user@{L}>"),
    ("client.example", "<probe@client.example>", "<{O}!user>"),
    ("client.example", "<probe@client.example>", "<user@{O}!{L}>"),
    ("client.example", "<probe@client.example>", "<@{L}:user@{O}>"),
    ("client.example", "<probe@client.example>", "<@{L},@{P}:user@{O}>"),
    ("client.example", "<probe@client.example>", "@{L}:user@{O}"),
    ("client.example", "<probe@client.example>", "<user@[1.2.3.4]>"),
    ("client.example", "<probe@client.example>", "<user@[127.0.0.1]>"),
    ("client.example", "<probe@client.example>", "<user@[IPv6:::1]>"),
    ("client.example", "<probe@client.example>", "<user%{O}@[1.2.3.4]>"),
    ("client.example", "<probe@client.example>", "<user>"),
    ("client.example", "<probe@client.example>", "user"),
    ("client.example", "<probe@client.example>", "<user@{L}.{O}>"),
    ("client.example", "<probe@client.example>", "<user@{O}.{L}>"),
    ("client.example", "<probe@client.example>", "<user@{L}%{O}>"),
    ("client.example", "<probe@client.example>", "<user(comment)@{O}>"),
    ("client.example", "<probe@client.example>", "<user@{O}(comment)>"),
    ("client.example", "<probe@client.example>", "<user@{O} >"),
    ("client.example", "<probe@client.example>", "< user@{O}>"),
    ("client.example", "<probe@client.example>", "<user@{O}> NOTIFY=NEVER"),
    ("client.example", "<probe@client.example>", "<user@r\u00e9lay.example> "),
    ("client.example", "<probe@client.example> SMTPUTF8", "<user@r\u00e9lay.example>"),
    ("client.example", "<probe@client.example>", "<postmaster@{O}>"),
    # local-looking HELO, null and forged local senders
    ("{L}", "<probe@client.example>", "<user@{O}>"),
    ("[127.0.0.1]", "<probe@client.example>", "<user@{O}>"),
    ("localhost", "<probe@client.example>", "<user@{O}>"),
    ("client.example", "<>", "<user@{O}>"),
    ("client.example", "<postmaster@{L}>", "<user@{O}>"),
    ("client.example", "<user@{L}>", "<user%{O}@{L}>"),
    ("{L}", "<>", "<{O}!user@{L}>"),
]
# Forms that name a local mailbox, and what becomes of each: delivered to
# that mailbox (and to nothing else), or refused (None).  Refusing is always
# safe, but a form that changes from one to the other must change here too,
# so a test that expects a delivery cannot pass by being refused.
LOCAL_FORMS = [
    ("<@{O}:user@{L}>", "user@{L}"),            # RFC 5321 C: ignore the source route
    ("<@{O},@{P}:user@{L}>", "user@{L}"),
    ("<user@{L}.>", None),                       # RFC 5321 has no trailing dot in a domain: 501 5.1.3
    ("<user@(comment){L}>", None),               # RFC 5321 has no comments: 501 5.1.3
]
RULESETS = ["default", "reference"]
# The refusals a probe may get: the relay check's, the relay-hack rule's, or
# a syntax error.  Anything else (a 4xx, an internal error) is not the relay
# policy at work, even though it does not relay either.
REFUSALS = {
    "default": {"554 5.7.1 Relaying denied", "550 5.7.1 Relaying denied: address form not accepted",
                "501 5.1.3 Bad recipient address syntax", "555 5.5.4 RCPT parameter NOTIFY not supported"},
    "reference": {"554 5.7.1 Relay access denied", "550 5.7.1 Relaying denied: address form not accepted",
                  "501 5.1.3 Bad recipient address syntax", "555 5.5.4 RCPT parameter NOTIFY not supported"},
}


def fill(template: str, local: str) -> str:
    return template.format(L=local, LU=local.upper(), O=OTHER, OU=OTHER.upper(), P=OTHER2)


class Site(NamedTuple):
    ruleset: str
    local: str                      # the local domain
    srv: object
    ds: Downstream | None           # forward mode's downstream, or None (Maildir)


@pytest.fixture(scope="module", params=RULESETS)
def site(request):
    if request.param == "default":
        with running_server(REPO / "rules" / "default.rules") as srv:
            yield Site("default", "localhost", srv, None)
    else:
        dns = request.getfixturevalue("shared_dns")
        with Downstream() as ds:
            with running_server(REPO / "rules" / "reference.rules", dns=dns, forward_to=ds) as srv:
                yield Site("reference", "example.net", srv, ds)


def delivered(srv, ds) -> list:
    return list(ds.messages) if ds is not None else maildir_messages(srv.server.config.maildir)


def transaction(srv, helo: str, mail: str, rcpt: str) -> tuple[str, str]:
    with RawClient(srv.address, timeout=10) as c:
        assert c.reply().startswith("220")
        assert c.cmd(f"EHLO {helo}").startswith("250")
        mail_reply = c.cmd(f"MAIL FROM:{mail}")
        if not mail_reply.startswith("250"):
            return mail_reply, ""
        rcpt_reply = c.cmd(f"RCPT TO:{rcpt}")
        data_reply = c.cmd("DATA")
        if data_reply.startswith("354"):
            c.send(b"Subject: relay probe\r\n\r\nprobe\r\n.\r\n")
            data_reply = c.reply()
        c.cmd("QUIT")
        return rcpt_reply, data_reply


def probe(site: Site, helo: str, mail: str, rcpt: str) -> tuple[str, str]:
    """One probe in its own session: (RCPT reply, DATA reply); nothing delivered."""
    before = len(delivered(site.srv, site.ds))
    rcpt_reply, data_reply = transaction(site.srv, fill(helo, site.local), fill(mail, site.local),
                                         fill(rcpt, site.local))
    assert rcpt_reply in REFUSALS[site.ruleset], f"RCPT TO:{fill(rcpt, site.local)} got {rcpt_reply!r}"
    assert data_reply.startswith("503 5.5.1") or data_reply.startswith("554 5.5.1"), data_reply
    assert len(delivered(site.srv, site.ds)) == before
    return rcpt_reply, data_reply


@pytest.mark.parametrize("helo,mail,rcpt", PROBES, ids=[f"{h}|{m}|{r}" for h, m, r in PROBES])
def test_relay_probe_is_refused(site, helo, mail, rcpt):
    probe(site, helo, mail, rcpt)


def local_form(site: Site, rcpt: str, mailbox: str | None) -> None:
    """A local form gets what LOCAL_FORMS says: refused, or delivered to that mailbox only."""
    if mailbox is None:
        probe(site, "client.example", "<probe@client.example>", rcpt)
        return
    srv, ds = site.srv, site.ds
    before = delivered(srv, ds)
    rcpt_reply, data_reply = transaction(srv, "client.example", "<probe@client.example>", fill(rcpt, site.local))
    assert rcpt_reply.startswith("250 2.1.5") and data_reply.startswith("250 2.0.0"), (rcpt_reply, data_reply)
    if ds is not None:
        assert ds.wait_for_messages(len(before) + 1)
        assert ds.messages[-1][1] == [fill(mailbox, site.local)]
    else:                 # (Maildir file names do not sort in delivery order)
        (new,) = [m for m in delivered(srv, ds) if m not in before]
        assert f"for <{fill(mailbox, site.local)}>".encode() in new


@pytest.mark.parametrize("rcpt,mailbox", LOCAL_FORMS, ids=[r for r, _ in LOCAL_FORMS])
def test_local_forms_deliver_only_to_the_local_mailbox(site, rcpt, mailbox):
    local_form(site, rcpt, mailbox)


def test_local_mailbox_is_accepted(site):
    """The control: the suite refuses relaying, not mail."""
    local_form(site, f"<user@{site.local}>", f"user@{site.local}")


def test_nothing_reached_a_foreign_mailbox(site):
    """Every probe and local form, then the control, in this test (not
    relying on the others having run first): no foreign recipient was ever
    handed on, and the local ones were."""
    for helo, mail, rcpt in PROBES:
        probe(site, helo, mail, rcpt)
    for rcpt, mailbox in LOCAL_FORMS:
        local_form(site, rcpt, mailbox)
    local_form(site, f"<user@{site.local}>", f"user@{site.local}")
    srv, ds = site.srv, site.ds
    if ds is None:        # Maildir: the Received line names the one recipient
        rcpts = [re.search(rb"\tfor <([^>]*)>;", m).group(1).decode() for m in delivered(srv, ds)]
    else:
        rcpts = [r for _sender, rs, _data in ds.messages for r in rs]
    expected = 1 + sum(mailbox is not None for _, mailbox in LOCAL_FORMS)
    assert len(rcpts) >= expected, rcpts
    for r in rcpts:
        assert r.lower().rpartition("@")[2].rstrip(".") == site.local, r
