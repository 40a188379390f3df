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
# Forms that name a local mailbox: they may be accepted, and then the
# recipient handed on must be that mailbox.
LOCAL_FORMS = [
    ("<@{O}:user@{L}>", "user@{L}"),            # RFC 5321 C: ignore the source route
    ("<@{O},@{P}:user@{L}>", "user@{L}"),
    ("<user@{L}.>", "user@{L}."),
    ("<user@(comment){L}>", "user@{L}"),         # a comment is not part of the address
]
RULESETS = ["default", "reference"]


def fill(template: str, local: str) -> str:
    return template.format(L=local, LU=local.upper(), O=OTHER, OU=OTHER.upper(), P=OTHER2)


@pytest.fixture(scope="module", params=RULESETS)
def site(request):
    if request.param == "default":
        with running_server(REPO / "rules" / "default.rules") as srv:
            yield "localhost", srv, None
    else:
        dns = request.getfixturevalue("shared_dns")
        with Downstream() as ds:
            with running_server(REPO / "rules" / "reference.rules", dns=dns, delivery_mode="forward",
                                forward_host="127.0.0.1", forward_port=ds.port) as srv:
                yield "example.net", srv, ds


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


@pytest.mark.parametrize("helo,mail,rcpt", PROBES, ids=[f"{h}|{m}|{r}" for h, m, r in PROBES])
def test_relay_probe_is_refused(site, helo, mail, rcpt):
    local, srv, ds = site
    before = len(delivered(srv, ds))
    rcpt_reply, data_reply = transaction(srv, fill(helo, local), fill(mail, local), fill(rcpt, local))
    assert rcpt_reply[:1] in ("4", "5"), f"RELAY: RCPT TO:{fill(rcpt, local)} got {rcpt_reply!r}"
    assert not data_reply.startswith("250"), data_reply
    assert len(delivered(srv, ds)) == before


@pytest.mark.parametrize("rcpt,mailbox", LOCAL_FORMS, ids=[r for r, _ in LOCAL_FORMS])
def test_local_forms_deliver_only_to_the_local_mailbox(site, rcpt, mailbox):
    local, srv, ds = site
    before = len(delivered(srv, ds))
    rcpt_reply, data_reply = transaction(srv, "client.example", "<probe@client.example>", fill(rcpt, local))
    if not rcpt_reply.startswith("2"):
        return                                            # refusing is always safe
    assert data_reply.startswith("250")
    if ds is not None:
        assert ds.wait_for_messages(before + 1)
        assert ds.messages[-1][1] == [fill(mailbox, local)]
    else:
        msgs = delivered(srv, ds)
        assert len(msgs) == before + 1
        assert f"for <{fill(mailbox, local)}>".encode() in msgs[-1]


def test_local_mailbox_is_accepted(site):
    """The control: the suite refuses relaying, not mail."""
    local, srv, ds = site
    before = len(delivered(srv, ds))
    rcpt_reply, data_reply = transaction(srv, "client.example", "<probe@client.example>", f"<user@{local}>")
    assert rcpt_reply.startswith("250") and data_reply.startswith("250")
    if ds is not None:
        assert ds.wait_for_messages(before + 1)
    else:
        assert len(delivered(srv, ds)) == before + 1


def test_nothing_reached_a_foreign_mailbox(site):
    """Whatever the probes did, no foreign recipient was ever handed on."""
    local, srv, ds = site
    transaction(srv, "client.example", "<probe@client.example>", f"<user@{local}>")
    if ds is None:        # Maildir: the Received line names the one recipient
        rcpts = [re.search(rb"\tfor <([^>]*)>;", m).group(1).decode() for m in delivered(srv, ds)]
    else:
        rcpts = [r for _sender, rs, _data in ds.messages for r in rs]
    assert rcpts, "the controls delivered nothing?"
    for r in rcpts:
        assert r.lower().rpartition("@")[2].rstrip(".") == local, r
