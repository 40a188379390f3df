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

import gc
import ipaddress
import json
import operator
import os
import re
import signal
import socket
import stat
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Callable

from smtpfw.checks import packed
from smtpfw.checks.packed import membership, pack_ints, pack_strings
from smtpfw.diagnostics import Diagnostic, Span, nearest_file
from smtpfw.lang.fields import ADDRESS, BOOL, DOMAIN, INT, IP, LIST, STRING
from smtpfw.lang.invisible import describe, is_invisible

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# Lines of a "\n"-joined block that are not ASCII domains of at most 253
# characters: one regex pass instead of one match per entry.
# (Patterns start with a literal so that re jumps from line to line.)
_VALID_TO_EOL = rf"(?=[^\n]{{1,253}}(?:\n|\Z)){_LABEL}(?:\.{_LABEL})*(?:\n|\Z)"
_NOT_DOMAIN_LINE = re.compile(rf"\n(?!{_VALID_TO_EOL})([^\n]*)")


def _all_domains(joined: str) -> bool:
    """Every line of ``joined`` is a valid domain (valid_domain, per line)."""
    return all(valid_domain(line) for line in _NOT_DOMAIN_LINE.findall("\n" + joined))


def _lowered(texts: list[str], strip_dots: bool) -> tuple[list[str], str | None]:
    """([t.lower() (.rstrip(".") if strip_dots) for t in texts], those joined
    by "\n" or None if an entry has a line break), reusing the entries
    themselves when they are already that (the usual case: no copy of a
    million strings)."""
    joined = "\n".join(texts)
    if joined.count("\n") != len(texts) - 1:
        return [t.lower().rstrip(".") if strip_dots else t.lower() for t in texts], None
    if joined.isascii():            # ASCII: lower() of each line = lower() of them all
        low = joined.lower()
        lowered = texts if low == joined else low.split("\n")
    else:
        lowered = [t.lower() for t in texts]
        low = "\n".join(lowered)
    if strip_dots and (low.endswith(".") or ".\n" in low):
        lowered = [t.rstrip(".") for t in lowered]
        low = "\n".join(lowered)
    return lowered, low


def _plain(joined: str, marks: str) -> bool:
    """No line of ``joined`` is empty or starts with one of ``marks``."""
    if not joined or joined[0] in marks or joined[-1] == "\n" or "\n\n" in joined:
        return False
    # (a mark that is nowhere is found at one byte's cost: no two-character search)
    return not any(m in joined and "\n" + m in joined for m in marks)


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


class FileEntries(Sequence):
    """A list file's entries.  Only the texts are kept per entry; an ``Entry``
    with its ``Span`` is made when asked for (a diagnostic), so a
    million-line list does not cost a million Entry and Span objects.  A
    list another process has already built (``prefetch``) keeps its bytes
    and is split into texts only if they are asked for."""

    __slots__ = ("_texts", "_numbers", "_lines", "_file", "_raw", "_count", "built")

    @property
    def file(self) -> str:
        return self._file

    def __init__(self, file: str, lines: list[str], numbers, texts: list[str]):
        self._texts: list[str] | None = texts       # stripped, comment-free, non-empty
        self._numbers = numbers     # 1-based line number of each text
        self._lines = lines
        self._file = file
        self._raw: bytes | None = None
        self._count = len(texts)
        self.built: dict | None = None              # what another process built of it (``prefetch``)

    @classmethod
    def unsplit(cls, file: str, raw: bytes, count: int, built: dict) -> FileEntries:
        """The entries of a clean file (one a line, nothing to strip: ``_clean``), not split yet."""
        entries = cls(file, [], range(0), [])
        entries._texts, entries._raw, entries._count, entries.built = None, raw, count, built
        return entries

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            assert self._raw is not None
            text = self._raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
            lines = (text[:-1] if text.endswith("\n") else text).split("\n")
            self._texts, self._lines, self._numbers, self._raw = lines, lines, range(1, len(lines) + 1), None
        return self._texts

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        texts = self.texts
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(texts)))]
        content = texts[index]
        number = self._numbers[index]
        col = self._lines[number - 1].index(content[0]) + 1
        return Entry(content, Span(self._file, number, col, number, col + len(content)))

    def __iter__(self):
        return (self[i] for i in range(self._count))


MAX_LIST_BYTES = 64 * 1024 * 1024   # ~2.5 million entries; bigger lists belong in a DNS zone


def _clean(body: str) -> bool:
    """``body`` (a file without its last line break) has one entry a line
    and nothing to strip: no comment, no blank line or edge white space, no
    line break but "\\n" (so ``split`` splits as ``splitlines``)."""
    return (body.isascii() and bool(body) and "#" not in body and "\n\n" not in body
            and body[0] not in " \t\n" and body[-1] not in " \t\n"
            and (" " not in body or (" \n" not in body and "\n " not in body))     # one-byte searches first
            and ("\t" not in body or ("\t\n" not in body and "\n\t" not in body))
            and not any(ch in body for ch in "\r\v\f\x1c\x1d\x1e\x1f"))


def read_list_file(path: str, shown_name: str) -> tuple[FileEntries | None, list[Diagnostic]]:
    """Entries of a list file: one a line, `#` comments, blank lines ignored.
    A byte-order mark (Notepad writes one) is not part of the first entry."""
    seen: list = []
    raw, problem = _read_capped(path, shown_name, seen)
    if raw is None:
        return None, [Diagnostic("E301", problem)]
    built = _prefetched(path)
    if built is not None and built.get("clean") and built.get("identity") == seen[0]:
        return FileEntries.unsplit(shown_name, raw, built["count"], built), []     # the same bytes, read and checked
    text = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
    body = text[:-1] if text.endswith("\n") else text
    if _clean(body):            # the usual big list: one entry a line and nothing else
        lines = body.split("\n")
        return FileEntries(shown_name, lines, range(1, len(lines) + 1), lines), []
    lines = text.splitlines()
    contents = [line.strip() if "#" not in line else line.split("#", 1)[0].strip() for line in lines]
    texts = list(filter(None, contents))
    if len(texts) == len(contents):
        numbers = range(1, len(lines) + 1)
    else:
        numbers = array("l", compress(range(1, len(lines) + 1), contents))
    return FileEntries(shown_name, lines, numbers, texts), []


def read_list_text(path: str) -> str | None:
    """A list file's text as ``read_list_file`` sees it (lint scans it), or None."""
    raw, _ = _read_capped(path, path)
    return None if raw is None else raw.decode("utf-8", errors="replace").removeprefix("\ufeff")


def _read_capped(path: str, shown_name: str, seen: list | None = None) -> tuple[bytes | None, str]:
    """The bytes of a regular file of at most MAX_LIST_BYTES, or None and why
    not: /dev/zero, a FIFO or a stray log must not hang or exhaust memory.
    ``seen`` gets the file's identity (device, inode, size, times)."""
    try:
        with open(path, "rb", opener=_open_nonblocking) as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None, f"list file {shown_name} is not a regular file"
            raw = fh.read(MAX_LIST_BYTES + 1)
            if seen is not None:
                seen.append([st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    except OSError as err:
        return None, f"cannot read list file {shown_name}: {err.strerror or err}{_nearest_note(path, shown_name)}"
    if len(raw) > MAX_LIST_BYTES:
        return None, (f"list file {shown_name} is larger than {MAX_LIST_BYTES // 2**20} MiB: "
                      "split it, or serve a list that big as a DNS zone (rbldnsd)")
    return raw, ""


def _open_nonblocking(path: str, flags: int) -> int:
    """open(2) that does not wait for a writer when the path is a FIFO."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _nearest_note(path: str, shown_name: str) -> str:
    """A did-you-mean in the message (the compiler puts its own help on E301)."""
    guess = nearest_file(path)
    return f"; did you mean {os.path.join(os.path.dirname(shown_name), guess)}?" if guess else ""


class CidrTable:
    """IP membership in O(number of distinct prefix lengths)."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks=(), *, keys: tuple[dict, dict] | None = None, addresses=None):
        v4: dict[int, set[int]]
        v6: dict[int, set[int]]
        v4, v6 = keys if keys is not None else ({}, {})
        for net in networks:
            table, bits = (v4, 32) if net.version == 4 else (v6, 128)
            table.setdefault(net.prefixlen, set()).add(int(net.network_address) >> (bits - net.prefixlen))
        # (prefix length, membership test of its network numbers), the biggest first
        self._v4 = [(plen, membership(pack_ints(keys))) for plen, keys in sorted(v4.items(), key=lambda kv: -len(kv[1]))]
        self._v6 = [(plen, membership(pack_ints(keys))) for plen, keys in sorted(v6.items(), key=lambda kv: -len(kv[1]))]
        if addresses is not None:           # IPv4 addresses (/32s), packed already
            self._v4 = [(32, membership(addresses))]

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
            return any(has(value >> (32 - plen)) for plen, has in self._v4)
        return any(has(value >> (128 - plen)) for plen, has in self._v6)


def _suffixes(domain: str):
    """example.mail.net -> mail.net, net (proper suffixes, nearest first)."""
    pos = domain.find(".")
    while pos != -1:
        yield domain[pos + 1:]
        pos = domain.find(".", pos + 1)


def _plain_ipv4_table(texts: list[str]) -> CidrTable | None:
    """The table for distinct ``a.b.c.d`` and ``a.b.c.d/n`` entries, or None
    when there is anything else (the general loop then decides, with
    diagnostics)."""
    pton, af_inet, from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes
    plain = [t for t in texts if "/" not in t]
    try:
        values = {from_bytes(pton(af_inet, t), "big") for t in plain}
    except (OSError, ValueError):
        return None
    if len(values) != len(plain):
        return None
    v4 = {32: values} if values else {}
    for text in (t for t in texts if "/" in t) if len(plain) != len(texts) else ():
        addr, _, plen = text.partition("/")
        if not (plen.isascii() and plen.isdigit() and int(plen) <= 32):
            return None
        try:
            value = from_bytes(pton(af_inet, addr), "big")
        except (OSError, ValueError):
            return None
        prefix = int(plen)
        bucket = v4.setdefault(prefix, set())
        key = value >> (32 - prefix)
        if key in bucket:
            return None
        bucket.add(key)
    return CidrTable(keys=(v4, {}))


_BAD_ADDRESS_DOMAIN = re.compile(rf"@(?!{_VALID_TO_EOL})([^\n]*)")     # with one "@" a line


def _any_blank(joined: str) -> bool:
    return " " in joined or "\t" in joined


def _plain_address_sets(lowered: list[str], joined: str | None) -> tuple[set[str], set[str]] | None:
    """(addresses, domains) for distinct valid ``user@domain`` / ``@domain``
    entries without <> or trailing dots, or None when there is anything else."""
    if (joined is None or not _plain(joined, "<") or joined.endswith(".") or ".\n" in joined
            or "*" in joined or "?" in joined
            or joined.count("@") != len(lowered) or not all(map(operator.contains, lowered, repeat("@")))):
        return None             # (so each entry has exactly one "@")
    if not all(valid_domain(d) for d in _BAD_ADDRESS_DOMAIN.findall(joined)):
        return None
    everything = set(lowered)
    if len(everything) != len(lowered):
        return None
    if not joined.startswith("@") and "\n@" not in joined:
        return everything, set()
    return {t for t in everything if t[0] != "@"}, {t[1:] for t in everything if t[0] == "@"}


def _has_glob(text: str) -> bool:
    return "*" in text or "?" in text


def _address_entries(lowered, addresses, domains, seen, bad, dup, pattern) -> None:
    match = _DOMAIN_RE.match
    for i, text in enumerate(lowered):
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        if _has_glob(text):
            if not (text.startswith("*@") and not _has_glob(text[2:])):
                pattern(i, _address_glob_hint(text))
                continue
            text = text[1:]             # *@domain: anyone at domain, as @domain
        local, at, domain = text.rpartition("@")
        if text == "":
            bad(i, "an address")
            continue
        domain = domain.rstrip(".")
        if not at or not ((domain and len(domain) <= 253 and domain.isascii() and match(domain))
                          or valid_domain(domain)):
            bad(i, "an address (user@domain) or a whole domain (@domain)",
                f"did you mean `@{text}`?" if valid_domain(text) else None)
            continue
        first = seen.setdefault(text, i)
        if first != i:
            dup(i, first)
            continue
        if local:
            addresses.add(text)
        else:
            domains.add(domain)


def _invisible_note(e: Entry) -> str | None:
    """Why an entry that looks right is malformed: a character that does not show."""
    hit = next((i for i, ch in enumerate(e.text) if not ch.isascii() and is_invisible(ch)), None)
    if hit is None:
        return None
    return (f"it contains an invisible character, {describe(e.text[hit])} (column {e.span.column + hit}): "
            "delete it")


_KINDS = {IP: "IP addresses or networks", DOMAIN: "domains", ADDRESS: "addresses", INT: "whole numbers"}


def _address_glob_hint(text: str) -> str:
    domain = text.rpartition("@")[2]
    if _has_glob(domain):
        d = domain.lstrip("*?.")
        return (f"`@{d}` matches anyone at {d} but not at its subdomains; for those, put `{d}` in a "
                "domain list and test `sender.domain within` it (or `rcpt.domain`)")
    return (f"write `@{domain}` for anyone at {domain}, or list each address; "
            f"for a pattern, test the field in a rule: `like \"{text}\"`")


def _domain_form(text: str) -> tuple[str, bool]:
    """(name, subdomains only) a domain-list entry stands for: `.d` and
    `*.d` the subdomains of d; `@d` and `*@d` (anyone at d, as written in
    address lists) d itself."""
    for prefix, sub in (("*.", True), (".", True), ("*@", False), ("@", False)):
        if text.startswith(prefix):
            return text[len(prefix):], sub
    return text, False


def _domain_glob_hint(text: str) -> str:
    rest = text.lstrip("*")
    if rest != text and not _has_glob(rest) and valid_domain(rest.lstrip(".")):
        d = rest.lstrip(".")
        return f"write `{d}` for the domain itself and `.{d}` for its subdomains, one a line"
    labels = text.split(".")
    last = max(i for i, label in enumerate(labels) if _has_glob(label))
    parent = ".".join(labels[last + 1:])
    return ("list each name" + (f", or `.{parent}` for every subdomain of {parent}" if parent else "")
            + f"; for a pattern, test the field in a rule: `like \"{text}\"`")


def _ip_glob_hint(text: str) -> str:
    """10.* and 192.168.1.* are networks: say which, in CIDR form."""
    parts = text.split(".")
    fixed = [p for p in parts if p != "*"]
    if (0 < len(fixed) < len(parts) <= 4 and parts[:len(fixed)] == fixed
            and all(p.isdigit() and int(p) <= 255 for p in fixed)):
        net = ".".join(fixed + ["0"] * (4 - len(fixed)))
        return f"write `{net}/{8 * len(fixed)}`: networks are written in CIDR form"
    return "write networks in CIDR form: 192.0.2.0/24, 10.0.0.0/8 or 2001:db8::/32"


_V4_PREFIX = re.compile(r"(\d{1,3})(\.\d{1,3}){0,2}\.?")
_V6_PREFIX = re.compile(r"[0-9a-fA-F]{1,4}(:[0-9a-fA-F]{1,4}){0,6}:?")


def _ip_prefix(text: str) -> str | None:
    """A network for an address prefix, as qpsmtpd's relayclients writes
    them (`192.0.`, `2001:0DB8:`) and Postfix's access maps (`192.0.2`):
    whole octets or groups, then the rest is any.  None if not one."""
    if "." in text and _V4_PREFIX.fullmatch(text):
        octets = text.rstrip(".").split(".")
        if len(octets) < 4 and all(int(o) <= 255 for o in octets):
            return ".".join(octets + ["0"] * (4 - len(octets))) + f"/{8 * len(octets)}"
    if ":" in text and "::" not in text and _V6_PREFIX.fullmatch(text):
        groups = text.rstrip(":").split(":")
        if len(groups) < 8:
            return ":".join(groups + ["0"] * (8 - len(groups))) + f"/{16 * len(groups)}"
    return None


def build_matcher(entries, ftype: str, within: bool) -> tuple[Callable[[object], bool] | None, list[Diagnostic]]:
    """A membership test for values of ``ftype``, and what is wrong with the entries."""
    if isinstance(entries, FileEntries) and entries.built is not None:
        prebuilt = _prebuilt_matcher(entries.built, ftype, within)
        if prebuilt is not None:
            return prebuilt, []
    matcher, diags = _build_matcher(entries, ftype, within)
    return matcher, _unless_not_a_list(entries, ftype, diags)


def _unless_not_a_list(entries, ftype: str, diags: list[Diagnostic]) -> list[Diagnostic]:
    """When most entries of a list file are malformed, the path names some
    other file (/etc/shadow, a log): say so once, and quote none of its lines."""
    if not isinstance(entries, FileEntries):
        return diags
    bad = sum(1 for d in diags if d.code == "E302")
    if bad * 2 <= len(entries):
        return diags
    kind = _KINDS.get(ftype, "entries")
    return [Diagnostic("E302", f"list file {entries.file} does not look like a list of {kind}: "
                               f"{bad} of its {len(entries)} entries are not (none is shown)",
                       help="check the path of the list file: one entry a line, `#` starts a comment")]


def _build_matcher(entries, ftype: str, within: bool) -> tuple[Callable[[object], bool] | None, list[Diagnostic]]:
    """build_matcher without the not-a-list check.

    The loops work on the entries' texts and make an ``Entry`` (for its span)
    only for a diagnostic: loading a million-entry list is one pass of plain
    string and set operations."""
    diags: list[Diagnostic] = []
    texts = entries.texts if isinstance(entries, FileEntries) else [e.text for e in entries]
    if ftype in (IP, DOMAIN, ADDRESS) and _any_blank("\n".join(texts)):
        # qpsmtpd's badmailfrom and friends: `entry  reason...`; the reason is for people
        texts = [t.split(None, 1)[0] if t.strip() else t for t in texts]
    seen: dict = {}

    def dup(index: int, first: int) -> None:
        e = entries[index]
        diags.append(Diagnostic("W303", f"duplicate entry `{e.text}` (first on line {entries[first].span.line})",
                                e.span, help="remove one of them"))

    def bad(index: int, what: str, hint: str | None = None) -> None:
        e = entries[index]
        diags.append(Diagnostic("E302", f"`{e.text}` is not {what}", e.span, help=_invisible_note(e) or hint))

    def pattern(index: int, hint: str) -> None:
        e = entries[index]
        diags.append(Diagnostic("E302", f"`{e.text}` is a pattern, but list entries are matched exactly",
                                e.span, help=hint))

    if ftype == IP:
        fast = _plain_ipv4_table(texts)
        if fast is not None:
            return fast.__contains__, diags
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        pton, af_inet, from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes
        for i, text in enumerate(texts):
            addr, slash, plen = text.partition("/")
            try:
                # The everyday forms, a.b.c.d and a.b.c.d/n, without
                # ipaddress objects; inet_pton accepts exactly the dotted
                # quads ipaddress does (no leading zeros, each <= 255).
                if slash and not (plen.isascii() and plen.isdigit() and int(plen) <= 32):
                    raise OSError
                value = from_bytes(pton(af_inet, addr), "big")
                prefix = int(plen) if slash else 32
                key = (4, prefix, value >> (32 - prefix))
            except (OSError, ValueError):
                try:
                    net = ipaddress.ip_network(_ip_prefix(text) or text, strict=False)
                except ValueError:
                    if _has_glob(text):
                        pattern(i, _ip_glob_hint(text))
                    else:
                        bad(i, "an IP address or network", "write 192.0.2.1, 10.0.0.0/8 or 2001:db8::/32")
                    continue
                bits = 32 if net.version == 4 else 128
                key = (net.version, net.prefixlen, int(net.network_address) >> (bits - net.prefixlen))
            first = seen.setdefault(key, i)
            if first != i:
                dup(i, first)
                continue
            version, prefix, value = key
            (v4 if version == 4 else v6).setdefault(prefix, set()).add(value)
        table = CidrTable(keys=(v4, v6))
        return table.__contains__, diags

    if ftype == DOMAIN:
        lowered, joined = _lowered(texts, strip_dots=True)
        names = set(lowered) if joined is not None and _plain(joined, "*.") else None
        if names is not None and len(names) == len(lowered) and _all_domains(joined):
            # the everyday list: plain valid names, no duplicates
            return _domain_matcher(membership(pack_strings(names)), within), diags
        exact: set[str] = set()
        below: set[str] = set()     # subdomains of these
        match = _DOMAIN_RE.match
        for i, text in enumerate(lowered):
            name, sub = _domain_form(text)
            if _has_glob(name):
                pattern(i, _domain_glob_hint(text))
                continue
            if not (name and len(name) <= 253 and name.isascii() and match(name)) and not valid_domain(name):
                hint = "an address list entry goes with sender or rcpt, not a domain field" if "@" in name else None
                bad(i, "a domain", hint)
                continue
            first = seen.setdefault((name, sub), i)
            if first != i:
                dup(i, first)
                continue
            if within:
                exact.add(name)
                below.add(name)
            elif sub:
                below.add(name)
            else:
                exact.add(name)
        is_exact, is_below = membership(pack_strings(exact)), membership(pack_strings(below))
        if not below:
            return is_exact, diags

        def domain_match(value, is_exact=is_exact, is_below=is_below) -> bool:
            return is_exact(value) or any(map(is_below, _suffixes(value)))
        return domain_match, diags

    if ftype == ADDRESS:
        lowered, joined = _lowered(texts, strip_dots=False)
        fast = _plain_address_sets(lowered, joined)
        if fast is not None:
            addresses, domains = fast
        else:
            addresses, domains = set(), set()
            _address_entries(lowered, addresses, domains, seen, bad, dup, pattern)
        return _address_matcher(membership(pack_strings(addresses)), membership(pack_strings(domains)),
                                bool(domains)), diags

    if ftype == INT:
        numbers: set[int] = set()
        for i, text in enumerate(texts):
            try:
                n = int(text)
            except ValueError:
                bad(i, "a whole number")
                continue
            first = seen.setdefault(str(n), i)
            if first != i:
                dup(i, first)
                continue
            numbers.add(n)
        return membership(pack_ints(numbers)) if numbers else numbers.__contains__, diags

    if ftype in (STRING, BOOL, LIST):
        lowered: set[str] = set()
        for i, text in enumerate(texts):
            first = seen.setdefault(text.lower(), i)
            if first != i:
                dup(i, first)
                continue
            lowered.add(text.lower())
        return (lambda v, has=membership(pack_strings(lowered)): has(str(v).lower())), diags

    return None, diags


def _domain_matcher(has: Callable[[object], bool], within: bool) -> Callable[[object], bool]:
    """The test of a list of plain domain names: ``has``, or with ``within`` has or a parent has."""
    if not within:
        return has

    def within_match(value, has=has) -> bool:
        return has(value) or any(map(has, _suffixes(value)))
    return within_match


def _address_matcher(is_address, is_domain, any_domain: bool) -> Callable[[object], bool]:
    def address_match(value, is_address=is_address, is_domain=is_domain, any_domain=any_domain) -> bool:
        if is_address(value):
            return True
        return any_domain and is_domain(value.rpartition("@")[2])
    return address_match


# ---- big lists built in parallel --------------------------------------------
#
# The server's compile (at start, and the supervisor's on a reload) hands
# every big list file to child processes first (``prefetch``), forked from
# it, one list at a time, as many at once as there are CPUs: a child reads
# the file, checks that every line is a clean entry of the kind it looks like
# (domains, addresses, IPv4 addresses: the checks of the one-pass paths of
# ``_build_matcher``), computes the sorted keys and writes them as a packed
# file of the shared folder (checks/packed.py; a child inherits the hash()
# secret, so its keys are the parent's).  The compile, when it reaches the
# list, maps that file instead of building it, if the file is still the one
# the child read and the field is of that kind.  Anything else (a comment, a
# bad line, a duplicate, another kind, a small list) is built here as
# before, with the same diagnostics: the children only ever take the path
# on which there is nothing to report.

_parallel: list[bool] = [False]


def build_in_parallel(on: bool) -> None:
    """Let ``prefetch`` fork (the server's process, before any thread exists)."""
    _parallel[0] = on


class _Prefetch:
    def __init__(self, jobs: list[str], pids: list[int], results: int):
        self.index = {path: i for i, path in enumerate(jobs)}
        self.pids = pids
        self.results: dict[int, dict | None] = {}
        self._fd: int | None = results
        self._buffer = b""

    def result(self, path: str) -> dict | None:
        i = self.index.get(path)
        if i is None:
            return None
        while i not in self.results and self._fd is not None:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self._close()
                break
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                try:
                    job, result = json.loads(line)
                    self.results[int(job)] = result if isinstance(result, dict) else None
                except (ValueError, TypeError):
                    continue
        return self.results.get(i)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def end(self) -> None:
        self._close()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)        # done already, unless the compile did not need its list
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids = []


_running: list[_Prefetch | None] = [None]


def prefetch(paths: list[str]) -> None:
    """Start building the big lists among ``paths`` (list files a compile
    is about to read) in child processes; ``read_list_file`` and
    ``build_matcher`` take what they built.  Only where ``build_in_parallel``
    allows it, lists are shared (packed.share_in) and there is more than one CPU."""
    end_prefetch()
    cpus = os.cpu_count() or 1
    if not _parallel[0] or packed._shared_dir[0] is None or cpus < 2 or not packed.packable(packed.MIN_PACKED):
        return
    jobs: list[str] = []
    for path in dict.fromkeys(paths):
        try:
            st = os.stat(path)
        except OSError:
            continue
        # at least MIN_PACKED lines of at least two bytes ("x\n"): smaller ones are not packed
        if stat.S_ISREG(st.st_mode) and 2 * packed.MIN_PACKED <= st.st_size <= MAX_LIST_BYTES:
            jobs.append(path)
    jobs = jobs[:255]
    if not jobs:
        return
    packed._load_numpy()                        # once, here, for every child
    job_r, job_w = os.pipe()
    os.write(job_w, bytes(range(len(jobs))))    # each child takes the next job, one byte each
    out_r, out_w = os.pipe()
    pids = []
    for _ in range(min(cpus, len(jobs))):
        pid = os.fork()
        if pid == 0:                            # pragma: no cover - a child; it ends in os._exit
            _prefetch_child(jobs, job_r, job_w, out_r, out_w)
        pids.append(pid)
    for fd in (job_r, job_w, out_w):
        os.close(fd)
    _running[0] = _Prefetch(jobs, pids, out_r)


def end_prefetch() -> None:
    """Stop the children of ``prefetch`` (and forget what they built)."""
    running, _running[0] = _running[0], None
    if running is not None:
        running.end()


def _prefetched(path: str) -> dict | None:
    running = _running[0]
    return running.result(path) if running is not None else None


def _prefetch_child(jobs: list[str], job_r: int, job_w: int, out_r: int, out_w: int) -> None:
    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.close(job_w)
        os.close(out_r)
        gc.disable()                            # a million strings to make, none to collect
        while True:
            job = os.read(job_r, 1)
            if not job:
                break
            try:
                result: dict | None = _analyse(jobs[job[0]])
            except Exception:  # noqa: BLE001 -- the compile then builds it itself
                result = None
            os.write(out_w, json.dumps([job[0], result]).encode() + b"\n")   # < PIPE_BUF: one write
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


def _analyse(path: str) -> dict | None:
    """In a child of ``prefetch``: the file's identity, whether it is clean,
    and when it is a big list of one kind with nothing to report, the packed
    file of its keys."""
    seen: list = []
    raw, _ = _read_capped(path, path, seen)
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
    del raw
    body = text[:-1] if text.endswith("\n") else text
    if not _clean(body):
        return {"identity": seen[0], "clean": False}
    count = body.count("\n") + 1
    out: dict = {"identity": seen[0], "clean": True, "count": count}
    if not packed.packable(count) or _any_blank(body):
        return out
    lines = body.split("\n")
    if "@" in body:
        kind, keys = "address", _address_keys(body, lines)
    elif _ipv4_value(lines[0]) is not None:
        kind, keys = "ip", _ipv4_keys(body, lines)
    else:
        kind, keys = "domain", _domain_keys(body, lines)
    if keys is None or len(keys) != count or any_repeated(keys):
        return out
    out.update(kind=kind, keys=packed.write_keys(keys.tobytes()), n=count)
    return out


def any_repeated(keys) -> bool:
    """Whether sorted ``keys`` hold a value twice (a duplicate entry, or two
    strings of one hash: the compile then builds the list itself and says)."""
    numpy = packed._load_numpy()
    if numpy is not None:
        a = numpy.frombuffer(keys, dtype=numpy.int64)
        return bool((a[1:] == a[:-1]).any())
    return any(map(operator.eq, keys, keys[1:]))


def _lowered_lines(body: str, lines: list[str]) -> tuple[str, list[str]]:
    low = body.lower()          # ASCII (a clean body): lower() of each line = lower() of them all
    return low, (lines if low == body else low.split("\n"))


def _domain_keys(body: str, lines: list[str]):
    """The keys of a list of plain valid domain names (``_build_matcher``'s
    one-pass DOMAIN path), None if it is anything else."""
    low, lowered = _lowered_lines(body, lines)
    if low.endswith(".") or ".\n" in low or not _plain(low, "*.") or not _all_domains(low):
        return None
    return packed.sorted_keys(map(hash, lowered), len(lowered))


def _address_keys(body: str, lines: list[str]):
    """The keys of a list of valid ``user@domain`` addresses
    (``_plain_address_sets`` without `@domain` entries), None if anything else."""
    low, lowered = _lowered_lines(body, lines)
    if (not _plain(low, "<@") or low.endswith(".") or ".\n" in low or "*" in low or "?" in low
            or low.count("@") != len(lowered) or not all(map(operator.contains, lowered, repeat("@")))):
        return None
    if not all(valid_domain(d) for d in _BAD_ADDRESS_DOMAIN.findall(low)):
        return None
    return packed.sorted_keys(map(hash, lowered), len(lowered))


def _ipv4_value(text: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def _ipv4_keys(body: str, lines: list[str]):
    """The keys of a list of IPv4 addresses (``_plain_ipv4_table`` without networks)."""
    if "/" in body:
        return None
    pton, af_inet, from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes
    try:
        return packed.sorted_keys((from_bytes(pton(af_inet, t), "big") for t in lines), len(lines))
    except (OSError, ValueError):
        return None


def _prebuilt_matcher(built: dict, ftype: str, within: bool) -> Callable[[object], bool] | None:
    """The matcher ``_build_matcher`` would make, from the keys a child of
    ``prefetch`` packed; None when they are not for this kind of field."""
    kind = built.get("kind")
    if (kind, ftype) not in (("domain", DOMAIN), ("address", ADDRESS), ("ip", IP)):
        return None
    keys = packed.mapped_set(built["keys"], built["n"], strings=kind != "ip")
    if keys is None:
        return None
    if kind == "domain":
        return _domain_matcher(membership(keys), within)
    if kind == "address":
        return _address_matcher(membership(keys), set().__contains__, False)
    return CidrTable(addresses=keys).__contains__
