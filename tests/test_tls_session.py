"""STARTTLS sessions as workload d of issue 21 measured them: one TLS 1.3
session ticket by default (resumption works with it, none with
`tls.session_tickets: 0`), and the replies to a pipelined command group
leave in one write, so one TLS record (Stream's hold-and-flush)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import replace

import pytest

from smtpfw.config import Config, ConfigError, from_mapping
from smtpfw.protocol.stream import Stream
from smtpfw.server import _tls_context
from tests.support.server import running_server

RULES = """
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _reply(sock) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; got {data!r}")
        data += chunk
        last = data.rstrip(b"\r\n").split(b"\r\n")[-1]
        if data.endswith(b"\r\n") and last[3:4] != b"-":
            return data


def _starttls(address, ctx, session=None) -> ssl.SSLSocket:
    sock = socket.create_connection(address, timeout=10)
    _reply(sock)
    sock.sendall(b"EHLO client.example\r\n")
    _reply(sock)
    sock.sendall(b"STARTTLS\r\n")
    assert _reply(sock).startswith(b"220 ")
    tls = ctx.wrap_socket(sock, server_hostname="mx.test", session=session)
    tls.sendall(b"EHLO client.example\r\n")
    assert b"250 " in _reply(tls)                  # reading it took the session ticket too
    return tls


def _quit(tls) -> None:
    tls.sendall(b"QUIT\r\n")
    _reply(tls)
    tls.close()


# ---- session tickets ------------------------------------------------------------

def test_one_session_ticket_by_default_and_the_setting_is_read(cert):
    cfg = replace(Config(), tls_cert=cert[0], tls_key=cert[1])
    assert cfg.tls_session_tickets == 1
    assert _tls_context(cfg).num_tickets == 1
    assert _tls_context(replace(cfg, tls_session_tickets=0)).num_tickets == 0
    assert _tls_context(cfg).options & ssl.OP_NO_RENEGOTIATION
    assert from_mapping({"tls": {"session_tickets": 3}}).tls_session_tickets == 3
    with pytest.raises(ConfigError, match="tls.session_tickets: must not be negative"):
        from_mapping({"tls": {"session_tickets": -1}})


def test_a_client_resumes_with_the_ticket_it_was_given(cert):
    with running_server(rules_text=RULES, tls_cert=cert[0], tls_key=cert[1]) as srv:
        ctx = _client_ctx()
        first = _starttls(srv.address, ctx)
        session = first.session
        assert session is not None and session.has_ticket
        _quit(first)
        again = _starttls(srv.address, ctx, session=session)
        assert again.session_reused                                    # no certificate, no signature
        _quit(again)


def test_no_ticket_and_no_resumption_with_session_tickets_0(cert):
    with running_server(rules_text=RULES, tls_cert=cert[0], tls_key=cert[1], tls_session_tickets=0) as srv:
        ctx = _client_ctx()
        first = _starttls(srv.address, ctx)
        session = first.session
        assert session is None or not session.has_ticket
        _quit(first)
        again = _starttls(srv.address, ctx, session=session)
        assert not again.session_reused
        _quit(again)


# ---- pipelined replies: one write, one TLS record -----------------------------------

def test_replies_to_a_pipelined_group_come_in_one_tls_record(cert):
    with running_server(rules_text=RULES, tls_cert=cert[0], tls_key=cert[1]) as srv:
        tls = _starttls(srv.address, _client_ctx())
        tls.sendall(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n")
        time.sleep(0.3)                          # every record the server sent has arrived
        first = tls.recv(65536)                  # one TLS record's data (SSL_read reads one record)
        lines = first.split(b"\r\n")
        assert [line[:4] for line in lines] == [b"250 ", b"250 ", b"354 ", b""], first
        tls.sendall(b"Subject: t\r\n\r\nbody\r\n.\r\n")
        assert _reply(tls).startswith(b"250 ")
        _quit(tls)


class _Transport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_write_buffer_size(self):
        return 0

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class _Echo(Stream):
    """Answers each line with a reply; ``slow`` lines wait a loop turn first."""

    async def run(self):
        while True:
            try:
                line = await self.readline(1000)
            except ConnectionError:
                return
            if line.startswith(b"SLOW"):
                await asyncio.sleep(0.05)
            self.write(b"250 " + line)
            await self.drain()


async def _session(feed: list[bytes]) -> list[bytes]:
    loop = asyncio.get_running_loop()
    stream, transport = _Echo(loop), _Transport()
    stream.connection_made(transport)
    for data in feed:
        stream.data_received(data)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    stream.connection_lost(None)
    await stream.task
    return transport.writes


def test_a_lone_command_is_answered_at_once_and_a_pipelined_group_in_one_write():
    writes = asyncio.run(_session([b"A\r\n", b"B\r\nC\r\nD\r\n"]))
    assert writes == [b"250 A\r\n", b"250 B\r\n250 C\r\n250 D\r\n"]


def test_a_held_reply_does_not_wait_for_a_slow_command_behind_it():
    # A's reply leaves at the next turn of the loop, while SLOW is being worked on
    writes = asyncio.run(_session([b"A\r\nSLOW\r\n"]))
    assert writes == [b"250 A\r\n", b"250 SLOW\r\n"]
