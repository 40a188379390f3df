"""The PROXY protocol, versions 1 and 2 (HAProxy's spec,
https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt): the header a
load balancer sends before the client's first byte, naming the client it
relays for.  Without it, behind HAProxy or a cloud load balancer (AWS NLB
speaks only version 2) every session would come from the balancer.

``parse(data)`` reads a header from the start of ``data``.  It returns
``NEED_MORE`` while the header may still be incomplete, raises
``ProxyError`` for anything malformed, else ``(Origin, length)``: the
client's address (None for a health check: v2 LOCAL, v1 UNKNOWN, or an
address family it does not name) and how many bytes the header took.
Pure: no I/O, so the edge cases are tested without sockets.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107                   # the longest v1 line, CRLF included
V2_MAX = 16 + 1024             # what we accept of v2 (addresses and TLVs); the spec allows 64 KiB
NEED_MORE = None


class ProxyError(Exception):
    """Not a PROXY header, or a malformed one."""


@dataclass(frozen=True, slots=True)
class Origin:
    ip: str
    port: int


def parse(data: bytes) -> tuple[Origin | None, int] | None:
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)] and len(data) < len(V2_SIGNATURE):
        return NEED_MORE
    if data.startswith(V2_SIGNATURE):
        return _v2(data)
    if V1_PREFIX.startswith(data[:len(V1_PREFIX)]) and len(data) < len(V1_PREFIX):
        return NEED_MORE
    if data.startswith(V1_PREFIX):
        return _v1(data)
    raise ProxyError("no PROXY header")


def _v1(data: bytes) -> tuple[Origin | None, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end == -1:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyError("PROXY v1 line too long or not ended by CRLF")
        return NEED_MORE
    try:
        words = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 line is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return None, end + 2
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyError("PROXY v1 needs: PROXY TCP4|TCP6 SOURCE DEST SPORT DPORT")
    _, family, source, _dest, sport, _dport = words
    ip = _address(source, 4 if family == "TCP4" else 6)
    return Origin(ip, _port(sport)), end + 2


def _v2(data: bytes) -> tuple[Origin | None, int] | None:
    if len(data) < 16:
        return NEED_MORE
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    if ver_cmd >> 4 != 2 or ver_cmd & 0x0F not in (0, 1):
        raise ProxyError(f"PROXY v2: unknown version/command byte {ver_cmd:#04x}")
    if 16 + length > V2_MAX:
        raise ProxyError(f"PROXY v2: header of {16 + length} bytes is more than {V2_MAX}")
    if len(data) < 16 + length:
        return NEED_MORE
    body = data[16:16 + length]
    if ver_cmd & 0x0F == 0:                      # LOCAL: the balancer itself (a health check)
        return None, 16 + length
    family = fam >> 4
    if family == 1:                              # AF_INET: src, dst, sport, dport
        if len(body) < 12:
            raise ProxyError("PROXY v2: truncated IPv4 addresses")
        return Origin(str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0]), 16 + length
    if family == 2:                              # AF_INET6
        if len(body) < 36:
            raise ProxyError("PROXY v2: truncated IPv6 addresses")
        ip = ipaddress.IPv6Address(body[0:16])
        ip_text = str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
        return Origin(ip_text, struct.unpack("!H", body[32:34])[0]), 16 + length
    return None, 16 + length                     # AF_UNSPEC / AF_UNIX: no client address to use


def _address(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"PROXY v1: {text!r} is not an IP address") from None
    if ip.version != version:
        raise ProxyError(f"PROXY v1: {text!r} is not an IPv{version} address")
    return str(ip)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535 or (len(text) > 1 and text[0] == "0"):
        raise ProxyError(f"PROXY v1: {text!r} is not a port")
    return int(text)
