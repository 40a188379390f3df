"""Regression tests for the security review's protocol findings: each one
failed on the code before its fix.  Real server, real sockets, real TLS."""

from __future__ import annotations

import base64
import smtplib
import ssl
import time

import pytest

from tests.smtp_client import RawClient
from tests.support.cli import wait_until
from tests.support.dnsserver import DnsServer
from tests.support.server import SHARED, has_ipv6_loopback, running_server

RELAY_RULES = """
on mail:
    [need-tls] reject 530 5.7.0 "Must issue a STARTTLS command first" if not tls
on rcpt:
    [authenticated] accept if auth
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""
PLAIN_RULES = """
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _open_slots(srv) -> tuple[int, dict]:
    return srv.call(lambda: (srv.server.connections, dict(srv.server.per_ip)))


def _starttls_then(srv, act) -> None:
    """EHLO, STARTTLS, 220 Ready; then ``act(raw socket)`` misbehaves."""
    c = RawClient(srv.address)
    c.reply()
    c.cmd("EHLO client.example")
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    act(c.sock)
    return c


# ---- 1. a STARTTLS handshake that never completes --------------------------

def _garbage(sock):
    sock.sendall(b"this is not a TLS ClientHello\r\n" * 4)


def _close_at_once(sock):
    sock.close()


def _silent(sock):
    pass


def _rejects_certificate(sock):
    ctx = ssl.create_default_context()          # verifies: the self-signed cert is refused
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(sock, server_hostname="mx.test")


@pytest.mark.parametrize("act", [_garbage, _close_at_once, _silent, _rejects_certificate])
def test_failed_tls_handshakes_release_their_connection_slots(cert, act):
    with running_server(rules_text=PLAIN_RULES, tls_cert=cert[0], tls_key=cert[1], max_connections_per_ip=2,
                        tls_handshake_timeout=0.5) as srv:
        clients = []
        for _ in range(4):                                            # twice the per-IP cap
            clients.append(_starttls_then(srv, act))
            wait_until(lambda: _open_slots(srv) == (0, {}), 5, "the slot released")
        with smtplib.SMTP(*srv.address, timeout=10) as s:            # not "421 Too many connections"
            assert s.ehlo("client.example")[0] == 250
        for c in clients:
            c.close()


def test_stop_with_a_handshake_in_progress(cert):
    with running_server(rules_text=PLAIN_RULES, tls_cert=cert[0], tls_key=cert[1]) as srv:
        c = _starttls_then(srv, _silent)
        assert _open_slots(srv)[0] == 1
        srv.call(srv.server.stop, 0.1)                                # no AttributeError
        assert _open_slots(srv) == (0, {})
        c.close()


# ---- 3. STARTTLS state: junk argument, AUTH across TLS, EOF under TLS ------

def test_starttls_with_an_argument_does_not_count_as_tls(cert):
    with running_server(rules_text=RELAY_RULES, tls_cert=cert[0], tls_key=cert[1],
                        recording_enabled=True) as srv:
        c = RawClient(srv.address)
        c.reply()
        c.cmd("EHLO client.example")
        assert c.cmd("STARTTLS junk").startswith("501 5.5.4")
        assert c.cmd("MAIL FROM:<a@b.example>").startswith("530 5.7.0")   # `if not tls` still holds
        c.send(b"EHLO client.example\r\n")
        lines = []
        while not (lines and lines[-1].startswith("250 ")):
            lines.append(c.line())
        assert "STARTTLS" in [line[4:] for line in lines]                  # still offered
        c.cmd("QUIT")


def test_auth_does_not_survive_starttls(cert, users):
    with running_server(rules_text=RELAY_RULES.replace("[need-tls]", "# "), tls_cert=cert[0], tls_key=cert[1],
                        auth_users_file=users, auth_allow_plaintext=True) as srv:
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            s.ehlo("client.example")
            s.login("alice", "s3cret")
            s.starttls(context=_client_tls())
            s.ehlo("client.example")
            assert "PLAIN" in s.esmtp_features["auth"]                      # offered again
            s.mail("alice@example.org")
            assert s.rcpt("bob@far.example")[0] == 554                      # no longer authenticated


def test_client_closing_tls_after_its_message_still_gets_it_delivered(cert, tmp_path):
    from tests.support.server import maildir_messages
    rules = ('plugin slow = "tests.support.plugins:Slow"\non queue:\n    run slow\n' + PLAIN_RULES)
    with running_server(rules_text=rules, tls_cert=cert[0], tls_key=cert[1], maildir=tmp_path / "md") as srv:
        c = _starttls_then(srv, _silent)
        tls = _client_tls().wrap_socket(c.sock, server_hostname="mx.test")
        tls.sendall(b"EHLO client.example\r\n")
        buf = b""
        while not buf.endswith(b"250 ENHANCEDSTATUSCODES\r\n") and b"\r\n250 " not in buf:
            buf += tls.recv(4096)
        tls.sendall(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n")
        buf = b""
        while b"354" not in buf:
            buf += tls.recv(4096)
        tls.sendall(b"Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        tls.unwrap()                       # close_notify while the queue hook is still running
        tls.close()
        wait_until(lambda: len(maildir_messages(tmp_path / "md")) == 1, 5, "the message on disk")


# ---- 2. per-session bounds ----------------------------------------------

def test_ehlo_is_a_junk_command():
    with running_server(rules_text=PLAIN_RULES, max_junk_commands=5) as srv:
        c = RawClient(srv.address)
        c.reply()
        for _ in range(5):
            assert c.cmd("EHLO client.example").startswith("250 ")
        assert c.cmd("EHLO client.example").startswith("421 4.7.0")
        assert c.closed()


def test_refused_recipients_count_as_errors(tmp_path):
    with running_server(rules_text=PLAIN_RULES, max_errors=3, recording_enabled=True,
                        recording_path=str(tmp_path / "rec")) as srv:
        c = RawClient(srv.address)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        for _ in range(4):
            assert c.cmd("RCPT TO:<x@far.example>").startswith("554 5.7.1")
        assert c.line().startswith("421 4.7.0 Too many errors")
        assert c.closed()


def test_the_session_log_line_stays_short(tmp_path, caplog):
    """Many recipients: the log line shows 20 and a count, the record all."""
    import logging
    from smtpfw.recording import read_records
    rec = tmp_path / "rec"
    with caplog.at_level(logging.INFO, logger="smtpfw.session"), \
            running_server(rules_text=PLAIN_RULES, recording_enabled=True, recording_path=str(rec)) as srv:
        c = RawClient(srv.address)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@b.example>")
        for i in range(60):
            c.cmd(f"RCPT TO:<user{i}@localhost>")
        c.cmd("QUIT")
        c.close()
        wait_until(lambda: any("rcpts=" in r.getMessage() for r in caplog.records), 5, "the session line")
    (line,) = [r.getMessage() for r in caplog.records if "rcpts=" in r.getMessage()]
    assert "user19@localhost:250" in line and "user20@localhost" not in line and "+40 more" in line
    (record,) = [r for f in rec.glob("*.jsonl") for r in read_records(str(f))]
    assert sum(e["cmd"] == "rcpt" for e in record["events"]) == 60


def test_transactions_per_session_are_capped():
    with running_server(rules_text=PLAIN_RULES, max_transactions=3) as srv:
        c = RawClient(srv.address)
        c.reply()
        c.cmd("EHLO client.example")
        for _ in range(3):
            assert c.cmd("MAIL FROM:<a@b.example>").startswith("250 ")
            c.cmd("RSET")
        assert c.cmd("MAIL FROM:<a@b.example>").startswith("421 4.7.0 Too many transactions")
        assert c.closed()


def test_recorded_events_are_bounded(tmp_path):
    from smtpfw.recording import read_records
    rec = tmp_path / "rec"
    with running_server(rules_text=PLAIN_RULES, recording_enabled=True, recording_path=str(rec),
                        recording_max_events=10) as srv:
        c = RawClient(srv.address)
        c.reply()
        c.cmd("EHLO client.example")
        for _ in range(30):
            c.cmd("MAIL FROM:<a@b.example>")
            c.cmd("RCPT TO:<u@localhost>")
            c.cmd("RSET")
        c.cmd("QUIT")
        c.close()
        wait_until(lambda: list(rec.glob("*.jsonl")) and rec.glob("*.jsonl").__next__().read_text(), 5, "a record")
    (record,) = [r for f in rec.glob("*.jsonl") for r in read_records(str(f))]
    assert len(record["events"]) == 10
    assert record["events_dropped"] == 81


def test_dns_work_stops_when_the_session_budget_is_spent():
    rules = """
zone dbl = rhsbl "dbl.test"
on mail:
    reject 550 5.7.1 "listed" if sender.domain listed in dbl
""" + PLAIN_RULES
    with DnsServer([SHARED / "zones" / "dbl.test"], delay=2.0) as dns:
        with running_server(rules_text=rules, dns=dns, dns_timeout=3.0, dns_session_budget=0.3,
                            max_transactions=10_000, dns_health_interval=0) as srv:   # only the session asks
            c = RawClient(srv.address, timeout=30)
            c.reply()
            for i in range(40):
                c.cmd("EHLO client.example")
                c.cmd(f"MAIL FROM:<a@d{i}.example>")
            # The budget was spent on the first MAIL; later domains send nothing.
            assert dns.queries <= 2
            assert srv.call(lambda: len(srv.server.resolver._inflight)) <= 1
            c.cmd("QUIT")
            c.close()
            # The session is gone: nothing is left waiting on the slow server.
            wait_until(lambda: srv.call(lambda: len(srv.server.resolver._inflight)) == 0, 1.5,
                       "abandoned lookups cancelled")


def test_session_lookup_cap():
    rules = """
zone dbl = rhsbl "dbl.test"
on mail:
    reject 550 5.7.1 "listed" if sender.domain listed in dbl
""" + PLAIN_RULES
    with DnsServer([SHARED / "zones" / "dbl.test"]) as dns:
        with running_server(rules_text=rules, dns=dns, dns_session_max_lookups=5, max_junk_commands=1000,
                            dns_health_interval=0) as srv:                               # only the session asks
            c = RawClient(srv.address)
            c.reply()
            c.cmd("EHLO client.example")
            for i in range(20):
                c.cmd(f"MAIL FROM:<a@d{i}.example>")
                c.cmd("RSET")
            c.cmd("QUIT")
    assert dns.queries == 5


# ---- 4. AUTH: no timing oracle, no event-loop stall, a throttle -------------

def _auth_plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_auth_failures_are_throttled_across_connections(users):
    with running_server(rules_text=PLAIN_RULES, auth_users_file=users, auth_allow_plaintext=True,
                        auth_max_failures=3) as srv:
        for _ in range(3):
            with RawClient(srv.address) as c:
                c.reply()
                c.cmd("EHLO client.example")
                assert c.cmd(_auth_plain("alice", "wrong")).startswith("535 5.7.8")
        with RawClient(srv.address) as c:
            c.reply()
            c.cmd("EHLO client.example")
            assert c.cmd(_auth_plain("alice", "s3cret")).startswith("454 4.7.0")   # even the right one


def test_auth_exchanges():
    from smtpfw.protocol.sasl import Exchange
    x = Exchange("PLAIN", base64.b64encode(b"\0alice\0pw").decode())
    assert (x.challenge, x.login, x.password, x.error) == (None, b"alice", b"pw", None)
    x = Exchange("PLAIN")
    assert x.challenge == ""
    x.respond(b"*")
    assert x.error.startswith("501 5.7.0")
    x = Exchange("LOGIN")
    x.respond(base64.b64encode(b"alice"))
    assert x.challenge == "UGFzc3dvcmQ6"
    x.respond(base64.b64encode(b"pw"))
    assert (x.challenge, x.login, x.password) == (None, b"alice", b"pw")
    assert Exchange("PLAIN", "!!!").error.startswith("501 5.5.2")
    assert Exchange("PLAIN", base64.b64encode(b"bob\0alice\0pw").decode()).error.startswith("535")


def _auth_time(port: int, user: str) -> float:
    with RawClient(("127.0.0.1", port), timeout=30) as c:
        c.reply()
        c.cmd("EHLO client.example")
        start = time.perf_counter()
        reply = c.cmd(_auth_plain(user, "wrong"))
        took = time.perf_counter() - start
        assert reply.startswith("535 5.7.8")
        return took


def test_auth_timing_against_a_real_server(users, tmp_path):
    """Measured on a real `smtpfw serve`: an unknown user fails as slowly as
    a known one, and a burst of failed logins does not stall other clients."""
    from tests.support.cli import Serve
    cfg = tmp_path / "smtpfw.yaml"
    cfg.write_text(f"auth:\n  users_file: {users}\n  allow_plaintext: true\n  max_failures: 1000\n"
                   f"limits:\n  max_errors: 1000\n")
    srv = Serve("--config", str(cfg), "--listen", "127.0.0.1:0", "--workers", "1",
                "--maildir", str(tmp_path / "md"))
    try:
        # alternated, so other work on the machine slows both alike
        pairs = [(_auth_time(srv.port, "alice"), _auth_time(srv.port, "mallory")) for _ in range(7)]
        known, unknown = (sorted(p[i] for p in pairs)[3] for i in (0, 1))
        assert unknown > 0.5 * known, pairs                 # before: ~0.001 s vs ~0.05 s

        # 20 pipelined failed logins on one connection; meanwhile a NOOP elsewhere.
        flood = RawClient(("127.0.0.1", srv.port), timeout=60)
        flood.reply()
        flood.cmd("EHLO client.example")
        other = RawClient(("127.0.0.1", srv.port), timeout=60)
        other.reply()
        other.cmd("EHLO client.example")
        started = time.perf_counter()
        flood.send(("".join(_auth_plain("alice", f"wrong{i}") + "\r\n" for i in range(20))).encode())
        time.sleep(0.05)
        noop_start = time.perf_counter()
        assert other.cmd("NOOP").startswith("250")
        noop = time.perf_counter() - noop_start
        for _ in range(20):
            assert flood.reply().startswith("535")
        flood_took = time.perf_counter() - started
        assert noop < flood_took / 4, (noop, flood_took)    # before: NOOP waited for most of the flood
        flood.close()
        other.close()
    finally:
        srv.stop()


# ---- 6, 8: addresses and per-client caps ----------------------------------

def test_dual_stack_listener_sees_ipv4_clients_as_ipv4(tmp_path):
    """`serve --listen [::]:P` takes IPv4 clients too; they are IPv4 to rules and logs."""
    from tests.support.cli import Serve
    if not has_ipv6_loopback():
        pytest.fail("this machine has no IPv6 loopback")
    rules = tmp_path / "v4.rules"
    rules.write_text('on connect:\n    reject 554 5.7.1 "v4 seen" if client.ip = 127.0.0.1\n' + PLAIN_RULES)
    srv = Serve("--listen", "[::]:0", "--workers", "1", "--rules", str(rules), "--maildir", str(tmp_path / "md"))
    try:
        with RawClient(("127.0.0.1", srv.port)) as c:
            assert c.reply() == "554 5.7.1 v4 seen"
        with RawClient(("::1", srv.port)) as c:
            assert c.reply().startswith("220 ")
        srv.wait_for(r"session=\S+ client=127\.0\.0\.1 ")
    finally:
        srv.stop()
    assert "::ffff:" not in srv.rest


def test_per_ip_cap_counts_networks_and_exempts_trusted_ones():
    import ipaddress
    with running_server(rules_text=PLAIN_RULES, max_connections_per_ip=1, per_ip_ipv4_prefix=24,
                        exempt_networks=(ipaddress.ip_network("127.0.1.0/24"),)) as srv:
        with RawClient(srv.address, source="127.0.0.1") as a, RawClient(srv.address, source="127.0.0.2") as b:
            assert a.reply().startswith("220 ")
            assert b.reply().startswith("421 4.7.0")        # same /24: one client
        with RawClient(srv.address, source="127.0.1.1") as a, RawClient(srv.address, source="127.0.1.1") as b:
            assert a.reply().startswith("220 ") and b.reply().startswith("220 ")   # a trusted relay


def test_ipv6_clients_are_counted_by_their_slash_64():
    from dataclasses import replace
    from smtpfw.config import Config
    from smtpfw.server import client_network
    cfg = Config()
    assert client_network("2001:db8:1:2::1", cfg) == client_network("2001:db8:1:2:ffff::9", cfg)
    assert client_network("2001:db8:1:2::1", cfg) != client_network("2001:db8:1:3::1", cfg)
    assert client_network("192.0.2.1", cfg) != client_network("192.0.2.2", cfg)
    assert client_network("2001:db8::1", replace(cfg, per_ip_ipv6_prefix=128)) == "2001:db8::1"


# ---- 10, 11: line and reply lengths ------------------------------------------

def test_a_998_octet_line_that_starts_with_a_dot_is_legal(tmp_path):
    with running_server(rules_text=PLAIN_RULES) as srv:
        with smtplib.SMTP(*srv.address, timeout=10) as s:
            s.ehlo("client.example")
            assert s.sendmail("a@b.example", ["u@localhost"], b"Subject: x\r\n\r\n." + b"a" * 997 + b"\r\n") == {}
            with pytest.raises(smtplib.SMTPDataError) as err:
                s.sendmail("a@b.example", ["u@localhost"], b"Subject: x\r\n\r\n." + b"a" * 998 + b"\r\n")
            assert err.value.smtp_code == 552


def test_long_reply_text_is_cut_to_one_legal_line(tmp_path):
    from smtpfw import replies
    line = replies.line(554, "5.7.1", "é" * 600)
    assert len(line.encode()) <= 510 and line.startswith("554 5.7.1 é") and line.endswith("...")
    zone = tmp_path / "bl.test"
    zone.write_text("$TTL 60\n:127.0.0.2:" + "x" * 800 + "\n127.0.0.2\n")       # an 800-octet TXT answer
    rules = 'zone bl = dnsbl "bl.test"\non connect:\n    reject 554 5.7.1 "listed: {dnsbl.txt}" if client.ip listed in bl\n'
    with DnsServer([zone]) as dns, running_server(rules_text=rules, dns=dns) as srv:
        with RawClient(srv.address, source="127.0.0.2") as c:
            reply = c.reply()
    assert reply.startswith("554 5.7.1 listed: xxx") and len(reply) <= 510


# ---- 12: an RHSBL lookup of a very long sender domain -------------------------

def test_a_long_subdomain_does_not_escape_an_rhsbl(tmp_path):
    """An RHSBL that lists evil.example and its subdomains: a sender domain
    too long to query below the zone is looked up without its leading labels."""
    rules = """
zone dbl = rhsbl "dbl.test"
on mail:
    reject 550 5.7.1 "listed" if sender.domain listed in dbl
""" + PLAIN_RULES
    zone = tmp_path / "dbl.test"
    zone.write_text("$TTL 60\n.evil.example\n")
    long_domain = ".".join(["a" * 60] * 4) + ".evil.example"
    assert len(long_domain) + len(".dbl.test") > 253
    with DnsServer([zone]) as dns:
        with running_server(rules_text=rules, dns=dns) as srv:
            with RawClient(srv.address) as c:
                c.reply()
                c.cmd("EHLO client.example")
                assert c.cmd(f"MAIL FROM:<x@{long_domain}>").startswith("550 5.7.1 listed")


# ---- 15: a memory budget for messages ---------------------------------------

def test_message_memory_budget_across_sessions(tmp_path):
    with running_server(rules_text=PLAIN_RULES, message_memory=1024 * 1024, maildir=tmp_path / "md") as srv:
        a = RawClient(srv.address, timeout=30)
        a.reply()
        a.cmd("EHLO client.example")
        a.cmd("MAIL FROM:<a@b.example>")
        a.cmd("RCPT TO:<u@localhost>")
        assert a.cmd("DATA").startswith("354")
        a.send(b"Subject: big\r\n\r\n" + (b"a" * 998 + b"\r\n") * 700)          # ~700 KB held, not ended
        wait_until(lambda: srv.call(lambda: srv.server.message_bytes) > 600_000, 5, "A's bytes held")
        with RawClient(srv.address, timeout=30) as b:
            b.reply()
            b.cmd("EHLO client.example")
            assert b.cmd("MAIL FROM:<a@b.example> SIZE=600000").startswith("452 4.3.1")   # declared: at MAIL
            b.cmd("MAIL FROM:<a@b.example>")
            b.cmd("RCPT TO:<u@localhost>")
            assert b.cmd("DATA").startswith("354")
            b.send(b"Subject: b\r\n\r\n" + (b"b" * 998 + b"\r\n") * 700 + b".\r\n")
            assert b.reply().startswith("452 4.3.1")                                     # found while reading
        a.send(b".\r\n")
        assert a.reply().startswith("250 ")
        a.close()
        wait_until(lambda: srv.call(lambda: srv.server.message_bytes) == 0, 5, "the budget freed")
        with smtplib.SMTP(*srv.address, timeout=30) as b:                        # room again
            b.ehlo("client.example")
            assert b.sendmail("a@b.example", ["u@localhost"],
                              b"Subject: b\r\n\r\n" + (b"b" * 998 + b"\r\n") * 700) == {}
