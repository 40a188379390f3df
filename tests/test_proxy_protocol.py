"""The PROXY protocol (v1 and v2): the parser on its own, the real server
behind raw sockets, and the real server behind a real HAProxy."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess

import pytest

from smtpfw.config import ConfigError, Listener, from_mapping
from smtpfw.protocol import proxy
from tests.smtp_client import RawClient
from tests.support.cli import wait_until
from tests.support.server import running_server

V2 = proxy.V2_SIGNATURE
RULES = """
on connect:
    reject 554 5.7.1 "from {client.ip}" if client.ip = 192.0.2.7
    reject 554 5.7.1 "from {client.ip}" if client.ip = "2001:db8::7"
    reject 554 5.7.1 "from {client.ip}" if client.ip = 127.0.0.9
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


def closed_without_a_word(sock) -> bool:
    """The server closed the connection and sent nothing (an RST when our
    bytes were left unread is a close too)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2 + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def v2_tcp4(src: str, sport: int) -> bytes:
    body = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address("127.0.0.1").packed + struct.pack("!HH", sport, 25)
    return v2(1, 0x11, body)


def v2_tcp6(src: str, sport: int) -> bytes:
    body = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address("::1").packed + struct.pack("!HH", sport, 25)
    return v2(1, 0x21, body + b"\x04\x00\x01x")          # a TLV after the addresses is skipped


# ---- the parser -------------------------------------------------------------------

@pytest.mark.parametrize("data, origin", [
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\nEHLO x\r\n", proxy.Origin("192.0.2.7", 5555)),
    (b"PROXY TCP6 2001:db8::7 ::1 5555 25\r\n", proxy.Origin("2001:db8::7", 5555)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    (v2_tcp4("192.0.2.7", 5555) + b"EHLO x\r\n", proxy.Origin("192.0.2.7", 5555)),
    (v2_tcp6("2001:db8::7", 5555), proxy.Origin("2001:db8::7", 5555)),
    (v2_tcp6("::ffff:192.0.2.7", 1), proxy.Origin("192.0.2.7", 1)),
    (v2(0, 0x00, b""), None),                                         # LOCAL: a health check
    (v2(1, 0x00, b""), None),                                         # UNSPEC
])
def test_headers(data, origin):
    got, length = proxy.parse(data)
    assert got == origin
    assert data[length:] in (b"", b"EHLO x\r\n")


@pytest.mark.parametrize("data", [b"", b"PRO", b"PROXY TCP4 192.0.2.7", V2[:5], V2, v2_tcp4("192.0.2.7", 1)[:20]])
def test_incomplete_headers_ask_for_more(data):
    assert proxy.parse(data) is proxy.NEED_MORE


@pytest.mark.parametrize("data", [
    b"EHLO client.example\r\n", b"GET / HTTP/1.0\r\n", b"PROXY TCP4 192.0.2.7 127.0.0.1 5555\r\n",
    b"PROXY TCP4 2001:db8::7 127.0.0.1 5555 25\r\n", b"PROXY TCP4 192.0.2.300 127.0.0.1 5555 25\r\n",
    b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 25\r\n", b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\n",
    b"PROXY " + b"x" * 200, b"PROXY TCP4 \xff\r\n",
    V2 + bytes([0x31, 0x11, 0, 12]) + bytes(12),                   # version 3
    V2 + bytes([0x22, 0x11, 0, 12]) + bytes(12),                   # command 2
    v2(1, 0x11, bytes(8)), v2(1, 0x21, bytes(20)),                 # truncated addresses
    V2 + bytes([0x21, 0x11, 0xFF, 0xFF]),                          # 64 KiB of header
])
def test_malformed_headers(data):
    with pytest.raises(proxy.ProxyError):
        proxy.parse(data)


def test_config():
    cfg = from_mapping({"listen": [{"address": "127.0.0.1:25", "proxy_from": ["10.0.0.0/8", "::1"]}]})
    assert cfg.listen[0].proxy_from == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    with pytest.raises(ConfigError, match=r"proxy_from\[0\]: not an IP address or network"):
        from_mapping({"listen": [{"address": "127.0.0.1:25", "proxy_from": ["lb.example"]}]})


# ---- the real server ----------------------------------------------------------------

def _proxy_listener(*trusted: str) -> tuple:
    return (Listener("127.0.0.1", 0, "lb", tuple(ipaddress.ip_network(t) for t in trusted)),)


@pytest.mark.parametrize("header, shown", [
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n", "192.0.2.7"),
    (v2_tcp4("192.0.2.7", 5555), "192.0.2.7"),
    (v2_tcp6("2001:db8::7", 5555), "2001:db8::7"),
])
def test_client_ip_is_the_one_the_header_names(header, shown):
    with running_server(rules_text=RULES, listen=_proxy_listener("127.0.0.1/32")) as srv:
        with RawClient(srv.address) as c:
            c.send(header)
            assert c.reply() == f"554 5.7.1 from {shown}"


def test_health_check_and_pipelined_commands_after_the_header():
    with running_server(rules_text=RULES, listen=_proxy_listener("127.0.0.1/32")) as srv:
        with RawClient(srv.address) as c:                       # LOCAL: the balancer is the client
            c.send(v2(0, 0x00, b"") + b"EHLO lb.example\r\n")
            assert c.reply().startswith("220 ")
            assert c.reply().startswith("250 ")


@pytest.mark.parametrize("data", [
    b"EHLO client.example\r\n",                                    # no header at all
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555\r\n",                    # malformed
    v2_tcp4("192.0.2.7", 5555)[:20],                               # truncated, then the client closes
])
def test_missing_or_malformed_headers_close_without_a_word(data, caplog):
    with running_server(rules_text=RULES, listen=_proxy_listener("127.0.0.1/32")) as srv:
        with RawClient(srv.address) as c:
            c.send(data)
            c.sock.shutdown(socket.SHUT_WR)
            assert closed_without_a_word(c.sock)
        wait_until(lambda: srv.call(lambda: srv.server.connections) == 0, 5, "the slot released")
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


def test_a_header_from_an_untrusted_address_is_refused():
    with running_server(rules_text=RULES, listen=_proxy_listener("127.0.0.2/32")) as srv:
        with RawClient(srv.address, source="127.0.0.1") as c:
            c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n")
            assert closed_without_a_word(c.sock)                   # not a word: no forged client
        with RawClient(srv.address, source="127.0.0.2") as c:      # the trusted balancer
            c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n")
            assert c.reply() == "554 5.7.1 from 192.0.2.7"


def test_listeners_without_proxy_from_take_no_header():
    with running_server(rules_text=RULES) as srv:
        with RawClient(srv.address) as c:
            assert c.reply().startswith("220 ")
            assert c.cmd("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25").startswith("500 5.5.2")


# ---- behind a real HAProxy -------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def haproxy(tmp_path):
    """HAProxy (Debian's package) with two frontends in front of a given
    port: one that sends PROXY v2 and one that sends v1."""
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not shutil.which(exe):
        pytest.fail("haproxy is not installed (.ci/run installs Debian's haproxy package)")
    procs = []

    def start(backend_port: int) -> dict[str, int]:
        ports = {"v2": _free_port(), "v1": _free_port()}
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(f"""
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe_v2
    bind 127.0.0.1:{ports['v2']}
    default_backend be_v2
backend be_v2
    server smtpfw 127.0.0.1:{backend_port} send-proxy-v2
frontend fe_v1
    bind 127.0.0.1:{ports['v1']}
    default_backend be_v1
backend be_v1
    server smtpfw 127.0.0.1:{backend_port} send-proxy
""")
        proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", ports["v1"]), timeout=1).close()
                return True
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                return False

        wait_until(listening, 10, "haproxy listening")
        return ports

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_behind_haproxy_the_client_is_the_original_one(haproxy, version, tmp_path):
    with running_server(rules_text=RULES, listen=_proxy_listener("127.0.0.1/32"), recording_enabled=True,
                        recording_path=str(tmp_path / "rec")) as srv:
        ports = haproxy(srv.port)
        with RawClient(("127.0.0.1", ports[version]), source="127.0.0.9") as c:
            assert c.reply() == "554 5.7.1 from 127.0.0.9"           # not 127.0.0.1, HAProxy's address
        with RawClient(("127.0.0.1", ports[version]), source="127.0.0.10") as c:
            assert c.reply().startswith("220 ")
            assert c.cmd("EHLO client.example").startswith("250 ")
            assert c.cmd("MAIL FROM:<a@b.example>").startswith("250 ")
            assert c.cmd("RCPT TO:<u@localhost>").startswith("250 ")
            c.cmd("QUIT")
        # and straight to smtpfw, without the balancer, nothing gets in
        with RawClient(srv.address, source="127.0.0.9") as c:
            c.send(b"EHLO client.example\r\n")
            assert closed_without_a_word(c.sock)
