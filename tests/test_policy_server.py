"""smtpfw as a Postfix policy-delegation service: the protocol spoken by
hand, malformed requests, and a real Postfix asking it (check_policy_service)
with rules/reference.rules, which must reach the verdicts smtpfw reaches
inline (tests/test_reference_policy.py)."""

from __future__ import annotations

import socket

import pytest

from smtpfw.config import Listener
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
