"""ForwardDelivery against the fault-injecting loopback downstream."""

from __future__ import annotations

import asyncio
import time

import pytest

from smtpfw.delivery import Delivery, DeliveryResult, ForwardDelivery, Message
from smtpfw.delivery.forward import dot_stuff
from tests.support.cli import wait_until
from tests.support.downstream import Downstream, closed_port

SENDER = "alice@example.org"
RCPTS = ("bob@example.net", "carol@example.net")
DOTTED = (b"From: alice@example.org\r\nSubject: dots\r\n\r\n"
          b".starts with a dot\r\n..two dots\r\n.\r\nmiddle . dot\r\nend\r\n")
PLAIN = b"Subject: plain\r\n\r\nno dots at all\r\n"


def msg(data: bytes = DOTTED, rcpts=RCPTS, sender: str = SENDER, options=()) -> Message:
    return Message(sender, tuple(rcpts), data, tuple(options))


def run(coro):
    return asyncio.run(coro)


async def deliver_all(fwd: ForwardDelivery, *messages: Message) -> list[DeliveryResult]:
    try:
        return [await fwd.deliver(m) for m in messages]
    finally:
        await fwd.close()


def forward(ds: Downstream, **kw) -> ForwardDelivery:
    kw.setdefault("timeout", 2.0)
    return ForwardDelivery("127.0.0.1", ds.port, **kw)


@pytest.fixture
def ds():
    with Downstream() as server:
        yield server


# -- unit --------------------------------------------------------------------


def test_dot_stuff():
    assert dot_stuff(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert dot_stuff(b".x\r\n") == b"..x\r\n.\r\n"
    assert dot_stuff(b".\r\n") == b"..\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b"no newline") == b"no newline\r\n.\r\n"
    # bare LF + "." is stuffed too: no early end of data for lax servers
    assert dot_stuff(b"a\n.\r\nb\r\n") == b"a\n..\r\nb\r\n.\r\n"
    # the front end knows whether a line starts with a dot: then nobody looks
    assert dot_stuff(b"a\r\n.b\r\n", dot_lines=True) == b"a\r\n..b\r\n.\r\n"
    assert dot_stuff(b"a\r\nb\r\n", dot_lines=False) == b"a\r\nb\r\n.\r\n"


# -- success paths -------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_accept_byte_exact(pipelining):
    with Downstream(pipelining=pipelining) as ds:
        fwd = forward(ds)
        assert isinstance(fwd, Delivery)
        r1, r2 = run(deliver_all(fwd, msg(DOTTED), msg(PLAIN, rcpts=("x@y.test",), sender="")))
        assert (r1.code, r1.enhanced) == (250, "2.0.0") and r1.ok
        assert "queued as" in r1.text and r2.ok
        assert ds.messages == [(SENDER, list(RCPTS), DOTTED), ("", ["x@y.test"], PLAIN)]
        if pipelining:
            assert ds.pipelined > 0
        else:
            assert ds.pipelined == 0
        assert ds.connections == 1          # pooled across both messages


def test_mail_parameters(ds):
    data = b"Subject: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
    r = run(deliver_all(forward(ds), msg(data, options=("BODY=8BITMIME", "SMTPUTF8", "SIZE=1"))))
    assert r[0].ok
    mail = next(c for c in ds.commands if c.startswith("MAIL"))
    # 8BITMIME and SIZE advertised; SMTPUTF8 not: dropped; SIZE recomputed.
    assert mail == f"MAIL FROM:<{SENDER}> BODY=8BITMIME SIZE={len(data)}"


def test_helo_fallback():
    with Downstream(ehlo=False) as ds:
        r = run(deliver_all(forward(ds), msg()))
        assert r[0].ok
        assert [c.split()[0] for c in ds.commands[:3]] == ["EHLO", "HELO", "MAIL"]
        assert ds.pipelined == 0     # no EHLO -> no extensions -> lockstep


def test_big_message_many_lines(ds):
    body = b"".join(b".line %d with a leading dot\r\n" % i for i in range(4000))
    data = b"Subject: big\r\n\r\n" + body
    r = run(deliver_all(forward(ds), msg(data)))
    assert r[0].ok
    assert ds.messages[0][2] == data


def test_concurrent_deliveries(ds):
    async def go():
        fwd = forward(ds, pool_size=4)
        try:
            results = await asyncio.gather(*(
                fwd.deliver(msg(b"n: %d\r\n" % i, rcpts=("r@x",))) for i in range(30)))
            assert fwd.idle_connections <= 4
            return results
        finally:
            await fwd.close()

    results = run(go())
    assert all(r.ok for r in results)
    assert sorted(m[2] for m in ds.messages) == sorted(b"n: %d\r\n" % i for i in range(30))


# -- pooling -------------------------------------------------------------------------


def test_pool_reuse_counts_connections(ds):
    async def go():
        fwd = forward(ds)
        try:
            r = [await fwd.deliver(msg(PLAIN)) for _ in range(3)]
            assert fwd.idle_connections == 1
            return r
        finally:
            await fwd.close()

    assert all(r.ok for r in run(go()))
    assert ds.connections == 1 and len(ds.messages) == 3
    # close() says goodbye; the downstream reads it on its own thread
    wait_until(lambda: "QUIT" in ds.commands, 5, "QUIT at the downstream")


def test_stale_pooled_connection_retried_once(ds):
    async def go():
        fwd = forward(ds)
        try:
            first = await fwd.deliver(msg(PLAIN))
            ds.drop_on_mail = 1           # pooled conn dies at its next MAIL
            second = await fwd.deliver(msg(DOTTED))
            return first, second
        finally:
            await fwd.close()

    first, second = run(go())
    assert first.ok and second.ok
    assert [m[2] for m in ds.messages] == [PLAIN, DOTTED]   # delivered once
    assert ds.connections == 2


def test_pooled_connection_closed_by_server(ds):
    async def go():
        fwd = forward(ds)
        try:
            first = await fwd.deliver(msg(PLAIN))
            ds.drop_connections()
            await asyncio.sleep(0.05)
            second = await fwd.deliver(msg(DOTTED))
            return first, second
        finally:
            await fwd.close()

    first, second = run(go())
    assert first.ok and second.ok
    assert [m[2] for m in ds.messages] == [PLAIN, DOTTED]
    assert ds.connections == 2


def test_fresh_connection_dropped_at_mail_is_not_retried(ds):
    ds.drop_on_mail = 1
    r = run(deliver_all(forward(ds), msg()))[0]
    assert (r.code, r.enhanced) == (451, "4.4.2")
    assert "dropped" in r.text and ds.messages == [] and ds.connections == 1


def test_idle_connections_expire(ds):
    async def go():
        fwd = forward(ds, idle_timeout=0.05)
        try:
            assert (await fwd.deliver(msg(PLAIN))).ok
            await asyncio.sleep(0.1)
            assert (await fwd.deliver(msg(PLAIN))).ok
        finally:
            await fwd.close()

    run(go())
    assert ds.connections == 2


def test_pool_reused_after_aborted_transaction():
    with Downstream("tempfail_rcpt") as ds:
        async def go():
            fwd = forward(ds)
            try:
                bad = await fwd.deliver(msg())
                ds.mode = "accept"
                good = await fwd.deliver(msg())
                return bad, good
            finally:
                await fwd.close()

        bad, good = run(go())
        assert (bad.code, bad.enhanced) == (451, "4.3.0") and bad.text.startswith("downstream MTA tempfailed RCPT")
        assert good.ok
        assert ds.connections == 1 and "RSET" in ds.commands
        assert len(ds.messages) == 1


# -- failures --------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("mode", ["tempfail_mail", "tempfail_rcpt", "tempfail_data"])
def test_tempfails(mode, pipelining):
    with Downstream(mode, pipelining=pipelining) as ds:
        r = run(deliver_all(forward(ds), msg()))[0]
        stage = {"tempfail_mail": "MAIL", "tempfail_rcpt": "RCPT", "tempfail_data": "end of DATA"}[mode]
        assert (r.code, r.enhanced) == (451, "4.3.0")       # a downstream 4xx: "anything else"
        assert r.text.startswith(f"downstream MTA tempfailed {stage}: 451 ") and "Try again later" in r.text
        assert ds.messages == []


@pytest.mark.parametrize("pipelining", [True, False])
def test_reject_data_passed_through(pipelining):
    with Downstream("reject_data", pipelining=pipelining) as ds:
        r = run(deliver_all(forward(ds), msg()))[0]
        assert (r.code, r.enhanced, r.text) == (554, "5.7.1", "Message rejected")
        assert ds.messages == []


@pytest.mark.parametrize("pipelining", [True, False])
def test_all_recipients_rejected(pipelining):
    with Downstream("reject_rcpt", pipelining=pipelining) as ds:
        r = run(deliver_all(forward(ds), msg()))[0]
        assert (r.code, r.enhanced) == (550, "5.1.1")
        assert RCPTS[0] in r.text            # the first refusal
        assert ds.messages == []


@pytest.mark.parametrize("pipelining", [True, False])
def test_some_recipients_rejected_nothing_delivered(pipelining):
    with Downstream(reject_rcpts={RCPTS[1]}, pipelining=pipelining) as ds:
        async def go():
            fwd = forward(ds)
            try:
                partial = await fwd.deliver(msg())
                # the connection is still usable (RSET) or was replaced (354)
                ok = await fwd.deliver(msg(rcpts=RCPTS[:1]))
                return partial, ok
            finally:
                await fwd.close()

        partial, ok = run(go())
        assert (partial.code, partial.enhanced) == (451, "4.3.0")
        assert "refused some recipients" in partial.text
        assert ok.ok
        assert ds.messages == [(SENDER, [RCPTS[0]], DOTTED)]


def test_hang_times_out():
    with Downstream("hang") as ds:
        t0 = time.monotonic()
        r = run(deliver_all(forward(ds, timeout=0.5), msg()))[0]
        assert time.monotonic() - t0 < 2.0
        assert (r.code, r.enhanced) == (451, "4.4.1") and "no answer" in r.text
        assert ds.messages == []


def test_no_greeting_times_out():
    with Downstream("no_greeting") as ds:
        r = run(deliver_all(forward(ds, timeout=0.5), msg()))[0]
        assert (r.code, r.enhanced) == (451, "4.4.1") and "greeting" in r.text


def test_connection_refused():
    fwd = ForwardDelivery("127.0.0.1", closed_port(), timeout=2.0)
    r = run(deliver_all(fwd, msg()))[0]
    assert (r.code, r.enhanced) == (451, "4.4.1")
    assert "connection refused" in r.text


@pytest.mark.parametrize("pipelining", [True, False])
def test_drop_mid_data(pipelining):
    with Downstream("drop_mid_data", pipelining=pipelining) as ds:
        data = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 2000
        r = run(deliver_all(forward(ds), msg(data)))[0]
        assert (r.code, r.enhanced) == (451, "4.4.2")       # the connection dropped
        assert r.text.startswith("downstream MTA dropped the connection")
        assert ds.messages == []


def test_drop_after_250_is_final():
    with Downstream("drop_after_250") as ds:
        async def go():
            fwd = forward(ds)
            try:
                first = await fwd.deliver(msg(PLAIN))
                # the next message must not fail because of the dead conn
                ds.mode = "accept"
                second = await fwd.deliver(msg(DOTTED))
                return first, second
            finally:
                await fwd.close()

        first, second = run(go())
        assert first.ok and first.code == 250
        assert second.ok
        assert [m[2] for m in ds.messages] == [PLAIN, DOTTED]   # exactly once each


def test_hang_data_tempfails():
    # The downstream may have taken the message: the client's retry can
    # duplicate it (documented; the safe side of RFC 1047).
    with Downstream("hang_data") as ds:
        r = run(deliver_all(forward(ds, timeout=0.5), msg()))[0]
        assert (r.code, r.enhanced) == (451, "4.4.1") and "end of DATA" in r.text


def test_non_ascii_address_needs_smtputf8(ds):
    r = run(deliver_all(forward(ds), msg(rcpts=("bjørn@example.net",))))[0]
    assert (r.code, r.enhanced) == (554, "5.6.7")
    assert ds.messages == []


def test_non_ascii_address_with_smtputf8():
    with Downstream(smtputf8=True) as ds:
        r = run(deliver_all(forward(ds), msg(rcpts=("bjørn@example.net",), options=("SMTPUTF8",))))[0]
        assert r.ok
        assert ds.messages[0][1] == ["bjørn@example.net"]
        assert any(c.endswith(" SMTPUTF8 SIZE=%d" % len(DOTTED)) for c in ds.commands)


def test_invalid_envelope_never_reaches_downstream(ds):
    r = run(deliver_all(forward(ds), msg(rcpts=("a@b>\r\nRSET",))))[0]
    assert (r.code, r.enhanced, r.text) == (553, "5.1.3", "invalid address")
    r = run(deliver_all(forward(ds), msg(rcpts=())))[0]
    assert (r.code, r.enhanced, r.text) == (554, "5.5.1", "no valid recipients")
    assert ds.connections == 0


def test_cancellation_closes_connection():
    with Downstream("hang_data") as ds:
        async def go():
            fwd = forward(ds, timeout=5.0)
            task = asyncio.create_task(fwd.deliver(msg()))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert fwd.idle_connections == 0
            await fwd.close()

        run(go())


# -- what a downstream says, byte by byte (a scripted SMTP server on loopback) ---


async def _scripted(answers: dict[bytes, bytes], after_data: bytes = b"250 2.0.0 queued\r\n",
                    then: bytes = b"") -> tuple[asyncio.AbstractServer, int, list]:
    """A downstream that answers each command by its verb from ``answers``
    (PIPELINING off, so one command at a time), ``after_data`` after the
    message, and then writes ``then`` unasked."""
    sessions: list = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.append(writer)
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
                if verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    while (data := await reader.readline()) not in (b".\r\n", b""):
                        pass
                    writer.write(after_data + then)
                    continue
                answer = answers.get(verb, b"250 ok\r\n")
                if answer == b"CLOSE":
                    writer.close()
                    return
                writer.write(answer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0, limit=1 << 20)
    return server, server.sockets[0].getsockname()[1], sessions


def test_a_multi_line_reply_has_its_first_line_s_code():
    async def go():
        server, port, _ = await _scripted({b"EHLO": b"250 scripted\r\n"},
                                          after_data=b"550-5.7.1 rejected\r\n250 and then this\r\n")
        async with server:
            return await deliver_all(ForwardDelivery("127.0.0.1", port, timeout=2.0), msg(PLAIN))
    (result,) = run(go())
    assert result.code == 550 and result.enhanced == "5.7.1", result


def test_an_over_long_reply_line_is_malformed_however_it_arrives():
    async def go():
        server, port, _ = await _scripted({b"EHLO": b"250 " + b"x" * 70000 + b"\r\n"})
        async with server:
            return await deliver_all(ForwardDelivery("127.0.0.1", port, timeout=2.0), msg(PLAIN))
    (result,) = run(go())
    assert (result.code, result.enhanced) == (451, "4.3.0") and "malformed reply" in result.text, result


def test_a_downstream_that_closes_is_named_without_a_reason():
    async def go():
        server, port, _ = await _scripted({b"EHLO": b"250 scripted\r\n", b"MAIL": b"CLOSE"})
        async with server:
            return await deliver_all(ForwardDelivery("127.0.0.1", port, timeout=2.0), msg(PLAIN))
    (result,) = run(go())
    assert (result.code, result.enhanced) == (451, "4.4.2"), result
    assert result.text.endswith("dropped the connection at MAIL"), result


def test_a_pooled_connection_that_talks_unasked_is_not_reused():
    """A downstream that writes to an idle pooled connection (a flood, or a
    421 before its timeout) loses it: nothing it says is kept, and the next
    message goes over a new connection."""
    async def go():
        server, port, sessions = await _scripted({b"EHLO": b"250 scripted\r\n"}, then=b"")
        async with server:
            fwd = ForwardDelivery("127.0.0.1", port, timeout=2.0)
            try:
                first = await fwd.deliver(msg(PLAIN))
                assert fwd.idle_connections == 1
                for _ in range(50):
                    sessions[0].write(b"250 unasked\r\n" * 1000)
                await asyncio.sleep(0.2)
                dropped = sessions[0].is_closing()      # we hung up at once, not at the next message
                second = await fwd.deliver(msg(PLAIN))
            finally:
                await fwd.close()
            return first, second, len(sessions), dropped
    first, second, connections, dropped = run(go())
    assert first.code == 250 and second.code == 250
    assert connections == 2 and dropped
