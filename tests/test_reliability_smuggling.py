"""SMTP smuggling, in forward and in Maildir mode (issue 9).

Policy (smtpfw/protocol/smtp.py ``_read_data``): only <CR><LF>.<CR><LF>
ends DATA.  Every other end-of-data look-alike stays inside the message,
and a message holding any bare CR or bare LF is refused with 554 5.6.11, one
holding a NUL with 554 5.6.0, so it is never delivered or forwarded.  What
a client sends after a fake terminator is therefore neither a second
message nor commands.

Each published variant (SEC Consult, Dec 2023, and the follow-ups: bare LF
and bare CR forms of <CRLF>.<CRLF>, NUL next to the dot) is sent with a
whole smuggled transaction (MAIL, RCPT, DATA, message) after the fake
terminator, in one write, byte by byte across TCP segments, and split right
after the fake terminator.  The server must stay silent until the real end
of data (nothing was taken as a command), refuse the message, stay in step
(NOOP answers 250), and deliver nothing: no Maildir file, no downstream
message, no smuggled MAIL reaching the downstream.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.smtp_client import RawClient
from tests.support.cli import wait_until
from tests.support.faults import FaultDownstream
from tests.support.server import maildir_messages, running_server

BARE = "554 5.6.11"
NUL = "554 5.6.0"
# name -> (bytes before the fake terminator, fake terminator, expected refusal)
VARIANTS = {
    "LF.LF": (b"first", b"\n.\n", BARE),
    "LF.CRLF": (b"first", b"\n.\r\n", BARE),
    "CRLF.LF": (b"first", b"\r\n.\n", BARE),
    "CR.CRLF": (b"first", b"\r.\r\n", BARE),
    "CRLF.CR": (b"first", b"\r\n.\r", BARE),
    "CR.CR": (b"first", b"\r.\r", BARE),
    "LF.CR": (b"first", b"\n.\r", BARE),
    "CR.LF": (b"first", b"\r.\n", BARE),
    "CRLF.CRCRLF": (b"first", b"\r\n.\r\r\n", BARE),
    "CRLF.LFLF": (b"first", b"\r\n.\n\n", BARE),
    "start .LF": (None, b".\n", BARE),          # right after the DATA line
    "start .CR": (None, b".\r", BARE),
    "CRLF NUL.CRLF": (b"first", b"\r\n\x00.\r\n", NUL),
    "CRLF.NUL CRLF": (b"first", b"\r\n.\x00\r\n", NUL),
}
SPLITS = ["one-write", "bytewise", "after-fake-end"]


@pytest.fixture(scope="module")
def downstream():
    with FaultDownstream() as ds:
        yield ds


@pytest.fixture(scope="module", params=["maildir", "forward"])
def target(request, downstream):
    if request.param == "forward":
        with running_server(forward_to=downstream) as srv:
            yield request.param, srv
    else:
        with running_server() as srv:
            yield request.param, srv


def delivered(mode: str, srv, downstream) -> list[bytes]:
    if mode == "forward":
        return [data for _s, _r, data in downstream.messages]
    return maildir_messages(srv.server.config.maildir)


def open_envelope(srv) -> RawClient:
    c = RawClient(srv.address, timeout=5)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert c.reply().startswith("220")
    assert c.cmd("EHLO attacker.test").startswith("250")
    assert c.cmd("MAIL FROM:<attacker@attacker.test>").startswith("250")
    assert c.cmd("RCPT TO:<victim@localhost>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    return c


def silent(c: RawClient, seconds: float) -> bool:
    """No reply arrives within ``seconds`` (the server is still reading data)."""
    c.sock.settimeout(seconds)
    try:
        data = c.sock.recv(4096)
    except socket.timeout:
        return True
    finally:
        c.sock.settimeout(5)
    c.buf += data
    return False


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fake_end_of_data_smuggles_nothing(target, downstream, variant, split):
    mode, srv = target
    before, fake_end, refusal = VARIANTS[variant]
    tag = f"smuggle {variant} {split} {mode}".encode()
    head = b"Subject: " + tag + b"\r\n\r\n" + before if before is not None else b""
    smuggled = (b"MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\n"
                b"Subject: " + tag + b" SMUGGLED\r\n\r\nsecond\r\n")
    before_count = len(delivered(mode, srv, downstream))
    c = open_envelope(srv)
    try:
        if split == "one-write":
            c.send(head + fake_end + smuggled)
        elif split == "bytewise":
            c.send(head)
            for b in fake_end + smuggled[:12]:
                c.send(bytes([b]))
                time.sleep(0.002)
            c.send(smuggled[12:])
        else:
            c.send(head + fake_end)
            assert silent(c, 0.05), f"server answered after the fake end: {c.buf!r}"
            c.send(smuggled)
            # had any of it been taken as commands, replies (250, 354, ...) would come now
            assert silent(c, 0.1), f"server answered smuggled commands: {c.buf!r}"
        c.send(b".\r\n")                            # the real end of data
        assert c.reply().startswith(refusal)
        assert c.cmd("NOOP").startswith("250 ")      # in step: nothing left over
        assert c.cmd("QUIT").startswith("221")
    finally:
        c.close()
    # smtpfw delivers before it answers, and QUIT was answered: anything
    # smuggled would be there by now
    after = delivered(mode, srv, downstream)
    assert len(after) == before_count
    assert not any(tag in m for m in after)
    assert not any("smuggled@evil.test" in cmd for cmd in downstream.commands)


@pytest.mark.parametrize("split", ["one-write", "bytewise"])
def test_real_end_of_data_split_anywhere_then_pipelined_commands(target, downstream, split):
    """The control: a real <CRLF>.<CRLF>, even one byte per TCP segment, ends
    the data; what follows it *is* commands (PIPELINING); dot-stuffed lines
    that look like terminators arrive unstuffed, byte for byte."""
    mode, srv = target
    tag = f"control {split} {mode}".encode()
    body = b"Subject: " + tag + b"\r\n\r\n.\r\n..\r\n. \r\nlast\r\n"        # as the client means it
    wire = b"Subject: " + tag + b"\r\n\r\n..\r\n...\r\n.. \r\nlast\r\n"       # dot-stuffed
    c = open_envelope(srv)
    try:
        end = b".\r\nMAIL FROM:<second@client.test>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\n"
        if split == "one-write":
            c.send(wire + end)
        else:
            c.send(wire[:-2])
            for b in wire[-2:] + end[:3]:
                c.send(bytes([b]))
                time.sleep(0.002)
            c.send(end[3:])
        assert c.reply().startswith("250 2.0.0")
        assert [c.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        c.send(b"Subject: " + tag + b" second\r\n\r\nok\r\n.\r\n")
        assert c.reply().startswith("250 2.0.0")
        c.cmd("QUIT")
    finally:
        c.close()
    wait_until(lambda: len([m for m in delivered(mode, srv, downstream) if tag in m]) >= 2, 5,
               "both messages delivered")
    mine = [m for m in delivered(mode, srv, downstream) if tag in m]
    assert len(mine) == 2
    assert sum(m.endswith(body) for m in mine) == 1
