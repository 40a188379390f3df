"""A small real DNS server on loopback, for tests and the benchmark.

Serves rbldnsd-format ip4set/dnset zones plus static records, with fault
modes (delay, blackhole, servfail, refused, a fixed A answer, UDP truncation)
to exercise the resolver over real sockets instead of mocks.  It runs in a
background thread with its own event loop so synchronous tests can use it.

    python tests/support/dnsserver.py --port 5353 ../shared/zones/bl.test ...
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

if __package__:
    from tests.support.loopthread import start_loop_thread, stop_loop_thread
else:  # run as a script (the benchmark does): python tests/support/dnsserver.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.support.loopthread import start_loop_thread, stop_loop_thread

A, TXT, SOA, NS, ANY = (dns.rdatatype.A, dns.rdatatype.TXT, dns.rdatatype.SOA,
                        dns.rdatatype.NS, dns.rdatatype.ANY)
IN = dns.rdataclass.IN

# (A value, TXT template or None); None as a whole = excluded ("!entry")
Value = tuple[str, str | None] | None


@dataclass
class RbldnsdZone:
    """One rbldnsd dataset served as a zone."""

    name: dns.name.Name
    kind: str                                   # "ip4set" | "dnset"
    ttl: int = 60
    soa: dns.rrset.RRset | None = None
    ns: dns.rrset.RRset | None = None
    # ip4set: {prefixlen: {network: value}}, probed longest prefix first;
    # IPv4 and IPv6 networks share buckets (they never compare equal)
    nets: dict[int, dict] = field(default_factory=dict)
    # dnset: exact names and "subdomains of" names (text, no trailing dot)
    exact: dict[str, Value] = field(default_factory=dict)
    wild: dict[str, Value] = field(default_factory=dict)

    def lookup(self, rel: tuple[str, ...]) -> tuple[str, str | None, str] | None:
        """(A, TXT or None, what `$` becomes) for relative labels, or None."""
        if self.kind == "ip4set":
            ip = _labels_to_ip(rel)
            if ip is None:
                return None
            for plen in sorted(self.nets, reverse=True):
                if plen > ip.max_prefixlen:
                    continue
                net = ipaddress.ip_network((ip, plen), strict=False)
                if net in self.nets[plen]:
                    value = self.nets[plen][net]
                    return None if value is None else (*value, str(ip))
            return None
        name = ".".join(rel).lower()
        if name in self.exact:
            value = self.exact[name]
        else:
            value = None
            for i in range(1, len(rel)):
                parent = ".".join(rel[i:]).lower()
                if parent in self.wild:
                    value = self.wild[parent]
                    break
        return None if value is None else (*value, name)


def _labels_to_ip(rel: tuple[str, ...]):
    try:
        if len(rel) == 4 and all(x.isdigit() for x in rel):
            return ipaddress.IPv4Address(".".join(reversed(rel)))
        if len(rel) == 32 and all(len(x) == 1 for x in rel):
            nibbles = "".join(reversed(rel))
            return ipaddress.IPv6Address(int(nibbles, 16))
    except ValueError:
        pass
    return None


def _parse_net(text: str):
    """IPv4/IPv6 address, CIDR, a-b range, or rbldnsd short form (10.201)."""
    if "-" in text and "/" not in text:
        lo, hi = text.split("-", 1)
        return list(ipaddress.summarize_address_range(
            ipaddress.ip_address(lo), ipaddress.ip_address(hi)))
    addr, _, plen = text.partition("/")
    if ":" not in addr and addr.count(".") < 3:
        parts = addr.split(".")
        if not plen:
            plen = str(8 * len(parts))
        addr = ".".join(parts + ["0"] * (4 - len(parts)))
    net = ipaddress.ip_network(f"{addr}/{plen}" if plen else addr, strict=False)
    return [net]


def _a_value(text: str, default: str) -> str:
    text = text.strip()
    if not text:
        return default
    if text.isdigit():
        return f"127.0.0.{text}"
    return text


def _split_value(rest: str, default: tuple[str, str | None]) -> tuple[str, str | None]:
    """`:A:TXT`, `:A`, `A:TXT` (entry value) merged over the default."""
    rest = rest.strip()
    if not rest:
        return default
    if rest.startswith(":"):
        rest = rest[1:]
    a, sep, txt = rest.partition(":")
    return _a_value(a, default[0]), (txt if sep else default[1])


def guess_kind(path: str | os.PathLike) -> str:
    """"ip4set" if the first data line is an IP/network, else "dnset"."""
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;$:":
            continue
        try:
            _parse_net(_split_ip_entry(line.lstrip("!").lstrip())[0])
            return "ip4set"
        except ValueError:
            return "dnset"
    return "dnset"


def load_rbldnsd(path: str | os.PathLike, zone_name: str | None = None,
                 kind: str | None = None) -> RbldnsdZone:
    """Parse an rbldnsd ip4set/dnset file; zone name defaults to the file name."""
    path = Path(path)
    kind = kind or guess_kind(path)
    if kind not in ("ip4set", "dnset"):
        raise ValueError(f"unsupported rbldnsd dataset type {kind!r}")
    zone = RbldnsdZone(dns.name.from_text(zone_name or path.name), kind)
    default: tuple[str, str | None] = ("127.0.0.2", None)
    soa_text = ns_text = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        try:
            if line.startswith("$"):
                word, _, arg = line.partition(" ")
                word = word.upper()
                if word == "$TTL":
                    zone.ttl = int(arg.split()[0])
                elif word == "$SOA":
                    soa_text = arg.split()
                elif word == "$NS":
                    ns_text = arg.split()
                continue   # other $ lines ($ORIGIN, $n substitutions) ignored
            if line.startswith(":"):
                default = _split_value(line, default)
                continue
            excluded = line.startswith("!")
            if excluded:
                line = line[1:].lstrip()
            if kind == "ip4set":
                key, rest = _split_ip_entry(line)
                value = None if excluded else _split_value(rest, default)
                for net in _parse_net(key):
                    zone.nets.setdefault(net.prefixlen, {})[net] = value
            else:
                key, _, rest = line.partition(" ")
                if ":" in key:
                    key, _, more = key.partition(":")
                    rest = ":" + more + (" " + rest if rest else "")
                value = None if excluded else _split_value(rest, default)
                key = key.lower().rstrip(".")
                if key.startswith("*."):
                    zone.wild[key[2:]] = value
                elif key.startswith("."):
                    zone.exact[key[1:]] = value
                    zone.wild[key[1:]] = value
                else:
                    zone.exact[key] = value
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    if soa_text:
        ttl, rest = int(soa_text[0]), soa_text[1:]
        names = [n if n.endswith(".") else n + "." for n in rest[:2]]
        nums = [int(x) for x in rest[2:7]]
        if nums and nums[0] == 0:
            nums[0] = int(path.stat().st_mtime)
        zone.soa = dns.rrset.from_text(zone.name, ttl, IN, SOA,
                                       " ".join(names + [str(n) for n in nums]))
    if ns_text:
        ttl = int(ns_text[0])
        zone.ns = dns.rrset.from_text_list(
            zone.name, ttl, IN, NS, [n if n.endswith(".") else n + "." for n in ns_text[1:]])
    return zone


def _split_ip_entry(line: str) -> tuple[str, str]:
    """Split "key value": whitespace, or "1.2.3.4:127.0.0.3:txt" for IPv4."""
    key, _, rest = line.partition(" ")
    if ":" in key and "." in key.split(":", 1)[0] and key.count(":") <= 2 \
            and not re.search(r"[a-fA-F]", key.split(":", 1)[0]):
        key, _, more = key.partition(":")
        rest = ":" + more + (" " + rest if rest else "")
    return key.strip(), rest


def _txt_rdata(text: str) -> dns.rdata.Rdata:
    data = text.encode()
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    return dns.rdata.from_wire(IN, TXT, b"".join(bytes([len(c)]) + c for c in chunks),
                               0, sum(len(c) + 1 for c in chunks))


class DnsServer:
    """UDP+TCP DNS server on 127.0.0.1, running in its own thread.

    ``delay``, ``mode`` (None | "blackhole" | "servfail" | "refused" |
    "truncate") and ``fixed_a`` may be changed at any time from any thread.
    """

    def __init__(
        self,
        zones: Iterable[RbldnsdZone | str | os.PathLike] = (),
        records: Mapping[tuple[str, str], Iterable[str] | str] | None = None,
        authoritative: Iterable[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay: float = 0.0,
        mode: str | None = None,
        fixed_a: str | None = None,
        ttl: int = 60,
    ) -> None:
        self.zones: list[RbldnsdZone] = [
            z if isinstance(z, RbldnsdZone) else load_rbldnsd(z) for z in zones]
        self.ttl = ttl
        self.records: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self._record_names: set[dns.name.Name] = set()
        for (name, rdtype), values in (records or {}).items():
            self.add_record(name, rdtype, values)
        self.authoritative = [dns.name.from_text(a) for a in authoritative]
        self.host = host
        self.port = port
        self.delay = delay
        self.mode = mode
        self.fixed_a = fixed_a
        self.queries = 0
        self.udp_clients: set = set()        # the (address, port) every UDP query came from
        # forge: before each UDP answer, two forged ones that a client must
        # ignore (another query ID; the right ID with another question), both
        # saying "listed"
        self.forge = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._transport = None
        self._tcp = None

    # -- configuration ------------------------------------------------------

    def add_record(self, name: str, rdtype: str, values: Iterable[str] | str) -> None:
        """Add/replace a static RRset (call before start or between queries)."""
        if isinstance(values, str):
            values = [values]
        qname = dns.name.from_text(name)
        rt = dns.rdatatype.from_text(rdtype)
        self.records[(qname, rt)] = dns.rrset.from_text_list(qname, self.ttl, IN, rt, list(values))
        self._record_names.add(qname)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> "DnsServer":
        if self._thread is not None:
            return self
        self._loop, self._thread = start_loop_thread(self._bind, self._unbind, "dnsserver")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._loop is not None
        stop_loop_thread(self._loop, self._thread)
        self._thread = None
        self._loop = None

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(20):   # UDP port may be taken for TCP: retry another
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port))
            port = transport.get_extra_info("sockname")[1]
            try:   # a resolver's buffer (unbound: so-rcvbuf 4m), so bursts of queries are not dropped here
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            except OSError:
                pass
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, port)
            except OSError as e:
                transport.close()
                last = e
                if self.port:
                    raise
                continue
            self._transport, self.port = transport, port
            return
        raise last or OSError("cannot bind")

    async def _unbind(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- protocol -----------------------------------------------------------

    def _count(self) -> None:
        with self._lock:
            self.queries += 1

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()

        async def reply(wire: bytes) -> None:
            response = await self._respond(wire, 65535)
            if response is not None:
                async with lock:
                    writer.write(struct.pack("!H", len(response)) + response)
                    await writer.drain()

        tasks = set()
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                task = asyncio.create_task(reply(await reader.readexactly(size)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    async def _respond(self, wire: bytes, max_size: int | None) -> bytes | None:
        """Answer bytes for query ``wire`` after ``delay``; None = no answer."""
        self._count()
        if self.mode == "blackhole":
            return None
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if self.mode == "blackhole":
            return None
        response = self.answer(query)
        if max_size is None:   # UDP
            max_size = max(512, query.payload) if query.edns >= 0 else 512
            if self.mode == "truncate":
                max_size = 12
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The response message for ``query`` (the server's whole logic)."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if self.mode == "refused" or len(query.question) != 1:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        q = query.question[0]
        qname, rdtype = q.name, q.rdtype
        if self.fixed_a and rdtype == A:
            response.answer.append(dns.rrset.from_text(qname, self.ttl, IN, A, self.fixed_a))
            return response
        if qname in self._record_names:
            for (name, rt), rrset in self.records.items():
                if name == qname and (rt == rdtype or rdtype == ANY):
                    response.answer.append(rrset)
            return response   # NODATA when no type matched
        zone = self._zone_for(qname)
        if zone is None:
            auth = [a for a in self.authoritative if qname.is_subdomain(a)]
            if not auth:
                response.set_rcode(dns.rcode.REFUSED)
                return response
            soa = _synth_soa(max(auth, key=len), self.ttl)
            if qname == max(auth, key=len) and rdtype in (SOA, ANY):
                response.answer.append(soa)
                return response
            if self._has_names_below(qname):
                response.authority.append(soa)   # empty non-terminal: NODATA
                return response
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(soa)
            return response
        soa = zone.soa or _synth_soa(zone.name, zone.ttl)
        if qname == zone.name:
            if rdtype in (SOA, ANY):
                response.answer.append(soa)
            if rdtype in (NS, ANY) and zone.ns is not None:
                response.answer.append(zone.ns)
            if not response.answer:
                response.authority.append(soa)
            return response
        rel = qname.relativize(zone.name).labels
        hit = zone.lookup(tuple(label.decode("ascii", "replace") for label in rel))
        if hit is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(soa)
            return response
        a, txt, subst = hit
        if rdtype in (A, ANY):
            response.answer.append(dns.rrset.from_text(qname, zone.ttl, IN, A, a))
        if rdtype in (TXT, ANY) and txt is not None:
            rrset = dns.rrset.RRset(qname, IN, TXT)
            rrset.add(_txt_rdata(txt.replace("$", subst)), zone.ttl)
            response.answer.append(rrset)
        if not response.answer:
            response.authority.append(soa)
        return response

    def _zone_for(self, qname: dns.name.Name) -> RbldnsdZone | None:
        best = None
        for zone in self.zones:
            if qname.is_subdomain(zone.name) and (best is None or len(zone.name) > len(best.name)):
                best = zone
        return best

    def _has_names_below(self, qname: dns.name.Name) -> bool:
        return any(n.is_subdomain(qname) for n in self._record_names)


def _synth_soa(origin: dns.name.Name, ttl: int) -> dns.rrset.RRset:
    return dns.rrset.from_text(origin, ttl, IN, SOA,
                               f"ns.{origin} hostmaster.{origin} 1 600 300 86400 {ttl}")


class _Udp(asyncio.DatagramProtocol):
    """Each datagram is answered on its own schedule, so delays overlap."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport = None
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.server.udp_clients.add(addr)
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr) -> None:
        wire = await self.server._respond(data, None)
        if wire is not None and self.transport is not None and not self.transport.is_closing():
            if self.server.forge:
                for forged in _forgeries(data):
                    self.transport.sendto(forged, addr)
            self.transport.sendto(wire, addr)


def _forgeries(wire: bytes) -> list[bytes]:
    """Two answers "listed, 127.0.0.2" to the query ``wire`` that are not
    its answer: one with another ID, one with its ID and another question."""
    query = dns.message.from_wire(wire)
    q = query.question[0]
    wrong_id = dns.message.make_response(query)
    wrong_id.id = query.id ^ 0x5A5A
    wrong_id.answer.append(dns.rrset.from_text(q.name, 60, IN, A, "127.0.0.2"))
    other = dns.message.make_query(dns.name.from_text("forged.example"), A)
    other.id = query.id
    wrong_question = dns.message.make_response(other)
    wrong_question.answer.append(dns.rrset.from_text("forged.example.", 60, IN, A, "127.0.0.2"))
    return [wrong_id.to_wire(), wrong_question.to_wire()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve rbldnsd zones (zone name = file name).")
    p.add_argument("files", nargs="*", help="rbldnsd ip4set/dnset files")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5353)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--mode", choices=["blackhole", "servfail", "refused", "truncate"])
    p.add_argument("--fixed-a")
    args = p.parse_args(argv)
    server = DnsServer(args.files, host=args.host, port=args.port, delay=args.delay,
                       mode=args.mode, fixed_a=args.fixed_a)
    server.start()
    zones = ", ".join(f"{z.name}({z.kind})" for z in server.zones) or "no zones"
    print(f"dnsserver listening on {server.host}:{server.port} udp+tcp: {zones}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
