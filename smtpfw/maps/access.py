"""Access maps: Postfix access(5) tables (the text postmap(1) reads, with
the key types a hash and a cidr table take, mixed in one file) and qpsmtpd
list files whose lines are ``entry [reason...]`` (badmailfrom, relayclients).

A line is ``key whitespace value``; the value runs to the end of the
logical line (continuation lines and comments as in ``smtpfw.maps.base``;
a ``#`` after the key is part of the value, as in Postfix).  A key without
a value has the value "" (qpsmtpd's relayclients, badmailfrom without a
reason): what an empty value means is the rule language's business.  Keys
are compared in lower case; a domain's trailing dot is dropped.

Keys (access(5) "EMAIL ADDRESS PATTERNS IN INDEXED TABLES", "EMAIL ADDRESS
EXTENSION", "HOST NAME/ADDRESS PATTERNS IN INDEXED TABLES") and which
lookups they take part in, by the type of the field looked up:

``address`` (``sender``, ``rcpt``), in this order; the first key found wins:
    1. ``user@domain`` (the whole address);
    2. with a recipient delimiter (``recipient_delimiter="+"``, off by
       default as in Postfix), ``user@domain`` for ``user+ext@domain``
       ("EMAIL ADDRESS EXTENSION");
    3. ``@domain``: anyone at exactly that domain (qpsmtpd badmailfrom;
       ``*@domain`` is the same);
    4. the domain and its parent domains, nearest first, as for ``domain``
       below (Postfix's parent_domain_matches_subdomains default for
       smtpd_access_maps);
    5. ``user@`` (that local part at any domain), then ``user@`` for the
       local part without its extension;
    the null sender (the value "" or "<>") is looked up as the key ``<>``
    only (Postfix smtpd_null_access_lookup_key).
``domain`` (``helo``, ``client.rdns``, ``sender.domain``, ...):
    ``domain`` itself, then for each parent domain, nearest first,
    ``.parent`` (subdomains only; also written ``*.parent``) and then
    ``parent`` (itself and every subdomain).  So ``example.com`` matches
    ``example.com`` and ``mx.example.com``, ``.example.com`` only
    ``mx.example.com``; with both, ``example.com REJECT`` and
    ``.example.com OK`` give the domain and its subdomains different
    answers.  (smtpfw *lists* differ: there ``example.com`` is that
    domain only; a map follows Postfix.)
``ip`` (``client.ip``):
    the most specific network that contains the address wins, one probe per
    distinct prefix length, longest first.  Networks are written as
    - an address, ``192.0.2.1``, ``2001:db8::1`` (/32, /128);
    - Postfix's truncated forms ``192.0.2``, ``192.0``, ``192`` (/24, /16,
      /8) and ``2001:db8:0:1``, ``2001:db8`` (/16 per group); Postfix tries
      exactly these, in this order, after the address;
    - qpsmtpd relayclients prefixes ending in a dot or a colon: ``192.0.``
      (/16), ``2001:0DB8:`` (/32): qpsmtpd compares the text of the address
      with the text of the prefix, so an IPv6 prefix must be written in the
      expanded form there; here each group is a number, so ``2001:db8:``
      and ``2001:0DB8:`` are both 2001:db8::/32 and match compressed and
      expanded addresses alike (a prefix is a whole number of groups);
    - CIDR networks ``10.0.0.0/8``, ``2001:db8::/32`` (host bits must be
      zero, as in Postfix's cidr_table: ``10.1.2.3/8`` is E304).
    Postfix truncates the *text* of the address, so for it ``2001:db8:0:0``
    never matches ``2001:db8::5`` (whose text has no ``:0:0``); here it
    does.  Postfix looks CIDR networks up in another table, after its
    truncated forms; in one file, smtpfw ranks all by specificity, so a
    ``192.0.2.0/25`` key beats ``192.0.2``.  An IPv4-mapped IPv6 address
    (``::ffff:192.0.2.1``) is looked up as its IPv4 address.
``string``, ``int`` and every other type:
    the exact key, case-insensitive.

A key cannot be a pattern: ``*`` or ``?`` in it (other than the ``*.``
and ``*@`` prefixes) is E304 with the rewrite.  A key that is not a valid
address, domain, network or prefix where its form says it should be
(``10.0.0.0/33``, ``1.2.3.256``, ``joe@bad..domain``) is E304 and skipped;
the same key twice is W303, and the first one counts.

Lookup cost does not depend on the number of keys: dictionaries, and a
dictionary per prefix length; an answer is made once per key and reused.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from array import array
from collections.abc import Iterator, Sequence

from smtpfw.checks.lists import Entry, _invisible_note, valid_domain
from smtpfw.diagnostics import Code, Diagnostic, Span
from smtpfw.maps.base import LogicalLine, MapHit

_IPV4_LIKE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,3}\.?")
_IPV6_PREFIX = re.compile(r"[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,7}:?")
_IPV6_CHARS = frozenset("0123456789abcdef:.")
_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


class AccessMap:
    """An access(5)-style map: see the module docstring."""

    __slots__ = ("file", "recipient_delimiter", "_keys", "_sub", "_at", "_user", "_v4", "_v6",
                 "_written", "_values", "_lines", "_vlines", "_vcols", "_spans", "_hits")

    def __init__(self, file: str, recipient_delimiter: str = "") -> None:
        self.file = file
        self.recipient_delimiter = recipient_delimiter
        self._keys: dict[str, int] = {}      # exact keys: domains, addresses, IPs as text, <>, other text
        self._sub: dict[str, int] = {}       # .domain -> domain
        self._at: dict[str, int] = {}        # @domain -> domain
        self._user: dict[str, int] = {}      # user@ -> user
        self._v4: list[tuple[int, dict[int, int]]] = []     # (prefix length, network >> host bits -> entry)
        self._v6: list[tuple[int, dict[int, int]]] = []
        self._written: list[str] = []        # per entry: the key as written
        self._values: list[str] = []
        self._lines = array("i")             # per entry: its line (index + 1 inline)
        self._vlines = array("i")            # per entry: line and column of its value
        self._vcols = array("i")
        self._spans: list[Span] | None = None    # inline maps: each entry's span
        self._hits: dict[int, MapHit] = {}

    def __len__(self) -> int:
        return len(self._written)

    def __repr__(self) -> str:
        return f"AccessMap({self.file!r}, {len(self)} keys)"

    def entries(self) -> Iterator[tuple[str, str, Span]]:
        for i, key in enumerate(self._written):
            value = self._values[i]
            if self._spans is not None:
                span = self._spans[i]
            else:
                span = Span.point(self.file, self._vlines[i], self._vcols[i], len(value))
            yield key, value, span

    # -- lookups --------------------------------------------------------

    def lookup(self, value: str, ftype: str) -> MapHit | None:
        if ftype == "ip":
            i = self._ip(value)
        elif ftype == "domain":
            i = self._domain(value)
        elif ftype == "address":
            i = self._address(value)
        else:
            i = self._string(value)
        if i is None:
            return None
        hit = self._hits.get(i)
        if hit is None:
            hit = self._hits[i] = MapHit(self._values[i], self._written[i], self._lines[i])
        return hit

    def _string(self, value: str) -> int | None:
        i = self._keys.get(value)
        if i is None and value:
            if value[0] == ".":
                return self._sub.get(value[1:])
            if value[0] == "@":
                return self._at.get(value[1:])
            if value[-1] == "@":
                return self._user.get(value[:-1])
        return i

    def _domain(self, domain: str) -> int | None:
        keys = self._keys
        i = keys.get(domain)
        if i is not None or domain[:1] == "[":
            return i
        sub = self._sub
        pos = domain.find(".")
        while pos >= 0:
            parent = domain[pos + 1:]
            i = sub.get(parent)
            if i is not None:
                return i
            i = keys.get(parent)
            if i is not None:
                return i
            pos = domain.find(".", pos + 1)
        return None

    def _address(self, address: str) -> int | None:
        if not address or address == "<>":
            return self._keys.get("<>")
        i = self._keys.get(address)
        if i is not None:
            return i
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        base = ""
        delimiter = self.recipient_delimiter
        if delimiter and local:
            cut = min((p for p in (local.find(d) for d in delimiter) if p > 0), default=-1)
            if cut > 0:
                base = local[:cut]
                i = self._keys.get(f"{base}@{domain}") if domain else self._keys.get(base)
                if i is not None:
                    return i
        if domain:
            i = self._at.get(domain)
            if i is not None:
                return i
            i = self._domain(domain)
            if i is not None:
                return i
        i = self._user.get(local)
        if i is None and base:
            i = self._user.get(base)
        return i

    def _ip(self, text: str) -> int | None:
        try:
            n = int.from_bytes(_pton(_AF_INET, text), "big")
            tables, bits = self._v4, 32
        except OSError:
            try:
                n = int.from_bytes(_pton(_AF_INET6, text.split("%", 1)[0]), "big")
            except OSError:
                return self._keys.get(text)
            if n >> 32 == 0xFFFF:
                n &= 0xFFFFFFFF
                tables, bits = self._v4, 32
            else:
                tables, bits = self._v6, 128
        for plen, table in tables:
            i = table.get(n >> (bits - plen))
            if i is not None:
                return i
        return None


class _Builder:
    """Adds keys to an AccessMap, with diagnostics."""

    def __init__(self, amap: AccessMap) -> None:
        self.map = amap
        self.diags: list[Diagnostic] = []
        self.v4: dict[int, dict[int, int]] = {}
        self.v6: dict[int, dict[int, int]] = {}
        self.values: dict[str, str] = {}

    def finish(self) -> AccessMap:
        self.map._v4 = sorted(self.v4.items(), reverse=True)
        self.map._v6 = sorted(self.v6.items(), reverse=True)
        return self.map

    def add(self, key: str, value: str, line: int, vline: int, vcol: int, span: Span | None = None) -> None:
        """One entry; ``span`` is given for inline entries (else the key is at
        column 1 of ``line``)."""
        m = self.map
        index = len(m._written)
        k = key.lower()
        if k == key:
            k = key                         # one string for the key as written and as looked up
        if k.startswith("<") and k.endswith(">") and len(k) > 2:
            k = k[1:-1]                               # <user@domain> as written in an envelope
        target, name, problem = self.classify(k, key, line, span)
        if problem is not None:
            message, hint = problem
            where = span or Span.point(m.file, line, 1, len(key))
            note = _invisible_note(Entry(key, where))
            self.diags.append(Diagnostic(Code.E304_MAP_ENTRY_MALFORMED, message, where, help=note or hint))
            return
        if target is None:
            return                      # a network already in the map (reported)
        first = target.get(name)
        if first is not None:
            self.duplicate(key, first, line, span)
            return
        target[name] = index
        m._written.append(key)
        m._values.append(self.values.setdefault(value, value))     # "REJECT" once, not per key
        m._lines.append(line)
        m._vlines.append(vline)
        m._vcols.append(vcol)
        if span is not None:
            if m._spans is None:
                m._spans = []
            m._spans.append(span)

    def duplicate(self, key: str, first: int, line: int, span: Span | None) -> None:
        m = self.map
        where = span or Span.point(m.file, line, 1, len(key))
        self.diags.append(Diagnostic(
            Code.W303_LIST_ENTRY_DUPLICATE,
            f"duplicate key `{key}` (first on line {m._lines[first]}"
            + (f" as `{m._written[first]}`" if m._written[first] != key else "") + "): the first one counts",
            where, help="remove one of them"))

    def network(self, version: int, value: int, plen: int, key: str, line: int, span: Span | None) -> bool:
        """Put a network in its table; False when it is already there (reported)."""
        table = (self.v4 if version == 4 else self.v6).setdefault(plen, {})
        bits = 32 if version == 4 else 128
        slot = value >> (bits - plen)
        first = table.get(slot)
        if first is not None:
            self.duplicate(key, first, line, span)
            return False
        table[slot] = len(self.map._written)
        return True

    def classify(self, k: str, key: str, line: int,
                 span: Span | None) -> tuple[dict[str, int] | None, str, tuple[str, str | None] | None]:
        """(table, name in it, None) for a good key, or (None, "", (message,
        help)); a key that is (also) a network is put in its IP table here."""
        m = self.map
        if k == "<>":
            return m._keys, k, None
        if "@" in k:
            return self.address_key(k)
        if "/" in k:
            return self.cidr_key(k, key, line, span)
        if k[0].isdigit() and _IPV4_LIKE.fullmatch(k):
            return self.ipv4_key(k, key, line, span)
        if ":" in k and _IPV6_CHARS.issuperset(k):
            return self.ipv6_key(k, key, line, span)
        if "*" in k or "?" in k:
            rest = k[2:] if k.startswith("*.") else None
            if rest is not None and "*" not in rest and "?" not in rest:
                k = "." + rest
            else:
                return None, "", (f"`{key}` is a pattern, but map keys are matched exactly", _glob_hint(k))
        if k.startswith("."):
            domain = k[1:].rstrip(".")
            if not _is_domain(domain):
                return None, "", (f"`{key}` is not `.` and a domain (the subdomains of that domain)", None)
            return m._sub, domain, None
        if k.endswith(".") and _is_domain(k.rstrip(".")):
            k = k.rstrip(".")
        return m._keys, k, None

    def address_key(self, k: str):
        m = self.map
        if any(c in k for c in "*?"):
            if k.startswith("*@") and not any(c in k[2:] for c in "*?"):
                k = k[1:]
            else:
                return None, "", (f"`{k}` is a pattern, but map keys are matched exactly", _glob_hint(k))
        local, _, domain = k.rpartition("@")
        if not domain:
            if not local:
                return None, "", ("`@` alone is not a key", "write `user@`, `@domain` or `user@domain`")
            return m._user, local, None                       # user@
        domain = domain.rstrip(".")
        if not (_is_domain(domain) or (domain.startswith("[") and domain.endswith("]"))):
            return None, "", (f"`{domain}` in `{k}` is not a domain",
                              "write `user@domain`, `@domain` (anyone at it) or `user@` (that user anywhere)")
        if not local:
            return m._at, domain, None                        # @domain
        return m._keys, k if not k.endswith(".") else f"{local}@{domain}", None

    def cidr_key(self, k: str, key: str, line: int, span: Span | None):
        m = self.map
        addr, _, length = k.partition("/")
        if k in m._keys:
            return m._keys, k, None                           # a duplicate: add() says so
        if length.isascii() and length.isdigit() and int(length) <= 32 and "." in addr:
            try:            # the everyday a.b.c.d/n without an ipaddress object
                value, plen = int.from_bytes(_pton(_AF_INET, addr), "big"), int(length)
            except OSError:
                pass
            else:
                if value & ((1 << (32 - plen)) - 1) == 0:
                    if not self.network(4, value, plen, key, line, span):
                        return None, "", None
                    return m._keys, k, None
        try:
            net = ipaddress.ip_network(k, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(k, strict=False)
            except ValueError:
                if _IPV4_LIKE.fullmatch(addr) or (":" in addr and _IPV6_CHARS.issuperset(addr)):
                    return None, "", (f"`{key}` is not a network",
                                      "write an address and a prefix length: 10.0.0.0/8 or 2001:db8::/32")
                return m._keys, k, None                       # text with a slash, e.g. a MIME type
            return None, "", (f"`{key}` has host bits set: it is not the start of a network",
                              f"write `{loose}` (Postfix's cidr tables refuse it too)")
        version, value, plen = net.version, int(net.network_address), net.prefixlen
        if isinstance(net, ipaddress.IPv6Network) and plen >= 96 and net.network_address.ipv4_mapped is not None:
            version, value, plen = 4, value & 0xFFFFFFFF, plen - 96
        if not self.network(version, value, plen, key, line, span):
            return None, "", None
        return m._keys, k, None

    def ipv4_key(self, k: str, key: str, line: int, span: Span | None):
        m = self.map
        trailing = k.endswith(".")
        parts = k.rstrip(".").split(".")
        if any(int(p) > 255 or (len(p) > 1 and p[0] == "0") for p in parts):
            return None, "", (f"`{key}` is not an IPv4 address or prefix: each part is 0 to 255, "
                              "without leading zeros", None)
        if trailing and len(parts) == 4:
            return None, "", (f"`{key}` is not an IPv4 address or prefix",
                              f"write `{k[:-1]}` for the address, or fewer parts for a network (`192.0.2.`)")
        if k in m._keys:
            return m._keys, k, None
        value = 0
        for p in parts:
            value = value << 8 | int(p)
        plen = 8 * len(parts)
        if not self.network(4, value << (32 - plen), plen, key, line, span):
            return None, "", None
        return m._keys, k, None

    def ipv6_key(self, k: str, key: str, line: int, span: Span | None):
        m = self.map
        if k in m._keys:
            return m._keys, k, None
        try:
            address = ipaddress.IPv6Address(k)
        except ValueError:
            address = None
        if address is not None:
            mapped = address.ipv4_mapped
            if mapped is not None:
                ok = self.network(4, int(mapped), 32, key, line, span)
            else:
                ok = self.network(6, int(address), 128, key, line, span)
        elif _IPV6_PREFIX.fullmatch(k) and "::" not in k:
            groups = k.rstrip(":").split(":")
            value = 0
            for g in groups:
                value = value << 16 | int(g, 16)
            plen = 16 * len(groups)
            ok = self.network(6, value << (128 - plen), plen, key, line, span)
        else:
            return None, "", (f"`{key}` is not an IPv6 address or prefix",
                              "write an address (2001:db8::1), whole groups (2001:db8 or 2001:0db8:) "
                              "or a network (2001:db8::/32)")
        if not ok:
            return None, "", None
        return m._keys, k, None


def _is_domain(text: str) -> bool:
    return valid_domain(text)


def _glob_hint(k: str) -> str:
    if "@" in k:
        domain = k.rpartition("@")[2].lstrip("*?.")
        return (f"write `@{domain}` for anyone at {domain}, `.{domain}` for its subdomains; "
                "for a real pattern use a regexp: or pcre: map")
    rest = k.lstrip("*?.")
    if k.startswith("*") and rest and not any(c in rest for c in "*?"):
        return f"write `{rest}` (itself and its subdomains) or `.{rest}` (its subdomains only)"
    if k[:1].isdigit():
        return "write a network: 10.0.0.0/8, or Postfix's truncated form `10`"
    return "list each key, or use a regexp: or pcre: map for a pattern"


def parse_access_lines(lines: list[LogicalLine], file: str, *,
                       recipient_delimiter: str = "") -> tuple[AccessMap, list[Diagnostic]]:
    builder = _Builder(AccessMap(file, recipient_delimiter))
    add = builder.add
    for ll in lines:
        text = ll.text
        parts = text.split(None, 1)
        key = parts[0]
        if len(parts) == 1:
            add(key, "", ll.line, ll.line, len(text) + 1)
            continue
        value = parts[1]
        offset = len(text) - len(value)
        if ll.pieces:
            vline, vcol = ll.position(offset)
        else:
            vline, vcol = ll.line, offset + 1
        add(key, value, ll.line, vline, vcol)
    return builder.finish(), builder.diags


def access_map_from_pairs(pairs: Sequence[tuple[str, str, Span]], *,
                          recipient_delimiter: str = "") -> tuple[AccessMap, list[Diagnostic]]:
    file = pairs[0][2].file if pairs else "<inline>"
    builder = _Builder(AccessMap(file, recipient_delimiter))
    for number, (key, value, span) in enumerate(pairs, 1):
        key = key.strip()
        if not key:
            builder.diags.append(Diagnostic(Code.E304_MAP_ENTRY_MALFORMED, "an empty key", span,
                                            help="write a domain, an address, an IP address or a network"))
            continue
        builder.add(key, value, number, span.line, span.column, span)
    return builder.finish(), builder.diags
