"""End to end in forward mode: client -> smtpfw -> a real SMTP listener.

A 250 after DATA only when the downstream took the message; downstream
trouble becomes 451 4.x.x, a downstream 5xx is passed on, and the
downstream's 250 is final even if the connection drops right after it."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.support.downstream import Downstream, closed_port
from tests.support.server import running_server

RULES = """
on rcpt:
    accept if rcpt.domain = "example.net"
    reject 554 5.7.1 "Relaying denied"
"""
MSG = b"Subject: fwd\r\nMessage-ID: <1@x>\r\n\r\n.leading dot\r\nbody\r\n"


def send(srv, rcpts=("u@example.net",), msg=MSG):
    with smtplib.SMTP(*srv.address, timeout=10) as s:
        s.ehlo("client.example")
        try:
            return s.sendmail("a@b.example", list(rcpts), msg), None
        except smtplib.SMTPDataError as err:
            return None, (err.smtp_code, err.smtp_error.decode())
        except smtplib.SMTPRecipientsRefused as err:
            return None, err.recipients


@pytest.fixture
def downstream():
    with Downstream() as d:
        yield d


def forwarding(downstream_port, **kw):
    return running_server(rules_text=RULES, forward_to=downstream_port, **kw)


def test_forwarded_byte_exact(downstream):
    with forwarding(downstream.port) as srv:
        refused, err = send(srv)
        assert refused == {} and err is None
    assert downstream.wait_for_messages(1)
    sender, rcpts, data = downstream.messages[0]
    assert sender == "a@b.example" and rcpts == ["u@example.net"]
    assert data.endswith(MSG)
    assert data.startswith(b"Received: from client.example")


@pytest.mark.parametrize("dots", [True, False])
def test_a_big_message_forwarded_byte_exact(downstream, dots):
    """Over linescan.VECTOR_MIN, with and without lines that start with a
    dot: the front end tells forward delivery whether to stuff dots."""
    msg = b"Subject: big\r\n\r\n" + b"".join(
        b"..two dots %d\r\n" % i if dots and i % 97 == 0 else b".one dot\r\n" if dots and i % 89 == 0
        else b"x" * 70 + b"\r\n" for i in range(2000))
    with forwarding(downstream.port) as srv:
        refused, err = send(srv, msg=msg)
        assert refused == {} and err is None
    assert downstream.wait_for_messages(1)
    assert downstream.messages[0][2].endswith(msg)


def test_mixed_recipients_forward_only_accepted(downstream):
    with forwarding(downstream.port) as srv:
        refused, err = send(srv, ["u@example.net", "x@other.example"])
        assert set(refused) == {"x@other.example"}
    assert downstream.wait_for_messages(1)
    assert downstream.messages[0][1] == ["u@example.net"]


def hides_the_downstream(text: str, port: int) -> bool:
    """Clients learn what went wrong downstream, not where the downstream is."""
    return "127.0.0.1" not in text and str(port) not in text


@pytest.mark.parametrize("mode,stage", [("tempfail_mail", "MAIL"), ("tempfail_rcpt", "RCPT"),
                                        ("tempfail_data", "end of DATA")])
def test_downstream_4xx_gives_451(downstream, mode, stage):
    downstream.mode = mode
    with forwarding(downstream.port) as srv:
        refused, err = send(srv)
    assert err[0] == 451 and err[1].startswith(f"4.3.0 downstream MTA tempfailed {stage}: 451 4."), err
    assert hides_the_downstream(err[1], downstream.port)
    assert downstream.messages == []


def test_downstream_5xx_passed_on(downstream):
    """The downstream's code, enhanced code and text, as they are."""
    downstream.mode = "reject_data"
    with forwarding(downstream.port) as srv:
        _, err = send(srv)
    assert err == (554, "5.7.1 Message rejected")


def test_downstream_refused_connection_gives_451():
    port = closed_port()
    with forwarding(port) as srv:
        _, err = send(srv)
    assert err == (451, "4.4.1 downstream MTA unavailable: connection refused")
    assert hides_the_downstream(err[1], port)


def test_downstream_hang_gives_451_within_timeout(downstream):
    downstream.mode = "hang"
    with forwarding(downstream.port, forward_timeout=0.5) as srv:
        start = time.monotonic()
        _, err = send(srv)
        assert time.monotonic() - start < 5
    assert err[0] == 451 and err[1].startswith("4.4.1 no answer from downstream MTA within 0.5s"), err
    assert hides_the_downstream(err[1], downstream.port)


def test_downstream_drop_mid_data_gives_451(downstream):
    downstream.mode = "drop_mid_data"
    with forwarding(downstream.port) as srv:
        _, err = send(srv, msg=MSG * 2000)
    assert err[0] == 451 and err[1].startswith("4.4.2 downstream MTA dropped the connection"), err
    assert hides_the_downstream(err[1], downstream.port)
    assert downstream.messages == []


def test_downstream_250_is_final_even_if_dropped_after(downstream):
    downstream.mode = "drop_after_250"
    with forwarding(downstream.port) as srv:
        refused, err = send(srv)
        assert err is None and refused == {}
        refused, err = send(srv)          # the pooled connection is dead: a new one is used
        assert err is None and refused == {}
    assert len(downstream.messages) == 2


def test_downstream_5xx_for_recipient(downstream):
    """Every recipient refused with 5xx: the first refusal is passed on."""
    downstream.reject_rcpts = {"u@example.net"}
    with forwarding(downstream.port) as srv:
        _, err = send(srv)
    assert err == (550, "5.1.1 <u@example.net>: Recipient address rejected")
    assert downstream.messages == []


def test_downstream_refusing_some_recipients_delivers_to_none(downstream):
    """Never a partial delivery: 451 4.3.0, the client retries the whole message."""
    downstream.reject_rcpts = {"u@example.net"}
    with forwarding(downstream.port) as srv:
        _, err = send(srv, rcpts=("u@example.net", "v@example.net"))
    assert err[0] == 451 and err[1].startswith("4.3.0 downstream refused some recipients (1 of 2"), err
    assert err[1].endswith("nothing delivered, try again later")
    assert downstream.messages == []


def test_a_header_the_rules_add_with_a_leading_dot_is_stuffed(downstream):
    """The client's data had no dot lines, but a rule added a header whose
    name starts with a dot: the trace headers are part of what is stuffed."""
    rules = RULES.replace("on rcpt:", 'on data:\n    add_header "X-A" "one"\n    add_header ".X-B" "two"\non rcpt:')
    with running_server(rules_text=rules, forward_to=downstream.port) as srv:
        refused, err = send(srv, msg=b"Subject: plain\r\n\r\nno dots\r\n")
        assert refused == {} and err is None
    assert downstream.wait_for_messages(1)
    assert b"\r\n.X-B: two\r\n" in downstream.messages[0][2]
