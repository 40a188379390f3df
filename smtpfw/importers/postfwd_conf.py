"""A postfwd ruleset -> an smtpfw ruleset, with a report of what was done.

``import_postfwd_cf(path)`` reads a postfwd configuration (postfwd's
``-f`` file) and gives the ruleset text, the list files to write beside it
and a report with a line for every rule, every item and every action of it,
every macro and every line postfwd would ignore: translated, approximated
(how it differs), or not translated (why).  Nothing is left out silently.

How postfwd's rules become smtpfw rules
=======================================

Reading.  As postfwd does: ``#`` starts a comment, ``"`` is removed, a line
ending in ``\\`` or ``{`` goes on on the next, a line starting with white
space (or ``}``) continues the rule before it; items are separated by
``;``; ``&&NAME { ... }`` defines a macro, and ``&&NAME`` in a rule stands
for its items.  Items of the same name are alternatives (any may match);
items of different names must all match.

Where.  postfwd answers Postfix's policy requests; it is normally asked from
``smtpd_recipient_restrictions``, once per recipient, so the rules go ``on
rcpt:``, in the order of the file (``protocol_state==END-OF-MESSAGE`` moves
a rule ``on data:``).  The first rule whose action is a Postfix action
decides; postfwd's own actions (``set``, ``note``, ``jump``, ``rate`` ...)
do their work and the next rule is asked.

Decisions.  ``REJECT``, ``DEFER`` and reply codes become ``reject``,
``tempfail`` or ``disconnect`` (421).  ``DUNNO``, ``OK``, ``PREPEND`` and
``WARN`` end postfwd's rules without refusing: the later rules get the
condition ``not (...)`` of that rule (smtpfw has no "stop here" action, and
an ``accept`` would skip smtpfw's relay check).  ``jump(ID)`` does the same
for the rules it skips.

Variables.  ``set(V=$$rblcount)`` / ``+=$$rhsblcount`` with ``rblcount=all``
counts DNS list hits: a ``score V`` per list (client address lists at
connect, client name lists at the first HELO), tested as ``score.V >= N``.
``set(V=value)`` flags are replaced by the condition of the rule that sets
them.  Text variables (``$$dnsbltext``) have no equivalent.

Fields.  ``client_name`` is Postfix's verified name or ``unknown``:
``client.rdns`` when ``client.fcrdns``; ``sender`` is ``<>`` for the null
sender.  Patterns are searched case-insensitively as in postfwd, on RE2.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
from dataclasses import dataclass, field

from smtpfw.importers.common import (
    FALSE,
    TRUE,
    ImportResult,
    ReportLine,
    RulesetBuilder,
    SourceReportLine,
    Status,
    and_,
    hook_of,
    ident,
    list_item,
    network,
    not_,
    or_,
    q,
    read_config,
)
from smtpfw.importers.postfix_conf import _zone_name
from smtpfw.maps.regex import compile_regex

__all__ = ["import_postfwd_cf", "parse_postfwd"]

# ---- postfwd's syntax ------------------------------------------------------------

_SEP = r"[=~<>]=|[<>]|[=!][=~<>]|="
_ITEM = re.compile(rf"^\s*(.*?)\s*({_SEP})\s*(.*?)\s*$", re.S)
_VALID_ITEM = re.compile(rf"^\s*[^=\s]+\s*(?:{_SEP})\s*\S", re.S)
_MACRO_DEF = re.compile(r"^\s*(&&[-\w]+)\s*\{\s*(.*?)\s*;?\s*\}[\s;]*$", re.S)
_MACRO_REF = re.compile(r"&&[-\w]+")
_FILE = re.compile(r"^(cfile|file|ctable|table|lfile|ltable):(.+)$", re.I)
_ACTION_CALL = re.compile(r"^(\w[-\w]+)\s*\(\s*(.*?)\s*\)$", re.S)
_SINGLE = ("id", "cache", "score", "rblcount", "rhsblcount")
_DNS_KEYS = ("rbl", "rhsbl", "rhsbl_client", "rhsbl_sender", "rhsbl_reverse_client", "rhsbl_helo")
_CSV = ("client_address", "sender_ns_addrs", "sender_mx_addrs", "helo_address", *_DNS_KEYS,
        "date", "time", "days", "months")


@dataclass
class Item:
    key: str
    op: str            # normalized as postfwd does: ~= -> =~, <= -> =<, >= -> =>
    value: str
    line: int
    written: str       # the item as written
    macro: str | None = None      # the macro it came from
    origin: str = ""   # a file: list it came from

    @property
    def text(self) -> str:
        return self.written.strip()


@dataclass
class Macro:
    name: str
    line: int
    body: list[tuple[int, str]]   # its items, unexpanded
    used_by: list[str] = field(default_factory=list)


@dataclass
class PfwRule:
    index: int
    rid: str
    line: int
    items: list[Item]
    actions: list[Item]
    singles: dict[str, Item]
    notes: list[tuple[Item | None, Status, str]] = field(default_factory=list)   # from reading it
    empty: set[str] = field(default_factory=set)      # item names whose file: lists gave no values


def _pieces_to_items(pieces: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Split a logical line on `;`, each item with the line it starts on."""
    text = ""
    starts: list[tuple[int, int]] = []
    for line, piece in pieces:
        starts.append((len(text), line))
        text += piece
    out: list[tuple[int, str]] = []
    pos = 0
    for part in text.split(";"):
        lead = len(part) - len(part.lstrip())
        at = pos + lead
        line = starts[0][1]
        for off, ln in starts:
            if off <= at:
                line = ln
        out.append((line, part))
        pos += len(part) + 1
    return out


def _slice(pieces: list[tuple[int, str]], start: int, end: int) -> list[tuple[int, str]]:
    """The pieces of a logical line between two offsets of its text."""
    out: list[tuple[int, str]] = []
    pos = 0
    for line, piece in pieces:
        a, b = max(start, pos), min(end, pos + len(piece))
        if a < b:
            out.append((line, piece[a - pos:b - pos]))
        pos += len(piece)
    return out or [(pieces[0][0], "")]


def logical_lines(text: str) -> list[list[tuple[int, str]]]:
    """postfwd's read_config_file: the logical lines, each as its physical
    pieces (line number, text as joined)."""
    lines: list[list[tuple[int, str]]] = []
    buf: list[tuple[int, str]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        s = re.sub(r'("|#.*)', "", raw.rstrip("\r"))
        if not s.strip():
            continue
        m = re.match(r"(.*)\\\s*$", s) or re.match(r"(.*\{)\s*$", s)
        if m:
            buf.append((number, m.group(1)))
            continue
        buf.append((number, s))
        joined = "".join(p for _n, p in buf)
        if lines and re.match(r"^(\}|\s+\S)", joined):
            last = lines.pop()
            if not re.search(r";\s*$", "".join(p for _n, p in last)):
                last = last[:-1] + [(last[-1][0], last[-1][1] + ";")]
            buf = last + buf
        lines.append(buf)
        buf = []
    if buf:
        lines.append(buf)
    return lines


def _split_values(key: str, value: str) -> list[str]:
    if key in ("client_address", "sender_ns_addrs", "sender_mx_addrs", "helo_address", *_DNS_KEYS):
        return [v for v in re.split(r"[\s,]+", value) if v]
    return [v for v in re.split(r"\s*,\s*", value) if v != ""]


def parse_postfwd(text: str, *, base: str = ".") -> tuple[list[PfwRule], dict[str, Macro],
                                                         list[tuple[int, str, Status, str]]]:
    """The rules and macros of a postfwd file, and report lines for what
    postfwd ignores (line, text, status, why).  ``base`` is where relative
    ``file:`` lists are looked for."""
    rules: list[PfwRule] = []
    macros: dict[str, Macro] = {}
    bad: list[tuple[int, str, Status, str]] = []
    for pieces in logical_lines(text):
        joined = "".join(p for _n, p in pieces)
        first = pieces[0][0]
        m = _MACRO_DEF.match(joined)
        if m:
            name = m.group(1)
            # the definition's own items: what is between the braces
            items = [(ln, p) for ln, p in _pieces_to_items(_slice(pieces, joined.index("{") + 1, joined.rindex("}")))
                     if p.strip()]
            if name in macros:
                bad.append((first, name, Status.APPROXIMATED,
                            f"{name} is defined again here: postfwd uses this definition from here on"))
            macros[name] = Macro(name, first, items)
            continue
        expanded, why, used = _expand(_pieces_to_items(pieces), macros)
        short = _one_line(joined)
        if expanded is None:
            bad.append((first, short, Status.NOT_UNDERSTOOD, f"postfwd ignores this line: {why}"))
            continue
        while expanded and not expanded[-1][1].strip():
            expanded.pop()
        if not expanded or any(not p.strip() for _l, p, _m in expanded) \
                or any(not _VALID_ITEM.match(p) for _l, p, _m in expanded):
            bad.append((first, short, Status.NOT_UNDERSTOOD,
                        "postfwd ignores this line (\"ignoring invalid line\"): every item must be "
                        "`name OPERATOR value`, separated by `;`"))
            continue
        rule = _make_rule(len(rules), first, expanded, base)
        if not rule.actions:
            bad.append((first, short, Status.NOT_TRANSLATED,
                        "a rule without action=: postfwd ignores it (\"contains no action\")"))
            continue
        for name in used:
            if rule.rid not in macros[name].used_by:
                macros[name].used_by.append(rule.rid)
        rules.append(rule)
    return rules, macros, bad


def _expand(items: list[tuple[int, str]], macros: dict[str, Macro],
            depth: int = 0) -> tuple[list[tuple[int, str, str | None]] | None, str, list[str]]:
    out: list[tuple[int, str, str | None]] = []
    used: list[str] = []
    if depth > 20:
        return None, "macros nest more than 20 deep (a macro that uses itself?)", used
    for line, part in items:
        refs = _MACRO_REF.findall(part)
        if not refs:
            out.append((line, part, None))
            continue
        for name in refs:
            if name not in macros:
                return None, f"undefined macro '{name}' (a macro must be defined before the rules that use it)", used
        if part.strip() in macros:
            name = part.strip()
            sub, why, inner_used = _expand(macros[name].body, macros, depth + 1)
            if sub is None:
                return None, why, used
            used += [name] + inner_used
            out += [(ln, p, m or name) for ln, p, m in sub]
            continue
        # a macro inside an item: postfwd substitutes the text
        text = part
        for name in refs:
            body = ";".join(p for _l, p in macros[name].body)
            text = re.sub(r"\s*" + re.escape(name) + r"(?![-\w])\s*", body.replace("\\", "\\\\"), text)
            used.append(name)
        sub, why, inner_used = _expand([(line, p) for p in text.split(";")], macros, depth + 1)
        if sub is None:
            return None, why, used
        used += inner_used
        out += sub
    return out, "", used


def _make_rule(index: int, line: int, parts: list[tuple[int, str, str | None]], base: str) -> PfwRule:
    items: list[Item] = []
    actions: list[Item] = []
    singles: dict[str, Item] = {}
    notes: list[tuple[Item | None, Status, str]] = []
    for ln, part, macro in parts:
        m = _ITEM.match(part)
        assert m is not None
        key, op, value = m.group(1), m.group(2), m.group(3)
        op = {"~=": "=~", "<=": "=<", ">=": "=>"}.get(op, op)
        item = Item(key, op, value, ln, part, macro)
        if key in _SINGLE:
            if key in singles:
                notes.append((singles[key], Status.TRANSLATED,
                              f"overridden by {key}={value} on line {ln} (postfwd keeps the last one)"))
            singles[key] = item
        elif key == "action":
            actions.append(item)
        else:
            values = _split_values(key, value) if key in _CSV else [value]
            for v in values:
                fm = _FILE.match(v)
                if fm:
                    items += _file_items(key, op, fm.group(1).lower(), fm.group(2), item, base, notes)
                else:
                    items.append(Item(key, op, v, ln, part if len(values) == 1 else f"{key}{m.group(2)}{v}", macro))
    rid = singles["id"].value if "id" in singles else f"R-{index}"
    rule = PfwRule(index, rid, line, items, actions, singles, notes)
    rule.empty = {i.key for _i, _s, _w in notes if (i := _i) is not None} - {i.key for i in items}
    return rule


_MAX_FILE_DEPTH = 8         # file: lists named inside file: lists


def _file_items(key: str, op: str, kind: str, path: str, item: Item, base: str,
                notes: list[tuple[Item | None, Status, str]], reading: frozenset[str] = frozenset()) -> list[Item]:
    """The values of a `file:` (or table) list; ``reading``: the lists that
    name this one, so a list that names itself is reported, not followed."""
    candidates = [path] if os.path.isabs(path) else [os.path.join(base, path)]
    candidates.append(os.path.join(base, os.path.basename(path)))
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is not None and (os.path.realpath(found) in reading or len(reading) >= _MAX_FILE_DEPTH):
        notes.append((item, Status.NOT_TRANSLATED,
                      f"{kind}:{path} is named by a list it names itself (a loop), or lists are nested more than "
                      f"{_MAX_FILE_DEPTH} deep: not read again"))
        return []
    if found is None:
        notes.append((item, Status.NOT_TRANSLATED,
                      f"{kind}:{path} was not found (looked for {', '.join(dict.fromkeys(candidates))}): postfwd "
                      "ignores a list it cannot read, so this item has no values"))
        return []
    out: list[Item] = []
    with open(found, encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            s = re.sub(r"#.*", "", raw.rstrip("\n"))
            if not s.strip():
                continue
            if kind in ("table", "ctable", "ltable"):
                s = re.sub(r"\s+\S+\s*$", "", s)
            s = s.strip()
            fm = _FILE.match(s)
            if fm:
                out += _file_items(key, op, fm.group(1).lower(), fm.group(2), item, base, notes,
                                   reading | {os.path.realpath(found)})
                continue
            out.append(Item(key, op, s, item.line, item.written, item.macro, f"{kind}:{path} line {number}"))
    if kind in ("lfile", "ltable"):
        notes.append((item, Status.APPROXIMATED,
                      f"{kind}:{path}: postfwd rereads it when it changes; the import copies its {len(out)} "
                      "entries as they are now"))
    else:
        notes.append((item, Status.TRANSLATED, f"{kind}:{path}: its {len(out)} entries are this item's values"))
    return out


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---- what postfwd's request attributes are in smtpfw ---------------------------------

@dataclass(frozen=True)
class _Attr:
    field: str                 # the smtpfw field
    kind: str                  # text, ip, num
    special: str | None = None         # smtpfw condition under which postfwd's value is `special_value`
    not_special: str | None = None
    special_value: str = ""
    placeholder: str | None = None
    note: str = ""
    empty_when_special: bool = False  # the smtpfw field is "" where postfwd has `special_value`


_ATTRS: dict[str, _Attr] = {
    "client_address": _Attr("client.ip", "ip", placeholder="{client.ip}"),
    "client_name": _Attr("client.rdns", "text", "not client.fcrdns", "client.fcrdns", "unknown", "{client.rdns}",
                         "Postfix's client_name is the verified name (forward-confirmed), else `unknown`"),
    "reverse_client_name": _Attr("client.rdns", "text", 'client.ptr != "found"', 'client.ptr = "found"', "unknown",
                                 "{client.rdns}"),
    "helo_name": _Attr("helo", "text", placeholder="{helo}"),
    "sender": _Attr("sender", "text", "sender.null", "not sender.null", "<>", "{sender}",
                    "postfwd writes the null sender as `<>`", empty_when_special=True),
    "sender_domain": _Attr("sender.domain", "text", "sender.null", "not sender.null", "", "{sender.domain}", empty_when_special=True),
    "sender_localpart": _Attr("sender.local", "text", "sender.null", "not sender.null", "", "{sender.local}", empty_when_special=True),
    "recipient": _Attr("rcpt", "text", placeholder="{rcpt}"),
    "recipient_domain": _Attr("rcpt.domain", "text", placeholder="{rcpt.domain}"),
    "recipient_localpart": _Attr("rcpt.local", "text", placeholder="{rcpt.local}"),
    "sasl_username": _Attr("auth.user", "text", "not auth", "auth", "", "{auth.user}", empty_when_special=True),
    "size": _Attr("mail.size", "num", placeholder="{mail.size}"),
    "recipient_count": _Attr("rcpt.count", "num", placeholder="{rcpt.count}"),
    "client_port": _Attr("client.port", "num", placeholder="{client.port}"),
    "server_address": _Attr("listener.address", "ip", placeholder="{listener.address}"),
    "server_port": _Attr("listener.port", "num", placeholder="{listener.port}"),
}

_NO_FIELD = {
    "ccert_subject": "the TLS client certificate: smtpfw has no field for it (`tls` only says the session is encrypted)",
    "ccert_issuer": "the TLS client certificate: smtpfw has no field for it (`tls` only says the session is encrypted)",
    "ccert_fingerprint": "the TLS client certificate's fingerprint: smtpfw has no field for it",
    "ccert_pubkey_fingerprint": "the TLS client certificate's key fingerprint: smtpfw has no field for it",
    "encryption_protocol": "the TLS protocol version: smtpfw has no field for it (`tls` only says the session is "
                           "encrypted)",
    "encryption_cipher": "the TLS cipher: smtpfw has no field for it",
    "encryption_keysize": "the TLS key size: smtpfw has no field for it",
    "stress": "Postfix's stress mode (smtpd under load): smtpfw has no such field",
    "sasl_method": "the SASL mechanism: smtpfw has `auth` and `auth.user`, not the mechanism",
    "sasl_sender": "the AUTH= sender of MAIL FROM: smtpfw has no field for it",
    "instance": "Postfix's per-message instance id: nothing a rule can test",
    "queue_id": "Postfix's queue id: nothing a rule can test",
    "etrn_domain": "smtpfw does not implement ETRN",
    "policy_context": "Postfix's policy_context setting: smtpfw has no equivalent",
    "sender_ns_names": "the sender domain's NS names: smtpfw looks up MX and A/AAAA (`sender.resolvable`), not NS",
    "sender_ns_addrs": "the addresses of the sender domain's name servers: smtpfw does not look them up",
    "sender_mx_names": "the sender domain's MX names: smtpfw has `sender.resolvable`, not the MX names",
    "sender_mx_addrs": "the addresses of the sender domain's MX hosts: smtpfw does not look them up",
    "helo_address": "the HELO name's addresses as CIDR: use `helo.addresses` / `helo.matches_client` by hand "
                    "(the import does not translate address tests on it)",
    "client_uid": "the local client's UID (sendmail): smtpfw has no such field",
    "ccert_verified": "the TLS client certificate: smtpfw has no field for it",
    "request_score": "postfwd's request score: not translated (see score())",
    "version": "postfwd's version: no meaning in smtpfw",
    "postfwd_port": "postfwd's own port: no meaning in smtpfw",
    "postfwd_interface": "postfwd's own interface: no meaning in smtpfw",
    "months": "months: smtpfw's time fields have `time.date`, which the import does not test for months",
    "matches": "the number of items matched so far: no equivalent",
    "request_hits": "the ids of the rules that matched this request: no equivalent",
}

_STATES = {"RCPT": "rcpt", "END-OF-MESSAGE": "data", "DATA": "data", "CONNECT": "connect", "EHLO": "helo",
           "HELO": "helo", "MAIL": "mail"}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


@dataclass
class _Var:
    """A variable set() makes."""
    kind: str                         # score, flag, text
    score: str = ""                   # kind score: the score's name
    sets: list[tuple[str, str, str]] = field(default_factory=list)   # kind flag: (value, condition, rule id)
    rules: list[str] = field(default_factory=list)


@dataclass
class _Guard:
    cond: str                         # what the rule that ends postfwd's evaluation tests
    rid: str
    why: str                          # dunno, OK, jump ...
    state: str | None                 # the protocol_state it applies at (None: every)
    until: str | None = None          # a jump: the rule id where it lands
    jump: bool = False


class _Untranslatable(Exception):
    def __init__(self, status: Status, why: str):
        super().__init__(why)
        self.status = status
        self.why = why


class _Translator:
    def __init__(self, path: str):
        self.path = path
        self.file = os.path.basename(path)
        text = read_config(path)
        self.base = os.path.dirname(os.path.abspath(path))
        self.rules, self.macros, self.bad = parse_postfwd(text, base=self.base)
        self.report: list[tuple[int, int, SourceReportLine]] = []
        self.seq = 0
        self.b = RulesetBuilder([
            f"# Imported from a postfwd ruleset ({self.file}) by `smtpfw import postfwd-config`.",
            "# The report lists every rule, item and action of the file: what was done, or why not.",
            "# postfwd is asked at RCPT TO (smtpd_recipient_restrictions), so its rules are `on rcpt:`, in the",
            "# file's order.  A rule that ends postfwd's evaluation without refusing (DUNNO, OK, PREPEND, WARN)",
            "# is a condition `not (...)` of the later rules: no rule accepts, the relay check at the end applies.",
            "# postfwd's times are the server's local time; smtpfw's are `option timezone` (UTC unless set).",
        ])
        self.zones: dict[tuple[str, str, str], str] = {}
        self.vars: dict[str, _Var] = {}
        self.guards: list[_Guard] = []
        self.ids = {r.rid for r in self.rules}
        self.order = {r.rid: i for i, r in enumerate(self.rules)}
        self.needs_ptr = False
        self.name_counters: list[tuple[str, str, str]] = []   # (rid, action, cond) counted once at HELO
        self.limits: set[str] = set()
        self.tags: dict[str, str] = {}

    # -- report --------------------------------------------------------------

    def note(self, parameter: str, original: str, status: Status, note: str, line: int) -> None:
        self.seq += 1
        self.report.append((line or 10**9, self.seq,
                            SourceReportLine(parameter, original, status, note, line, self.file)))

    # -- declarations ----------------------------------------------------------

    def zone(self, kind: str, domain: str, codes: str) -> str:
        key = (kind, domain.lower().rstrip("."), codes)
        if key not in self.zones:
            base = _zone_name(key[1])
            if base in self.b.names and kind == "rhsbl":
                base += "_names"
            name = self.b.fresh(base)
            self.zones[key] = name
            filt = f" codes [{codes}]" if codes else ""
            self.b.declare(f"zone {name} = {kind} {q(key[1])}{filt}")
        return self.zones[key]

    # -- items -------------------------------------------------------------------

    def text_test(self, attr: _Attr, op: str, value: str) -> tuple[list[str], list[str]]:
        """An item on a text attribute: (its condition as alternatives, notes)."""
        notes: list[str] = []
        ref = re.fullmatch(r"\$\$\s*\(?\s*(\w+)\s*\)?", value)
        if "$$" in value:
            if ref is None or op not in ("==", "!="):
                raise _Untranslatable(Status.NOT_TRANSLATED,
                                      "a pattern made of another attribute's value ($$...): smtpfw's `matches` "
                                      "takes a constant pattern (only `=` and `!=` compare two fields)")
            other = _ATTRS.get(ref.group(1))
            if other is None or other.kind != "text":
                raise _Untranslatable(Status.NOT_TRANSLATED,
                                      f"$${ref.group(1)} is not an attribute the import can compare")
            if other.special and attr.special:
                raise _Untranslatable(Status.NOT_TRANSLATED,
                                      f"both sides stand for special values (`{attr.special_value}`, "
                                      f"`{other.special_value}`): not translated")
            eq = f"{attr.field} = {other.field}"
            alts = [and_([attr.not_special or TRUE, eq])]
            if attr.special:
                alts.append(and_([attr.special, f"{other.field} = {q(attr.special_value)}"]))
            elif other.special:
                alts = [and_([other.not_special or TRUE, eq]),
                        and_([other.special, f"{attr.field} = {q(other.special_value)}"])]
            cond = or_(alts)
            return ([cond] if op == "==" else [not_(cond)]), notes
        if op in ("=", "=~", "!~"):
            pattern = re.sub(r"^/?(.*?)/?$", r"\1", value, flags=re.S)
            regex, error = compile_regex(pattern)
            if regex is None:
                assert error is not None
                raise _Untranslatable(Status.NOT_TRANSLATED, f"pattern `{pattern}`: {error.code} {error.message}")
            expr = f"{attr.field} matches {q(pattern)}"
            static = regex.search(attr.special_value)
            if op == "!~":
                expr = f"{attr.field} not matches {q(pattern)}"
                static = not static
        elif op in ("==", "!="):
            expr = f"{attr.field} {'=' if op == '==' else '!='} {q(value)}"
            same = attr.special_value.lower() == value.lower()
            # postfwd drops an attribute whose value is empty from the request, and an item
            # about an attribute the request lacks does not match, `!=` included (checked
            # against postfwd2 itself: tests/test_import_postfwd.py)
            static = attr.special_value != "" and (same if op == "==" else not same)
        else:
            raise _Untranslatable(Status.NOT_TRANSLATED, f"a numeric comparison ({op}) of a text attribute")
        if not attr.special:
            return [expr], notes
        if op == "==" and value and attr.empty_when_special and not static:
            return [expr], notes
        if static:
            return [attr.special, expr], notes
        return [and_([attr.not_special or TRUE, expr])], notes

    def item_cond(self, item: Item, hook: str) -> tuple[str, Status, str]:
        """One item: (condition, status, note).  Raises _Untranslatable."""
        value = item.value
        negate = False
        m = re.fullmatch(r"!!\s*\(?\s*(.+?)\s*\)?", value, re.S)
        if m:
            negate, value = True, m.group(1)
        key, op = item.key, item.op
        status, note = Status.TRANSLATED, ""
        if key in _VARS_OF_RULES:
            raise _Untranslatable(Status.NOT_TRANSLATED, _VARS_OF_RULES[key])
        if key in self.vars:
            cond, status, note = self.var_test(key, op, value)
        elif key in ("date", "time", "days"):
            cond, status, note = self.time_test(key, value)
            if op == "!=":
                cond = not_(cond)
        elif key == "protocol_name":
            if op not in ("==", "=") or value.upper() not in ("SMTP", "ESMTP"):
                raise _Untranslatable(Status.NOT_TRANSLATED, "protocol_name: only ==SMTP and ==ESMTP are translated")
            cond = "esmtp" if value.upper() == "ESMTP" else "not esmtp"
        elif key == "request":
            cond = TRUE if value.lower() == "smtpd_access_policy" else FALSE
            note = "Postfix always sends request=smtpd_access_policy"
        elif key in _ATTRS:
            attr = _ATTRS[key]
            if key == "size" and hook == "data":
                attr = _Attr("message.size", "num")
            if attr.kind == "ip":
                if "$$" in value or op not in ("=", "==", "!=", "=~"):
                    raise _Untranslatable(Status.NOT_TRANSLATED, f"{key}{op}: only network tests are translated")
                shown, why = network(value)
                if shown is None:
                    raise _Untranslatable(Status.NOT_TRANSLATED, why)
                cond = f"{attr.field} in [{list_item(shown)}]"
                note = why
                if op == "!=":
                    cond = f"{attr.field} not in [{list_item(shown)}]"
            elif attr.kind == "num":
                if not re.fullmatch(r"\d+", value):
                    raise _Untranslatable(Status.NOT_TRANSLATED, f"{key}: `{value}` is not a number")
                cmp = {"==": "=", "=<": "<=", "=>": ">=", "<": "<", ">": ">", "!=": "!=", "!<": ">", "!>": "<",
                       "=": ">="}.get(op)
                if cmp is None:
                    raise _Untranslatable(Status.NOT_TRANSLATED, f"{key}: operator {op} on a number")
                cond = f"{attr.field} {cmp} {value}"
                if key == "recipient_count" and hook == "rcpt":
                    status, note = Status.APPROXIMATED, (
                        "at RCPT TO Postfix sends recipient_count=0 (it is known from DATA on); "
                        "translated as rcpt.count, the recipients accepted so far")
                elif key == "size" and hook != "data":
                    note = "before DATA, size is the SIZE= of MAIL FROM: mail.size"
            else:
                alts, notes = self.text_test(attr, op, value)
                cond = or_(alts)
                note = "; ".join(n for n in [attr.note, *notes] if n)
        elif key in _NO_FIELD:
            raise _Untranslatable(Status.NOT_TRANSLATED, _NO_FIELD[key])
        elif key.startswith("$$"):
            raise _Untranslatable(Status.NOT_UNDERSTOOD,
                                  f"`{key}` is not a request attribute (an attribute is named without $$; $$ "
                                  "belongs in values): postfwd compares an empty value here")
        elif key.startswith("%%"):
            raise _Untranslatable(Status.NOT_TRANSLATED, "a dynamic group: smtpfw has counters, not groups of values")
        elif key == "protocol_state":
            cond = TRUE
            note = f"the stage: the rule is `on {hook}:`"
            if value.upper() == "DATA":
                status, note = Status.APPROXIMATED, ("postfwd is asked at the DATA command; smtpfw's `on data:` runs "
                                                     "once the message is in")
        else:
            raise _Untranslatable(Status.NOT_UNDERSTOOD,
                                  f"`{key}` is neither a Postfix policy attribute nor a variable set() makes "
                                  "before this rule: postfwd compares an empty value")
        if value.startswith("%%"):
            raise _Untranslatable(Status.NOT_TRANSLATED, "a dynamic group: smtpfw has counters, not groups of values")
        return (not_(cond) if negate else cond), status, note

    def time_test(self, key: str, value: str) -> tuple[str, Status, str]:
        lo, dash, hi = (s.strip() for s in value.partition("-"))
        if key == "days":
            def day(t: str) -> int | None:
                if re.fullmatch(r"\d", t):
                    return int(t)
                return _WEEKDAYS.get(t.lower()[:3]) if t.lower()[:3] in _WEEKDAYS and len(t) == 3 else None
            now = None
            a = day(lo) if lo else now
            b = day(hi) if hi else (None if dash else a)
            if (lo and a is None) or (hi and b is None):
                raise _Untranslatable(Status.NOT_TRANSLATED, f"days={value}: not a day or range of days")
            days = [d for d in range(7) if (a is None or a <= d) and (b is None or d <= b)]
            if not days:
                return FALSE, Status.TRANSLATED, (f"days={value}: postfwd numbers the days Sun=0 .. Sat=6 and tests "
                                                  f"{a} <= day <= {b}, which no day meets")
            if len(days) == 7:
                return TRUE, Status.TRANSLATED, ""
            return ("time.weekday in [" + ", ".join(q(_DAY_NAMES[d]) for d in days) + "]"), Status.TRANSLATED, ""
        if key == "date":
            def date(t: str) -> str:
                m = re.fullmatch(r"(\d{1,2})\.(\d{1,2})\.(\d{4})", t)
                if not m:
                    raise _Untranslatable(Status.NOT_TRANSLATED, f"date={value}: not DD.MM.YYYY")
                return f"{m.group(3)}-{int(m.group(2)):02d}-{int(m.group(1)):02d}"
            if not dash:
                return f"time.date = {q(date(lo))}", Status.TRANSLATED, ""
            parts = ([f"time.date >= {q(date(lo))}"] if lo else []) + ([f"time.date <= {q(date(hi))}"] if hi else [])
            return and_(parts), Status.TRANSLATED, ""
        # time
        status, notes = Status.TRANSLATED, []

        def clock(t: str, end: bool) -> tuple[str, str]:
            nonlocal status
            m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", t)
            if not m:
                raise _Untranslatable(Status.NOT_TRANSLATED, f"time={value}: not HH:MM:SS")
            hm = f"{int(m.group(1)):02d}:{m.group(2)}"
            sec = m.group(3) or "00"
            if end:
                if sec != "59":
                    status = Status.APPROXIMATED
                    notes.append(f"time.clock has minutes: up to {hm}:59 rather than {hm}:{sec}")
                return "<=", hm
            if sec != "00":
                status = Status.APPROXIMATED
                notes.append(f"time.clock has minutes: from {hm}:00 rather than {hm}:{sec}")
            return ">=", hm
        if not dash:
            op1, hm = clock(lo, False)
            status = Status.APPROXIMATED
            return f"time.clock = {q(hm)}", status, "time.clock has minutes: the whole minute"
        parts = []
        if lo:
            op1, hm = clock(lo, False)
            parts.append(f"time.clock {op1} {q(hm)}")
        if hi:
            op2, hm2 = clock(hi, True)
            parts.append(f"time.clock {op2} {q(hm2)}")
        return and_(parts), status, "; ".join(notes)

    def var_test(self, key: str, op: str, value: str) -> tuple[str, Status, str]:
        var = self.vars[key]
        if var.kind == "score":
            if not re.fullmatch(r"-?\d+", value):
                raise _Untranslatable(Status.NOT_TRANSLATED, f"{key} counts list hits: `{value}` is not a number")
            cmp = {"==": "=", "=<": "<=", "=>": ">=", "<": "<", ">": ">", "!=": "!=", "!<": ">", "!>": "<"}.get(op)
            status, note = Status.TRANSLATED, f"{key} is score {var.score} (set by {', '.join(var.rules)})"
            if cmp is None:
                cmp = "="
                status, note = Status.APPROXIMATED, (f"{key} is score {var.score}; postfwd's {op} searches the "
                                                     f"number's text for `{value}`, the import compares it")
            return f"score.{var.score} {cmp} {value}", status, note
        if var.kind == "text":
            raise _Untranslatable(Status.NOT_TRANSLATED,
                                  f"{key} holds a text set() made ({', '.join(var.rules)}): smtpfw has no text "
                                  "variables")
        alts = []
        for val, cond, _rid in var.sets:
            if op in ("==", "="):
                hit = val.lower() == value.lower() if op == "==" else re.search(value, val, re.I) is not None
            elif op == "!=":
                hit = val != "" and val.lower() != value.lower()
            elif op in ("=~", "!~"):
                hit = (re.search(value, val, re.I) is not None) == (op == "=~")
            else:
                raise _Untranslatable(Status.NOT_TRANSLATED, f"{key}{op}{value}: not translated")
            if hit:
                alts.append(cond)
        return or_(alts), Status.TRANSLATED, (f"{key} is set by {', '.join(var.rules)}: the condition of "
                                              "that rule stands for it")

    def dns_group(self, rule: PfwRule, key: str, items: list[Item], count: str) -> tuple[list[str], list[list[str]]]:
        """The lists of one dns item name: (the test of each list, the notes of each)."""
        tests: list[str] = []
        per_item: list[list[str]] = []
        for item in items:
            notes: list[str] = []
            per_item.append(notes)
            if item.value.startswith("!!"):
                raise _Untranslatable(Status.NOT_TRANSLATED, "a negated DNS list item: not translated")
            domain, _, rest = item.value.partition("/")
            answer, _, ttl = rest.partition("/")
            codes, exact = _codes(answer)
            if codes is None:
                raise _Untranslatable(Status.NOT_TRANSLATED,
                                      f"answer pattern `{answer}` is not one smtpfw can write as return codes")
            if not exact:
                notes.append(f"{domain}: answer pattern `{answer}` written as codes [{codes}]")
            if ttl:
                notes.append(f"{domain}: /{ttl} is postfwd's cache time; smtpfw caches answers per process as their "
                             "DNS TTL says")
            kind = "dnsbl" if key == "rbl" else "rhsbl"
            z = self.zone(kind, domain, codes)
            if key == "rbl":
                tests.append(f"client.ip listed in {z}")
            elif key in ("rhsbl", "rhsbl_client"):
                self.needs_ptr = True
                tests.append(f"client.fcrdns and client.rdns listed in {z}")
            elif key == "rhsbl_reverse_client":
                self.needs_ptr = True
                tests.append(f"client.rdns listed in {z}")
            elif key == "rhsbl_helo":
                tests.append(f"helo listed in {z}")
            else:
                tests.append(f"sender.domain listed in {z}")
            if key in ("rhsbl", "rhsbl_client"):
                notes.append("the client's name is Postfix's verified client_name (client.fcrdns)")
            if key == "rbl":
                notes.append("postfwd skips IPv6 clients unless --ipv6_dnsbl; smtpfw asks the lists for IPv6 clients "
                             "too")
        return tests, per_item

    # -- rules -----------------------------------------------------------------

    def rule_hook(self, rule: PfwRule) -> tuple[str, str | None]:
        states = [i for i in rule.items if i.key == "protocol_state"]
        if not states:
            return "rcpt", None
        values = {i.value.upper() for i in states}
        if len(values) != 1 or any(i.op not in ("==", "=") for i in states):
            raise _Untranslatable(Status.NOT_TRANSLATED,
                                  "protocol_state: only one stage (==RCPT, ==END-OF-MESSAGE, ...) is translated")
        (state,) = values
        if state not in _STATES:
            raise _Untranslatable(Status.NOT_TRANSLATED, f"protocol_state=={state}: smtpfw has no such stage")
        return _STATES[state], state

    def conditions(self, rule: PfwRule, hook: str) -> tuple[str, list[tuple[Item, Status, str]], str]:
        """The rule's condition, a report entry per item, and the list-hit
        count condition (for set())."""
        groups: dict[str, list[Item]] = {}
        for item in rule.items:
            groups.setdefault(item.key, []).append(item)
        parts: list[str] = [FALSE] if rule.empty else []
        entries: list[tuple[Item, Status, str]] = []
        failed: list[tuple[Item, Status, str]] = []
        for key, items in groups.items():
            if key in _DNS_KEYS:
                continue
            alts: list[str] = []
            nets: list[str] = []
            for item in items:
                try:
                    cond, status, note = self.item_cond(item, hook)
                except _Untranslatable as err:
                    failed.append((item, err.status, err.why))
                    continue
                if item.origin:
                    note = "; ".join(n for n in (f"from {item.origin}", note) if n)
                entries.append((item, status, note or "translated"))
                m = re.fullmatch(r"client\.ip in \[(.+)\]", cond)
                if m and key == "client_address":
                    nets.append(m.group(1))
                else:
                    alts.append(cond)
            if nets:
                alts.insert(0, f"client.ip in [{', '.join(dict.fromkeys(nets))}]")
            parts.append(or_(alts))
        # DNS lists: each item name must have its count of hits
        for key, items in groups.items():
            if key not in _DNS_KEYS:
                continue
            count_item = rule.singles.get("rblcount" if key == "rbl" else "rhsblcount")
            count = count_item.value.strip().lower() if count_item else "1"
            try:
                tests, notes = self.dns_group(rule, key, items, count)
            except _Untranslatable as err:
                failed += [(i, err.status, err.why) for i in items]
                continue
            for item, item_notes in zip(items, notes):
                note = "; ".join(item_notes) or "translated"
                entries.append((item, Status.APPROXIMATED if "written as codes" in note else Status.TRANSLATED, note))
            if count == "all":
                continue
            if not count.isdigit():
                failed.append((count_item or items[0], Status.NOT_TRANSLATED, f"count `{count}` is not a number"))
                continue
            n = max(int(count), 1)
            if n > len(tests):
                parts.append(FALSE)
            elif n == 1:
                parts.append(or_(tests))
            else:
                combos = list(itertools.combinations(tests, n))
                if len(combos) > 40:
                    failed.append((count_item or items[0], Status.NOT_TRANSLATED,
                                   f"{n} of {len(tests)} lists: too many combinations to write"))
                    continue
                parts.append(or_([and_(list(c)) for c in combos]))
        for key in ("rblcount", "rhsblcount"):
            it = rule.singles.get(key)
            if it is not None:
                related = [k for k in groups if k in _DNS_KEYS and (k == "rbl") == (key == "rblcount")]
                entries.append((it, Status.TRANSLATED, "the number of listings the rule needs" if related
                                else "no DNS list item of its kind in this rule: no effect"))
        if failed:
            entries += failed
            raise _RuleFailed(entries, failed)
        return and_(parts), entries, ""

    def guards_for(self, rule: PfwRule, state: str | None, hook: str) -> tuple[list[str], list[str]]:
        """The `not (...)` of the earlier rules that end postfwd's evaluation
        (and of the jumps over this rule), and notes on guards left out."""
        out: list[str] = []
        notes: list[str] = []
        idx = self.order[rule.rid]
        for g in self.guards:
            if g.state is not None and g.state != state:
                continue
            if g.until is not None and self.order.get(g.until, -1) <= idx:
                continue
            expr = not_(g.cond)
            if hook_of(expr) != hook and _RANK_OF[hook_of(expr)] > _RANK_OF[hook]:
                notes.append(f"the exception of rule [{g.rid}] tests fields not known {hook}: left out")
                continue
            out.append(expr)
        return out, notes

    def run(self) -> ImportResult:
        for line, text, status, why in self.bad:
            self.note("(line)", text, status, why, line)
        for rule in self.rules:
            self.translate(rule)
        for macro in self.macros.values():
            body = "; ".join(_one_line(p) for _l, p in macro.body)
            if macro.used_by:
                self.note(macro.name, f"{macro.name} {{ {body} }}", Status.TRANSLATED,
                          f"a macro: its items are translated in the rules that use it ({', '.join(macro.used_by)})",
                          macro.line)
            else:
                self.note(macro.name, f"{macro.name} {{ {body} }}", Status.TRANSLATED,
                          "a macro no rule uses: nothing to translate", macro.line)
        self.finish()
        report: list[ReportLine] = [r for _l, _s, r in sorted(self.report, key=lambda x: (x[0], x[1]))]
        return ImportResult(self.b.render(), dict(sorted(self.b.files.items())), report)

    def finish(self) -> None:
        b = self.b
        if self.name_counters:
            b.comment("helo", "the DNS lists of the client's name are counted once, at the first HELO: the name "
                              "(a PTR lookup started at connect) is known by then")
            for rid, action, cond in self.name_counters:
                b.rule("helo", rid, action, and_(["not tagged pfw_names_counted", cond]))
            b.rule("helo", "names-counted", "tag pfw_names_counted")
        if self.needs_ptr:
            b.blocks["connect"].insert(0, _lookup_rule(b))
            self.note("(translation)", "client.rdns listed in ...", Status.TRANSLATED,
                      "rule [lookup-client-name] at connect has the client's PTR looked up, so that the DNS lists of "
                      "its name can be asked in the later hooks", 0)
        b.comment("rcpt", "postfwd does not decide relaying (Postfix's smtpd_relay_restrictions does): smtpfw's "
                          "default relay check")
        b.rule("rcpt", "no-relay", 'reject 554 5.7.1 "Relaying denied"', "rcpt.domain not in localnames")
        self.note("(translation)", "relay check", Status.TRANSLATED,
                  "rule [no-relay], the last at RCPT: postfwd leaves relaying to Postfix; the import refuses "
                  "recipients outside `localnames` as smtpfw's default ruleset does: declare `list localnames = "
                  "[...]` with your domains (and exempt your users, e.g. `not auth and`)", 0)

    def translate(self, rule: PfwRule) -> None:
        rid = rule.rid
        shown = f"id={rid}" if "id" in rule.singles else f"(no id: {rid})"
        for item, status, why in rule.notes:
            if item is not None:
                self.note(rid, item.text, status, why, item.line)
        try:
            hook, state = self.rule_hook(rule)
        except _Untranslatable as err:
            self.note(rid, shown, Status.NOT_TRANSLATED, err.why, rule.line)
            self._report_rest(rule, "the rule is not translated", items=True)
            return
        try:
            cond, entries, _ = self.conditions(rule, hook)
        except _RuleFailed as failed:
            for item, status, why in failed.entries:
                self.note(rid, item.text, status, why, item.line)
            final = self._final_action(rule)
            consequence = ""
            if final is not None and _ends_quietly(final.value):
                consequence = ("; postfwd ends its evaluation for what it matches, so the later rules apply to more "
                               "requests here than in postfwd")
            reasons = ", ".join(dict.fromkeys(f"{i.key}" for i, _s, _w in failed.failed))
            self.note(rid, shown, Status.NOT_TRANSLATED,
                      f"not translated: {reasons} cannot be said in smtpfw (see the items){consequence}", rule.line)
            self._report_rest(rule, "the rule is not translated", items=False)
            self.b.comment(hook, f"# id={rid} ({self.file} line {rule.line}): not translated, see the report")
            return
        for item, status, why in entries:
            self.note(rid, item.text, status, why, item.line)
        if "score" in rule.singles:
            it = rule.singles["score"]
            self.note(rid, it.text, Status.NOT_TRANSLATED,
                      "a score threshold (the action when score() passes it): postfwd's score is per request, "
                      "smtpfw's scores add up over the session", it.line)
            self._report_rest(rule, "the rule is not translated", items=False)
            return
        if "cache" in rule.singles:
            it = rule.singles["cache"]
            self.note(rid, it.text, Status.NOT_APPLICABLE, "postfwd's request cache time: smtpfw has no request cache",
                      it.line)
        guards, guard_notes = self.guards_for(rule, state, hook)
        full = and_([cond, *guards])
        if cond == FALSE:
            self.note(rid, shown, Status.TRANSLATED,
                      "no rule needed: its items can never all match (see them), so postfwd never applies it",
                      rule.line)
            for a in rule.actions:
                self.note(rid, a.text, Status.TRANSLATED, "no rule needed: the rule never matches", a.line)
            return
        block = self.b.blocks[hook]
        block.append(f"# id={rid} ({self.file} line {rule.line})")
        at = len(block)
        guards_before = len(self.guards)
        done = self.actions(rule, hook, state, cond, full, guards)
        if len(block) == at:
            what = []
            if len(self.guards) > guards_before:
                what.append("the later rules test `not (...)` of its items")
            if any(v for v in self.vars.values() if rid in v.rules and v.kind == "score"):
                what.append("its DNS list hits are counted as scores (`on connect:`, `on helo:`)")
            block[at - 1] = f"{block[at - 1]}: " + ("; ".join(what) if what else "no rule (see the report)")
        status = Status.APPROXIMATED if guard_notes or any(s is Status.APPROXIMATED for _i, s, _w in entries) \
            or done is Status.APPROXIMATED else done
        where = f"`on {hook}:`"
        note = f"translated {where}" + (f", with the exceptions of the earlier rules ({len(guards)})" if guards else "")
        if guard_notes:
            note += "; " + "; ".join(guard_notes)
        if done is Status.NOT_TRANSLATED:
            note = "its action is not translated (see the action)"
        self.note(rid, shown, status, note, rule.line)

    def _final_action(self, rule: PfwRule) -> Item | None:
        for a in rule.actions:
            if not _ACTION_CALL.match(a.value.strip()):
                return a
        return None

    def _report_rest(self, rule: PfwRule, why: str, *, items: bool) -> None:
        if items:
            for item in rule.items:
                self.note(rule.rid, item.text, Status.NOT_TRANSLATED, why, item.line)
        for a in rule.actions:
            self.note(rule.rid, a.text, Status.NOT_TRANSLATED, why, a.line)

    # -- actions --------------------------------------------------------------------

    def actions(self, rule: PfwRule, hook: str, state: str | None, own: str, full: str,
                guards: list[str]) -> Status:
        """Translate the actions in order, up to the first Postfix action;
        the worst status."""
        rid = rule.rid
        worst = Status.TRANSLATED
        jump_conds = [g for g in guards]   # the conditions a set() result depends on
        stopped: Item | None = None
        for a in rule.actions:
            if stopped is not None:
                self.note(rid, a.text, Status.NOT_TRANSLATED,
                          f"never used: the action before it ({stopped.value.split()[0]}) ends postfwd's evaluation",
                          a.line)
                continue
            value = a.value.strip()
            m = _ACTION_CALL.match(value)
            if m:
                status, note = self.postfwd_action(rule, hook, m.group(1).lower(), m.group(2), own, full, jump_conds,
                                                   state)
            else:
                stopped = a
                status, note = self.postfix_action(rule, hook, state, value, own, full)
            self.note(rid, a.text, status, note, a.line)
            if status is Status.NOT_TRANSLATED or status is Status.NOT_UNDERSTOOD:
                worst = Status.NOT_TRANSLATED if worst is not Status.NOT_TRANSLATED else worst
            elif status is Status.APPROXIMATED and worst is Status.TRANSLATED:
                worst = Status.APPROXIMATED
        return worst

    def text(self, text: str, hook: str) -> tuple[str, list[str]]:
        """An action text with $$attributes as placeholders."""
        notes: list[str] = []
        out = text.replace("{", "{{").replace("}", "}}")

        def sub(m: re.Match) -> str:
            name = m.group(1) or m.group(2)
            if name in _ATTRS and _ATTRS[name].placeholder:
                ph = _ATTRS[name].placeholder or ""
                if name == "size" and hook == "data":
                    ph = "{message.size}"
                if name in ("client_name", "reverse_client_name"):
                    notes.append(f"$${name} is {ph} (postfwd says `unknown` for a name that is not verified)")
                return ph
            var = self.vars.get(name)
            if var is not None and var.kind == "score":
                return f"{{score.{var.score}}}"
            if var is not None:
                notes.append(f"$${name} (a text set() made) is left out: smtpfw has no text variables")
                return ""
            if name in ("rblcount", "rhsblcount", "dnsbltext", "ratecount", "request_score", "matches"):
                notes.append(f"$${name} is left out: no equivalent in this rule")
                return ""
            notes.append(f"$${name} is kept as written: postfwd leaves an unknown variable in the text")
            return m.group(0)
        out = re.sub(r"\$\$\s*(?:\((\w+)\)|(\w+))", sub, out)
        out = _one_line(out)
        return out, notes

    def postfix_action(self, rule: PfwRule, hook: str, state: str | None, value: str, own: str,
                       full: str) -> tuple[Status, str]:
        rid = rule.rid
        word, _, rest = value.partition(" ")
        upper = word.upper()
        rest = rest.strip()
        text, notes = self.text(rest, hook)
        status = Status.APPROXIMATED if notes else Status.TRANSLATED
        m = re.fullmatch(r"([245])(\d\d)", word)
        if m or upper in ("REJECT", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT"):
            if upper in ("DEFER_IF_PERMIT", "DEFER_IF_REJECT"):
                self.end(rule, own, state, upper)
                return Status.NOT_TRANSLATED, (f"{upper}: a decision that depends on Postfix's later restrictions; "
                                               "smtpfw has no equivalent (the later rules skip what it matches, as in "
                                               "postfwd)")
            code = word if m else ("554" if upper == "REJECT" else "450")
            if m and m.group(1) == "2":
                self.end(rule, own, state, word)
                return Status.APPROXIMATED, (f"{word}: Postfix permits (like OK); the later rules skip what it "
                                             "matches, the relay check still applies")
            enh = re.match(r"([245]\.\d{1,3}\.\d{1,3})\s+(.*)$", text)
            enhanced = enh.group(1) if enh else ("5.7.1" if code[0] == "5" else "4.7.1")
            if enh:
                text = enh.group(2)
            if enhanced[0] != code[0]:
                enhanced = code[0] + enhanced[1:]
            if not text:
                text = "Access denied" if upper in ("REJECT",) or code[0] == "5" else "Try again later"
            verb = "reject" if code[0] == "5" else "tempfail"
            if code in ("421", "521"):
                verb = "disconnect"
            rid_out = self.b.rule(hook, rid, f"{verb} {code} {enhanced} {q(text)}", full)
            note = f"rule [{rid_out}]: {verb} {code}"
            if code in ("421", "521"):
                note += f" and close the connection (Postfix does with {code})"
            return status, "; ".join([note, *notes])
        if upper in ("DUNNO", "OK", "PERMIT", "PERMIT_AUTH_DESTINATION") or re.fullmatch(r"\d+", word):
            self.end(rule, own, state, upper)
            if upper == "DUNNO":
                return Status.TRANSLATED, ("ends postfwd's evaluation without a decision: the later rules get "
                                           f"`not (...)` of this rule's items")
            return Status.APPROXIMATED, (f"{upper}: Postfix permits the recipient in smtpd_recipient_restrictions; "
                                         "translated as DUNNO (the later rules skip what it matches) so that the "
                                         "relay check still applies")
        if upper == "WARN":
            self.end(rule, own, state, upper)
            rid_out = self.b.rule(hook, rid, f"warn {q(text or 'postfwd rule ' + rid)}", full)
            return status, "; ".join([f"rule [{rid_out}] logs it; the later rules skip what it matches", *notes])
        if upper == "PREPEND":
            self.end(rule, own, state, upper)
            hdr, _, hval = text.partition(":")
            if not re.fullmatch(r"[!-9;-~]+", hdr.strip()):
                return Status.NOT_TRANSLATED, f"PREPEND `{text}`: not a header line"
            tag = self.b.fresh(f"pfw_prepend_{rid}")
            self.b.rule(hook, rid, f"tag {tag}", full)
            self.b.rule("data", f"{rid}-header", f"add_header {q(hdr.strip())} {q(hval.strip())}", f"tagged {tag}")
            return Status.APPROXIMATED, "; ".join([
                f"the header is added `on data:` (rule [{rid}-header]) to messages of sessions where the rule matched "
                f"(tag {tag}; a tag lasts the session, Postfix adds it to that message); the later rules skip what it "
                "matches", *notes])
        if upper in ("HOLD", "DISCARD", "FILTER", "REDIRECT", "BCC", "REJECT_UNAUTH_DESTINATION"):
            self.end(rule, own, state, upper)
            return Status.NOT_TRANSLATED, (f"{upper}: not a decision smtpfw takes (it queues or delivers, it does not "
                                           "hold, discard or redirect); the later rules skip what it matches, as in "
                                           "postfwd")
        if re.fullmatch(r"[A-Za-z_][\w-]*", word) and not rest:
            self.end(rule, own, state, word)
            if re.search(r"grey|gray", word, re.I):
                rid_out = self.b.rule(hook, rid, 'tempfail 451 4.7.1 "Greylisted, try again later"',
                                      and_([full, 'greylist != "pass"']) if hook == "rcpt" else full)
                if hook != "rcpt":
                    return Status.NOT_TRANSLATED, "greylisting: smtpfw greylists at RCPT only"
                return Status.APPROXIMATED, (f"`{word}` names a Postfix restriction class (smtpd_restriction_classes "
                                             f"in main.cf), by its name a greylisting service: rule [{rid_out}] "
                                             "greylists with smtpfw's own greylisting (docs/state.md)")
            return Status.NOT_TRANSLATED, (f"`{word}` names a Postfix restriction class (smtpd_restriction_classes in "
                                           "main.cf) that the import cannot see: translate main.cf with `smtpfw import "
                                           "postfix-config`; the later rules skip what it matches, as in postfwd")
        self.end(rule, own, state, word)
        return Status.NOT_UNDERSTOOD, f"`{value}`: not a Postfix access action the import knows"

    def end(self, rule: PfwRule, own: str, state: str | None, why: str) -> None:
        """The rule ends postfwd's evaluation: the later rules get its negation."""
        jumps = [g for g in self.guards if g.jump and (g.until is None or self.order.get(g.until, -1) >
                                                        self.order[rule.rid])]
        cond = and_([own, *[not_(g.cond) for g in jumps if g.state in (None, state)]])
        self.guards.append(_Guard(cond, rule.rid, why, state))

    def postfwd_action(self, rule: PfwRule, hook: str, cmd: str, arg: str, own: str, full: str,
                       guards: list[str], state: str | None) -> tuple[Status, str]:
        rid = rule.rid
        if cmd == "set":
            return self.set_action(rule, hook, arg, own, full)
        if cmd == "note":
            text, notes = self.text(arg, hook)
            if not text:
                return Status.TRANSLATED, "an empty note: postfwd logs nothing"
            rid_out = self.b.rule(hook, rid, f"log {q(text)}", full)
            return (Status.APPROXIMATED if notes else Status.TRANSLATED), "; ".join([f"rule [{rid_out}]", *notes])
        if cmd in ("jump", "skip"):
            if cmd == "skip":
                if not arg.isdigit():
                    return Status.NOT_UNDERSTOOD, "skip() takes a number of rules"
                target_idx = self.order[rid] + int(arg) + 1
                target = self.rules[target_idx].rid if target_idx < len(self.rules) else None
            else:
                target = arg.strip()
                if target not in self.ids:
                    return Status.TRANSLATED, f"jump to `{target}`, which no rule has: postfwd ignores it"
                if self.order[target] <= self.order[rid]:
                    return Status.NOT_TRANSLATED, "a jump backwards (a loop): smtpfw rules run once, top to bottom"
            self.guards.append(_Guard(own, rid, cmd, state, until=target, jump=True))
            return Status.TRANSLATED, (f"the rules it skips (up to {target or 'the end'}) get `not (...)` of this rule's "
                                       "items")
        if cmd in ("rate", "size", "rcpt", "rate5321", "size5321", "rcpt5321"):
            return self.rate_action(rule, hook, cmd, arg, full)
        if cmd == "wait":
            if not re.fullmatch(r"\d+", arg):
                return Status.NOT_UNDERSTOOD, "wait() takes seconds"
            rid_out = self.b.rule(hook, rid, f"tarpit {min(int(arg), 300)}s", full)
            return Status.APPROXIMATED, (f"rule [{rid_out}]: tarpit — smtpfw delays every later reply of the session "
                                         "(postfwd delays this answer)")
        if cmd in ("score",):
            return Status.NOT_TRANSLATED, ("score(): postfwd's request score is per request (and its thresholds, "
                                           "score=, answer when it passes them); smtpfw's scores add up over the "
                                           "session, once per recipient at RCPT")
        if cmd == "quit":
            return Status.NOT_TRANSLATED, "quit(): stops postfwd itself; nothing to translate"
        if cmd == "ask":
            return Status.NOT_TRANSLATED, ("ask(): delegates the decision to another policy server; smtpfw has no "
                                           "policy client (write a plugin)")
        if cmd in ("mail", "sendmail"):
            return Status.NOT_TRANSLATED, f"{cmd}(): sends a notification mail; smtpfw does not send mail"
        if cmd in ("groupadd", "groupdel"):
            return Status.NOT_TRANSLATED, f"{cmd}(): dynamic groups; smtpfw has counters (docs/state.md), not groups"
        if cmd == "dumprequest":
            return Status.NOT_APPLICABLE, "dumprequest(): a debugging aid"
        return Status.NOT_UNDERSTOOD, f"{cmd}(): not a postfwd action the import knows (postfwd ignores unknown ones)"

    def set_action(self, rule: PfwRule, hook: str, arg: str, own: str, full: str) -> tuple[Status, str]:
        rid = rule.rid
        notes: list[str] = []
        worst = Status.TRANSLATED
        for part in arg.split(","):
            m = re.match(r"^\s*([^=]+?)\s*([.\-*/+=]=|=[.\-*/+=]|=)\s*(.*?)\s*$", part)
            if not m:
                notes.append(f"`{part}` is not NAME=VALUE: postfwd ignores it")
                continue
            name, mod, val = m.group(1), m.group(2), m.group(3)
            src = re.fullmatch(r"\$\$\s*\(?(rblcount|rhsblcount)\)?", val)
            if src:
                status, note = self.count_var(rule, name, mod, src.group(1), own)
            elif re.search(r"\$\$", val):
                var = self.vars.setdefault(name, _Var("text"))
                if var.kind != "text":
                    var.kind = "text"
                var.rules.append(rid)
                status, note = Status.APPROXIMATED, (f"{name}={val}: a text variable, not kept: smtpfw has none "
                                                     "(its uses are reported)")
            elif mod in ("=", "=="):
                var = self.vars.setdefault(name, _Var("flag"))
                if var.kind != "flag":
                    status, note = Status.NOT_TRANSLATED, f"{name}: set both as a count and as a value"
                else:
                    var.sets.append((val, and_([own, *[not_(g.cond) for g in self.guards if g.jump]]), rid))
                    var.rules.append(rid)
                    status, note = Status.TRANSLATED, (f"{name}={val}: where it is tested, the condition of this "
                                                       "rule stands for it")
            else:
                status, note = Status.NOT_TRANSLATED, f"{name}{mod}{val}: arithmetic on variables is not translated"
            notes.append(note)
            if status is not Status.TRANSLATED and worst is Status.TRANSLATED:
                worst = status
        return worst, "; ".join(notes)

    def count_var(self, rule: PfwRule, name: str, mod: str, source: str, own: str) -> tuple[Status, str]:
        keys = [i.key for i in rule.items if i.key in _DNS_KEYS]
        kinds = ["rbl"] if source == "rblcount" else [k for k in dict.fromkeys(keys) if k != "rbl"]
        kinds = [k for k in dict.fromkeys(kinds) if k in keys]
        count = rule.singles.get(source)
        c = count.value.strip().lower() if count else "1"
        if c not in ("all", "1") or (c == "1" and len({k for k in keys}) > 1):
            return Status.NOT_TRANSLATED, (f"{name}: counts list hits of a rule that needs {c} of them; only "
                                           f"{source}=all (or one kind of list) is translated")
        var = self.vars.get(name)
        if var is None:
            var = self.vars[name] = _Var("score", score=self.b.fresh(name))
        elif var.kind != "score":
            return Status.NOT_TRANSLATED, f"{name}: set both as a count and as a value"
        if mod not in ("=", "==", "+=", "=+"):
            return Status.NOT_TRANSLATED, f"{name}{mod}$${source}: only = and += are translated"
        if rule.rid not in var.rules:
            var.rules.append(rule.rid)
        # the rule's other items: what the counting depends on
        others = [i for i in rule.items if i.key not in _DNS_KEYS]
        other_cond = and_([self.item_cond(i, "rcpt")[0] for i in others]) if others else TRUE
        jumps = [not_(g.cond) for g in self.guards if g.jump and (g.until is None or self.order.get(g.until, -1) >
                                                                   self.order[rule.rid])]
        extra = and_([other_cond, *jumps])
        if extra != TRUE and hook_of(extra) != "connect":
            return Status.NOT_TRANSLATED, (f"{name}: the rule's other items test fields not known at connect, where the "
                                           "lists are counted")
        items = [i for i in rule.items if i.key in kinds]
        added = 0
        for item in items:
            tests, _notes = self.dns_group(rule, item.key, [item], "all")
            (test,) = tests
            zname = test.rsplit(" ", 1)[1]
            cond = and_([test, extra])
            action = f"score {var.score} +1"
            rid = f"{rule.rid}-{zname}"
            if item.key == "rbl":
                self.b.rule("connect", rid, action, cond)
            elif item.key in ("rhsbl", "rhsbl_client", "rhsbl_reverse_client", "rhsbl_helo"):
                self.name_counters.append((rid, action, cond))
            else:
                return Status.NOT_TRANSLATED, (f"{name}: counts sender domain lists; a score would add up over the "
                                               "transactions of a session")
            added += 1
        where = "at connect" if source == "rblcount" else "at the first HELO"
        note = (f"{name}{mod}$${source}: score {var.score} +1 for each of the {added} lists, counted {where} "
                "(the lists depend on the client only); tested as score." + var.score)
        if mod in ("=", "==") and len(var.rules) > 1:
            return Status.APPROXIMATED, note + f"; {name} is also set by {', '.join(var.rules[:-1])}: the counts add up"
        return Status.TRANSLATED, note

    def rate_action(self, rule: PfwRule, hook: str, cmd: str, arg: str, full: str) -> tuple[Status, str]:
        parts = arg.split("/", 3)
        if len(parts) != 4:
            return Status.NOT_UNDERSTOOD, f"{cmd}(): expected ITEM/MAX/SECONDS/ACTION"
        item, mx, secs, action = (p.strip() for p in parts)
        item = item.removeprefix("$$")
        attr = _ATTRS.get(item)
        if attr is None or not re.fullmatch(r"\d+", mx) or not re.fullmatch(r"\d+", secs) or int(secs) == 0:
            return Status.NOT_TRANSLATED, (f"{cmd}({arg}): the import translates limits by a request attribute it "
                                           "knows, with a number and seconds")
        base = cmd.removesuffix("5321")
        counting = {"rate": None, "size": "bytes", "rcpt": "recipients"}[base]
        if base == "size" and hook != "data":
            return Status.NOT_TRANSLATED, ("size(): counts message sizes; smtpfw counts bytes `on data:` only (put "
                                           "protocol_state==END-OF-MESSAGE in the rule)")
        if base == "rcpt" and hook != "rcpt":
            return Status.NOT_TRANSLATED, "rcpt(): smtpfw counts recipients at RCPT only"
        span = _span(int(secs))
        name = self.b.fresh(f"rate_{rule.rid}")
        decl = f"limit {name} = {mx} per {span} by {attr.field}" + (f" counting {counting}" if counting else "")
        self.b.declare(decl)
        word = action.split()[0].upper() if action.split() else ""
        m = re.fullmatch(r"([45])(\d\d)", word)
        text, notes = self.text(action.partition(" ")[2], hook)
        text = text.replace("{{ratecount}}", "")
        if not (m or word in ("REJECT", "DEFER")):
            return Status.NOT_TRANSLATED, f"{cmd}(): its action `{action}` is not a refusal the import translates"
        code = word if m else ("554" if word == "REJECT" else "450")
        enh = re.match(r"([245]\.\d{1,3}\.\d{1,3})\s+(.*)$", text)
        enhanced = enh.group(1) if enh else ("5.7.1" if code[0] == "5" else "4.7.1")
        text = enh.group(2) if enh else (text or "Rate limit exceeded")
        verb = "reject" if code[0] == "5" else "tempfail"
        rid_out = self.b.rule(hook, rule.rid, f"{verb} {code} {enhanced} {q(text)}",
                              and_([full, f"limit.{name}.exceeded"]))
        return Status.APPROXIMATED, "; ".join([
            f"`{decl}`, rule [{rid_out}]: smtpfw counts when the rule's items match and refuses the count past {mx} "
            f"(postfwd also checks the limit before its rules, for every request with that {item}; a count smtpfw "
            "refuses is not counted)", *notes])


class _RuleFailed(Exception):
    def __init__(self, entries: list[tuple[Item, Status, str]], failed: list[tuple[Item, Status, str]]):
        super().__init__("untranslatable items")
        self.entries = entries
        self.failed = failed


_RANK_OF = {"connect": 0, "helo": 1, "mail": 2, "rcpt": 3, "data": 4}

_VARS_OF_RULES = {
    "rblcount": "the hit count of the rule's rbl items (a rule item, not a request attribute)",
    "rhsblcount": "the hit count of the rule's rhsbl items",
}


def _ends_quietly(action: str) -> bool:
    word = action.strip().split(" ")[0].upper() if action.strip() else ""
    return word in ("DUNNO", "OK", "PERMIT", "PREPEND", "WARN") or not re.fullmatch(r"[45]\d\d|REJECT|DEFER", word)


def _lookup_rule(b: RulesetBuilder):
    from smtpfw.importers.common import Rule
    b.rule_ids.add("lookup-client-name")
    return Rule("lookup-client-name", "tag client_name_looked_up", 'client.ptr = "found"',
                ["# has the client's PTR looked up at connect, so that the DNS lists of its name can be asked later"])


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _codes(answer: str) -> tuple[str | None, bool]:
    """postfwd's answer pattern (a regex on the A record; default
    ^127\\.0\\.0\\.\\d+$) as smtpfw return codes: (codes, exact)."""
    default = not answer
    if default:
        answer = r"^127\.0\.0\.\d+$"
    anchored_start = answer.startswith("^")
    anchored_end = answer.endswith("$") and not answer.endswith("\\$")
    body = answer[1 if anchored_start else 0: -1 if anchored_end else None]
    octets = re.split(r"\\\.|(?<!\\)\.", body)
    if len(octets) != 4:
        return None, False
    parts: list[str] = []
    exact = anchored_start and anchored_end
    for i, o in enumerate(octets):
        try:
            rx = re.compile(o)
        except re.error:
            return None, False
        if i == 3 and not anchored_end:
            values = [v for v in range(256) if rx.match(str(v))]
        elif i == 0 and not anchored_start:
            values = [v for v in range(256) if re.search(f"(?:{o})$", str(v))]
        else:
            values = [v for v in range(256) if rx.fullmatch(str(v))]
        if not values:
            return None, False
        if len(values) == 256:
            parts.append("*")
        elif len(values) == 1:
            parts.append(str(values[0]))
        else:
            ranges: list[str] = []
            start = prev = values[0]
            for v in values[1:] + [None]:  # type: ignore[list-item]
                if v is not None and v == prev + 1:
                    prev = v
                    continue
                ranges.append(str(start) if start == prev else f"{start}..{prev}")
                if v is not None:
                    start = prev = v
            parts.append("[" + ";".join(ranges) + "]")
    codes = ".".join(parts)
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", codes):
        try:
            ipaddress.ip_address(codes)
        except ValueError:
            return None, False
    return codes, exact or default


def import_postfwd_cf(path: str) -> ImportResult:
    """Translate the postfwd ruleset at ``path``.  ``file:`` lists it names
    are read from their path, else beside it.  The result's ``files`` are
    to be written beside the ruleset; ``report`` has a line for every rule,
    item, action and macro of the file and every line postfwd ignores."""
    return _Translator(path).run()
