"""smtpfw as a Postfix policy-delegation service: the protocol spoken by
hand, malformed requests, and a real Postfix asking it (check_policy_service)
with rules/reference.rules, which must reach the verdicts smtpfw reaches
inline (tests/test_reference_policy.py)."""

from __future__ import annotations

import socket
import time

import pytest

from smtpfw.config import Listener
from smtpfw.protocol import policy
from smtpfw.recording import read_records
from tests.support.cli import wait_until
from tests.support.policy import PolicyClient
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.server import REPO, running_server
from tests.support.reference import SESSION_IDS, SESSIONS, check_rcpts_behind_postfix

REFERENCE = REPO / "rules" / "reference.rules"
POLICY = (Listener("127.0.0.1", 0, "policy", kind="policy"),)


def rcpt_request(client="127.0.0.1", port=40000, helo="mx.good.example", sender="alice@good.example",
                 rcpt="bob@example.net", instance="a1.b1.1", state="RCPT") -> dict:
    return dict(protocol_state=state, protocol_name="ESMTP", client_address=client, client_port=port,
                client_name="unknown", helo_name=helo, sender=sender, recipient=rcpt, instance=instance,
                queue_id="", size="0")


@pytest.fixture
def policy_server(shared_dns, tmp_path):
    with running_server(REFERENCE, dns=shared_dns, listen=POLICY, recording_enabled=True,
                        recording_path=str(tmp_path / "rec")) as srv:
        yield srv


def test_answers_are_postfix_actions(policy_server):
    c = PolicyClient(policy_server.address)
    assert c.ask(**rcpt_request()) == "DUNNO"                                  # nothing decided
    assert c.ask(**rcpt_request(rcpt="bob@other.example")) == "554 5.7.1 Relay access denied"
    assert c.ask(**rcpt_request(rcpt="trap@example.net")) == \
        "550 5.7.1 Recipient address rejected: blocked by badrcptto"
    c.close()


def test_early_refusals_come_out_at_every_rcpt_of_their_scope(policy_server):
    c = PolicyClient(policy_server.address)
    helo = rcpt_request(port=40001, helo="bad.helo.example")
    refusal = "550 5.7.1 Helo command rejected: host name bad.helo.example is not acceptable"
    assert c.ask(**helo) == refusal
    assert c.ask(**{**helo, "recipient": "carol@example.net"}) == refusal        # the same session
    mail = rcpt_request(port=40002, sender="joe@evil.example", instance="x.1")
    assert c.ask(**mail).startswith("550 5.7.1 Sender address rejected")
    assert c.ask(**{**mail, "recipient": "carol@example.net"}).startswith("550 5.7.1 Sender address rejected")
    assert c.ask(**{**mail, "sender": "alice@good.example", "instance": "x.2"}) == "DUNNO"   # a new transaction
    dnsbl = rcpt_request(client="127.0.0.2", port=40003)
    assert c.ask(**dnsbl).startswith("554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test")
    c.close()


def test_sessions_are_recorded_and_replay(policy_server, tmp_path):
    from smtpfw.lang.compiler import compile_ruleset
    from smtpfw.replay.session import replay_record, same_as_recorded
    c = PolicyClient(policy_server.address)
    c.ask(**rcpt_request(port=41000, rcpt="bob@other.example"))
    c.ask(**rcpt_request(port=41001, sender="x@spam.example"))
    c.close()
    rec = tmp_path / "rec"
    wait_until(lambda: sum(len(f.read_text().splitlines()) for f in rec.glob("*.jsonl")) == 2, 5, "two records")
    ruleset, _ = compile_ruleset(str(REFERENCE))
    records = [r for f in rec.glob("*.jsonl") for r in read_records(str(f))]
    assert {r["listener"]["name"] for r in records} == {"policy"}
    for record in records:
        assert same_as_recorded(record, replay_record(ruleset, record))
        assert replay_record(ruleset, record).verdict.kind == "rejected"


@pytest.mark.parametrize("garbage", [
    b"this is not a policy request\n\n",
    b"request=smtpd_access_policy\nno equals sign here\n\n",
    b"request=something_else\n\n",
    b"x=" + b"y" * 10000 + b"\n\n",
    b"".join(b"a%d=1\n" % i for i in range(200)) + b"\n",
])
def test_malformed_requests_close_the_connection_and_nothing_else(policy_server, garbage, caplog):
    s = socket.create_connection(policy_server.address, timeout=10)
    s.sendall(garbage)
    try:
        assert s.recv(100) == b""
    except ConnectionResetError:
        pass
    s.close()
    c = PolicyClient(policy_server.address)                     # the server goes on
    assert c.ask(**rcpt_request()) == "DUNNO"
    c.close()
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


def _request_bytes(eol: bytes = b"\n", **attrs) -> bytes:
    attrs = {"request": "smtpd_access_policy", **rcpt_request(), **attrs}
    return b"".join(f"{k}={v}".encode() + eol for k, v in attrs.items()) + eol


def _answer(s: socket.socket) -> bytes:
    buf = b""
    while b"\n\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, f"closed after {buf!r}"
        buf += chunk
    return buf


@pytest.mark.parametrize("how", ["in pieces", "CR LF", "empty lines first", "two at once"])
def test_requests_not_in_one_piece_are_read_line_by_line(policy_server, how):
    """Postfix sends a request in one write; anything else is read too."""
    with socket.create_connection(policy_server.address, timeout=10) as s:
        if how == "in pieces":
            req = _request_bytes()
            for part in (req[:10], req[10:200], req[200:-1], req[-1:]):
                s.sendall(part)
                time.sleep(0.05)
        elif how == "CR LF":
            s.sendall(_request_bytes(b"\r\n"))
        elif how == "empty lines first":
            s.sendall(b"\n\n" + _request_bytes())
        else:
            s.sendall(_request_bytes(client_port=42001) + _request_bytes(client_port=42002,
                                                                           recipient="bob@other.example"))
        answer = _answer(s)
        if how == "two at once":
            while answer.count(b"\n\n") < 2:
                answer += _answer(s)
            assert answer == b"action=DUNNO\n\naction=554 5.7.1 Relay access denied\n\n"
        else:
            assert answer == b"action=DUNNO\n\n"
        s.sendall(_request_bytes(recipient="bob@other.example"))   # and the connection goes on
        assert _answer(s) == b"action=554 5.7.1 Relay access denied\n\n"


def test_a_request_that_does_not_end_in_time_closes_the_connection(policy_server, monkeypatch, caplog):
    monkeypatch.setattr(policy, "REQUEST_TIMEOUT", 0.3)
    with socket.create_connection(policy_server.address, timeout=10) as s:
        s.sendall(_request_bytes()[:100])
        assert s.recv(100) == b""
    wait_until(lambda: "did not end within" in caplog.text, 5, "the warning")


def test_an_idle_connection_is_closed_and_a_busy_one_is_not(policy_server, monkeypatch, tmp_path):
    monkeypatch.setattr(policy, "IDLE_TIMEOUT", 0.5)
    with socket.create_connection(policy_server.address, timeout=10) as s:
        started = time.monotonic()
        for i in range(6):                                  # a request every 0.2 s for 1.2 s: kept
            s.sendall(_request_bytes(client_port=43000 + i))
            assert _answer(s) == b"action=DUNNO\n\n"
            time.sleep(0.2)
        assert time.monotonic() - started > 1.0
        assert s.recv(100) == b""                           # then idle: closed
    # the last session was logged and recorded when the connection closed
    rec = tmp_path / "rec"
    wait_until(lambda: sum(len(f.read_text().splitlines()) for f in rec.glob("*.jsonl")) == 6, 5, "six records")


# ---- a real Postfix asking smtpfw ----------------------------------------------------

@pytest.fixture(scope="module")
def postfix_with_policy(shared_dns):
    why = postfix_available()
    if why:
        pytest.fail(why)
    with running_server(REFERENCE, dns=shared_dns, listen=POLICY) as srv:
        settings = {
            "smtpd_recipient_restrictions":
                f"check_policy_service inet:127.0.0.1:{srv.port}, permit_mynetworks, reject_unauth_destination",
            "smtpd_policy_service_timeout": "30s",
        }
        with PostfixInstance(settings) as pf:
            yield pf


@pytest.mark.parametrize("client,helo,sender,rcpts,delivered", SESSIONS, ids=SESSION_IDS)
def test_postfix_with_smtpfw_policy_reaches_the_inline_verdicts(postfix_with_policy, client, helo, sender, rcpts, delivered):
    pf = postfix_with_policy
    check_rcpts_behind_postfix(pf.port, client, helo, sender, rcpts)


def test_smtpfw_policy_command(tmp_path):
    """`smtpfw policy --listen ...`: the same ruleset, as a policy service."""
    from tests.support.cli import Serve
    srv = Serve("--listen", "127.0.0.1:0", "--workers", "1", "--rules", str(REFERENCE),
                "--maildir", str(tmp_path / "md"), command="policy")
    try:
        c = PolicyClient(("127.0.0.1", srv.port))
        assert c.ask(**rcpt_request(rcpt="bob@other.example")) == "554 5.7.1 Relay access denied"
        c.close()
    finally:
        srv.stop()


def test_a_login_after_the_first_request_of_a_session_counts(tmp_path):
    """Postfix asks at CONNECT (smtpd_client_restrictions) before the client
    logs in, then at RCPT with sasl_username: the session is authenticated
    from then on."""
    rules = tmp_path / "auth.rules"
    rules.write_text('on rcpt:\n    [need-auth] reject 554 5.7.1 "log in first" if not auth\n'
                     '    [alice] reject 554 5.7.1 "not alice" if auth.user != "alice"\n')
    with running_server(str(rules), listen=POLICY) as srv:
        c = PolicyClient(srv.address)
        connect = {**rcpt_request(instance="i1", state="CONNECT"), "sasl_username": ""}
        assert c.ask(**connect) == "DUNNO"
        assert c.ask(**{**rcpt_request(instance="i1"), "sasl_username": "alice"}) == "DUNNO"
        assert c.ask(**{**rcpt_request(instance="i2"), "sasl_username": "alice"}) == "DUNNO"
        c.close()
        c = PolicyClient(srv.address)
        assert c.ask(**{**rcpt_request(instance="i3"), "sasl_username": ""}).startswith("554 5.7.1 log in first")
        c.close()
