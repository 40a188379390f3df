"""Lists: entries read from files (qpsmtpd style) or written inline, turned
into tables whose lookup cost does not depend on the list's size.

- ip fields:      ``192.0.2.1``, ``10.0.0.0/8``, ``2001:db8::/32`` -> a CIDR table
                  (one hash set per prefix length: at most 33/129 probes)
- domain fields:  ``example.net`` (that domain), ``.example.net`` or
                  ``*.example.net`` (its subdomains) -> a hash set + a suffix
                  set walked label by label
- address fields: ``user@example.net`` (that address), ``@example.net``
                  (any address at that domain, not subdomains)
- other fields:   exact text, case-insensitive

Every malformed or duplicate entry is reported with the list file's own line
number.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable

from smtpfw.diagnostics import Diagnostic, Span
from smtpfw.lang.fields import ADDRESS, BOOL, DOMAIN, INT, IP, LIST, STRING

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def valid_domain(text: str) -> bool:
    if not text or len(text) > 253:
        return False
    try:
        ascii_text = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        return False
    return bool(_DOMAIN_RE.match(ascii_text))


@dataclass(frozen=True, slots=True)
class Entry:
    text: str
    span: Span


def read_list_file(path: str, shown_name: str) -> tuple[list[Entry] | None, list[Diagnostic]]:
    """Entries of a list file: one a line, `#` comments, blank lines ignored."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        return None, [Diagnostic("E301", f"cannot read list file {shown_name}: {err.strerror or err}")]
    text = raw.decode("utf-8", errors="replace")
    entries: list[Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if content:
            col = line.index(content[0]) + 1
            entries.append(Entry(content, Span(shown_name, number, col, number, col + len(content))))
    return entries, []


class CidrTable:
    """IP membership in O(number of distinct prefix lengths)."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks):
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for net in networks:
            table, bits = (v4, 32) if net.version == 4 else (v6, 128)
            table.setdefault(net.prefixlen, set()).add(int(net.network_address) >> (bits - net.prefixlen))
        self._v4 = sorted(v4.items(), key=lambda kv: -len(kv[1]))
        self._v6 = sorted(v6.items(), key=lambda kv: -len(kv[1]))

    def __contains__(self, ip) -> bool:
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value = int(ip)
        if ip.version == 4:
            return any((value >> (32 - plen)) in nets for plen, nets in self._v4)
        return any((value >> (128 - plen)) in nets for plen, nets in self._v6)


def _suffixes(domain: str):
    """example.mail.net -> mail.net, net (proper suffixes, nearest first)."""
    pos = domain.find(".")
    while pos != -1:
        yield domain[pos + 1:]
        pos = domain.find(".", pos + 1)


def build_matcher(entries: list[Entry], ftype: str, within: bool) -> tuple[Callable[[object], bool] | None, list[Diagnostic]]:
    """A membership test for values of ``ftype``, and what is wrong with the entries."""
    diags: list[Diagnostic] = []
    seen: dict[str, Entry] = {}

    def dup(key: str, e: Entry) -> bool:
        if key in seen:
            diags.append(Diagnostic("W303", f"duplicate entry `{e.text}` (first on line {seen[key].span.line})",
                                    e.span, help="remove one of them"))
            return True
        seen[key] = e
        return False

    def bad(e: Entry, what: str, hint: str | None = None) -> None:
        diags.append(Diagnostic("E302", f"`{e.text}` is not {what}", e.span, help=hint))

    if ftype == IP:
        nets = []
        for e in entries:
            try:
                net = ipaddress.ip_network(e.text, strict=False)
            except ValueError:
                bad(e, "an IP address or network", "write 192.0.2.1, 10.0.0.0/8 or 2001:db8::/32")
                continue
            if not dup(str(net), e):
                nets.append(net)
        table = CidrTable(nets)
        return table.__contains__, diags

    if ftype == DOMAIN:
        exact: set[str] = set()
        below: set[str] = set()     # subdomains of these
        for e in entries:
            text = e.text.lower().rstrip(".")
            sub = text.startswith(".") or text.startswith("*.")
            name = text.lstrip("*").lstrip(".")
            if not valid_domain(name):
                hint = "an address list entry goes with sender or rcpt, not a domain field" if "@" in name else None
                bad(e, "a domain", hint)
                continue
            if dup(text, e):
                continue
            if within:
                exact.add(name)
                below.add(name)
            elif sub:
                below.add(name)
            else:
                exact.add(name)
        if not below:
            return exact.__contains__, diags

        def domain_match(value, exact=exact, below=below) -> bool:
            if value in exact:
                return True
            return any(s in below for s in _suffixes(value))
        return domain_match, diags

    if ftype == ADDRESS:
        addresses: set[str] = set()
        domains: set[str] = set()
        for e in entries:
            text = e.text.lower()
            if text.startswith("<") and text.endswith(">"):
                text = text[1:-1]
            local, at, domain = text.rpartition("@")
            if text == "":
                bad(e, "an address")
                continue
            if not at or not valid_domain(domain.rstrip(".")):
                bad(e, "an address (user@domain) or a whole domain (@domain)",
                    f"did you mean `@{text}`?" if valid_domain(text) else None)
                continue
            if dup(text, e):
                continue
            (domains if not local else addresses).add(domain.rstrip(".") if not local else text)

        def address_match(value, addresses=addresses, domains=domains) -> bool:
            if value in addresses:
                return True
            return bool(domains) and value.rpartition("@")[2] in domains
        return address_match, diags

    if ftype == INT:
        numbers: set[int] = set()
        for e in entries:
            try:
                n = int(e.text)
            except ValueError:
                bad(e, "a whole number")
                continue
            if not dup(str(n), e):
                numbers.add(n)
        return numbers.__contains__, diags

    if ftype in (STRING, BOOL, LIST):
        texts: set[str] = set()
        for e in entries:
            if not dup(e.text.lower(), e):
                texts.add(e.text.lower())
        return (lambda v, texts=texts: str(v).lower() in texts), diags

    return None, diags
