"""Postfix main.cf -> an smtpfw ruleset, with a report of what was done.

``import_main_cf(path, map_dir=...)`` reads a main.cf and gives the ruleset
text, the map and list files to write beside it (relative names under
``maps/``) and a report: one line for every parameter of the file, and one
for every restriction of every restriction list, saying what was done or
why not.  Nothing is left out silently.

How Postfix's restrictions become rules
=======================================

Restriction lists.  Postfix evaluates ``smtpd_client_restrictions``,
``smtpd_helo_restrictions``, ``smtpd_sender_restrictions``, then
``smtpd_relay_restrictions`` and ``smtpd_recipient_restrictions`` (in the
order ``smtpd_relay_before_recipient_restrictions`` says).  With
``smtpd_delay_reject = yes`` (the default) all of them run at RCPT TO, so
all of them become rules ``on rcpt:``, in that order; with ``no`` the
client, HELO and sender lists run ``on connect:``, ``on helo:`` and ``on
mail:``.  ``smtpd_data_restrictions`` and ``smtpd_end_of_data_restrictions``
become rules ``on data:``.

Permits.  A ``permit_*`` ends only its own list in Postfix; an smtpfw
``accept`` would end the whole hook (and could skip the relay check that a
later list makes).  So a permit is never translated as ``accept``: it
becomes a *guard*, a condition added to every later rule of the same list
(``permit_mynetworks`` adds ``client.ip not in mynetworks`` to them).  An
access map that may answer OK is applied only for its other answers
(``apply m(sender) if m(sender) not matches "^(ok|permit|...)$"``), and the
later rules of the list get the same guard.  The translated ruleset never
accepts: the end of a hook accepts, as Postfix's end of the lists does.

Rejects.  Each ``reject_*`` becomes a ``reject``/``tempfail`` rule with
Postfix's reply code and text, guarded as above.  A rule that an earlier
rule of the same hook always pre-empts (the same test in an earlier list)
is left out and reported as never reached, as it never is in Postfix.

Tables.  ``hash:``, ``texthash:`` (and the other indexed types) are read
from the postmap *source* file, ``cidr:`` as an access map of networks,
``regexp:``/``pcre:`` as they are, ``inline:{...}`` as an inline map, and
``mysql:``/``pgsql:``/``ldap:``/``sqlite:`` (``proxy:`` dropped) from their
settings files.  Files are looked for under ``map_dir`` (the whole path,
then the file name alone), else where main.cf says.  A file table that is
not found gets an empty stand-in (reported); lines smtpfw's loader refuses
are commented out of the copy (reported), so the ruleset lints clean.

Postscreen.  ``postscreen_dnsbl_sites`` entries become ``score dnsbl`` rules
``on connect:``, ``postscreen_dnsbl_threshold`` and the allowlist
threshold tests of ``score.dnsbl``; ``postscreen_access_list`` and
``postscreen_greet_action`` are translated too (see the report notes).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from dataclasses import dataclass, field

from smtpfw.diagnostics import Code
from smtpfw.lang.check import _map_pattern_problem, public_zone
from smtpfw.maps import load_map, logical_lines
from smtpfw.maps.regexp import parse_regexp_lines
from smtpfw.maps.tables.table import load_table

__all__ = ["ImportResult", "ReportLine", "Status", "import_main_cf", "parse_main_cf"]


# ---- the result ---------------------------------------------------------------

class Status(enum.StrEnum):
    TRANSLATED = "translated"            # the rules do what Postfix does
    APPROXIMATED = "approximated"        # translated; the note says how it differs
    NOT_TRANSLATED = "not translated"    # a policy setting smtpfw cannot say (the note says why)
    NOT_APPLICABLE = "not applicable"    # not about what smtpd accepts (delivery, TLS, queue, ...)
    NOT_UNDERSTOOD = "not understood"    # the importer does not know it


@dataclass(frozen=True)
class ReportLine:
    """One parameter, or one restriction of a list: ``original`` is its text
    in main.cf (or "(default) ..." for a default in effect), ``note`` what
    was done or why not; ``line`` is the main.cf line (0: a default)."""

    parameter: str
    original: str
    status: Status
    note: str
    line: int = 0

    def format(self) -> str:
        where = f"main.cf:{self.line}" if self.line else "(default)"
        return f"{where}: {self.parameter}: {self.status.value}: {self.original}\n    {self.note}"


@dataclass
class ImportResult:
    ruleset_text: str
    files: dict[str, str]          # relative name (maps/...) -> content, to write beside the ruleset
    report: list[ReportLine]

    def report_text(self) -> str:
        counts = self.counts()
        summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
        return "".join(line.format() + "\n" for line in self.report) + f"summary: {summary}\n"

    def write(self, directory: str, ruleset_name: str = "imported.rules", *, overwrite: bool = False) -> list[str]:
        """Write the ruleset and its files into ``directory`` (created if
        needed); the paths written.  An existing file is an error unless
        ``overwrite``."""
        targets = [(os.path.join(directory, ruleset_name), self.ruleset_text)]
        targets += [(os.path.join(directory, *rel.split("/")), text) for rel, text in self.files.items()]
        if not overwrite:
            for path, _text in targets:
                if os.path.exists(path):
                    raise FileExistsError(path)
        for path, text in targets:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return [path for path, _text in targets]

    def counts(self) -> dict[Status, int]:
        out = {s: 0 for s in Status}
        for line in self.report:
            out[line.status] += 1
        return out


# ---- main.cf syntax -----------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    value: str
    line: int


_PARAM = re.compile(r"^([A-Za-z0-9_.-]+)\s*=\s*(.*)$", re.DOTALL)


def parse_main_cf(text: str) -> tuple[list[Param], list[tuple[int, str]]]:
    """The settings of a main.cf in file order, and the lines that are not
    settings (line number, text).  As postconf(5) says: a logical line
    starts with non-whitespace text, a line starting with whitespace
    continues it, and empty lines and lines whose first non-whitespace
    character is ``#`` are ignored (they do not end a logical line)."""
    params: list[Param] = []
    bad: list[tuple[int, str]] = []
    current: list[str] = []
    first = 0

    def flush() -> None:
        if not current:
            return
        logical = " ".join(current)
        m = _PARAM.match(logical)
        if m:
            params.append(Param(m.group(1), m.group(2).strip(), first))
        else:
            bad.append((first, logical))
        current.clear()

    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if current:
                current.append(stripped)
            else:
                bad.append((number, stripped))
            continue
        flush()
        first = number
        current.append(stripped)
    flush()
    return params, bad


def split_list(text: str) -> list[str]:
    """A Postfix list value: elements separated by whitespace or commas; a
    ``{ ... }`` group (nested braces allowed) is one element, given without
    its outer braces when it is the whole element."""
    out: list[str] = []
    token: list[str] = []
    depth = 0
    for ch in text:
        if depth == 0 and (ch.isspace() or ch == ","):
            if token:
                out.append("".join(token))
                token = []
            continue
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        token.append(ch)
    if token:
        out.append("".join(token))
    return [t[1:-1].strip() if t.startswith("{") and t.endswith("}") else t for t in out]


# Machine-dependent values the importer cannot know: they expand to a marker.
_MARK = "\x00"
MYHOSTNAME = f"{_MARK}myhostname{_MARK}"
MYDOMAIN = f"{_MARK}mydomain{_MARK}"

# Postfix 3.7 defaults (``postconf -d``) of the parameters the translation reads.
_DEFAULTS: dict[str, str] = {
    "mydestination": "$myhostname, localhost.$mydomain, localhost",
    "virtual_alias_domains": "$virtual_alias_maps",
    "virtual_alias_maps": "$virtual_maps",
    "virtual_maps": "",
    "virtual_mailbox_domains": "$virtual_mailbox_maps",
    "virtual_mailbox_maps": "",
    "relay_recipient_maps": "",
    "local_recipient_maps": "proxy:unix:passwd.byname $alias_maps",
    "alias_maps": "hash:/etc/aliases, nis:mail.aliases",
    "inet_interfaces": "all",
    "proxy_interfaces": "",
    "config_directory": "/etc/postfix",
    "data_directory": "/var/lib/postfix",
    "queue_directory": "/var/spool/postfix",
    "compatibility_level": "0",
    "parent_domain_matches_subdomains": ("debug_peer_list,fast_flush_domains,mynetworks,permit_mx_backup_networks,"
                                         "qmqpd_authorized_clients,relay_domains,smtpd_access_maps"),
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "",
    "smtpd_recipient_restrictions": "",
    "smtpd_data_restrictions": "",
    "smtpd_end_of_data_restrictions": "",
    "smtpd_etrn_restrictions": "",
    "smtpd_restriction_classes": "",
    "smtpd_sender_login_maps": "",
    "smtpd_delay_reject": "yes",
    "smtpd_helo_required": "no",
    "smtpd_reject_unlisted_recipient": "yes",
    "smtpd_reject_unlisted_sender": "no",
    "unknown_address_reject_code": "450",
    "unknown_client_reject_code": "450",
    "unknown_hostname_reject_code": "450",
    "invalid_hostname_reject_code": "501",
    "non_fqdn_reject_code": "504",
    "relay_domains_reject_code": "554",
    "maps_rbl_reject_code": "554",
    "reject_code": "554",
    "defer_code": "450",
    "plaintext_reject_code": "450",
    "unverified_recipient_reject_code": "450",
    "unknown_local_recipient_reject_code": "550",
    "postscreen_dnsbl_sites": "",
    "postscreen_dnsbl_threshold": "1",
    "postscreen_dnsbl_action": "ignore",
    "postscreen_greet_action": "ignore",
    "postscreen_access_list": "permit_mynetworks",
    "stress": "",
}

# reply codes the translation uses, and which restrictions read them
_CODE_PARAMS = {
    "unknown_address_reject_code": "reject_unknown_sender_domain, reject_unknown_recipient_domain",
    "unknown_client_reject_code": "reject_unknown_client_hostname, reject_unknown_reverse_client_hostname",
    "unknown_hostname_reject_code": "reject_unknown_helo_hostname",
    "invalid_hostname_reject_code": "reject_invalid_helo_hostname",
    "non_fqdn_reject_code": "reject_non_fqdn_helo_hostname, reject_non_fqdn_sender, reject_non_fqdn_recipient",
    "relay_domains_reject_code": "reject_unauth_destination",
    "maps_rbl_reject_code": "reject_rbl_client and the reject_rhsbl_* restrictions",
    "reject_code": "reject",
    "defer_code": "defer",
    "plaintext_reject_code": "reject_plaintext_session",
    "unverified_recipient_reject_code": "reject_unverified_recipient",
    "unknown_local_recipient_reject_code": "reject_unlisted_recipient",
}


def _compat(level: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", level)
    return tuple(int(p) for p in parts) or (0,)


class _Params:
    """main.cf's settings with Postfix's defaults and ``$name`` expansion."""

    def __init__(self, params: list[Param]):
        self.settings: dict[str, Param] = {}
        self.overridden: list[tuple[Param, Param]] = []      # (earlier, the later one that wins)
        for p in params:
            if p.name in self.settings:
                self.overridden.append((self.settings[p.name], p))
            self.settings[p.name] = p
        self.referenced: dict[str, set[str]] = {}             # param -> the params whose values named it
        self.undefined: dict[str, set[str]] = {}              # $name of no known parameter -> where
        self.read: set[str] = set()                           # parameters the translation asked for
        self.compat = _compat(self.get_raw("compatibility_level") or "0")

    def is_set(self, name: str) -> bool:
        return name in self.settings

    def line(self, name: str) -> int:
        p = self.settings.get(name)
        return p.line if p else 0

    def get_raw(self, name: str) -> str | None:
        """The value as written (or the default), unexpanded; None if unknown."""
        p = self.settings.get(name)
        if p is not None:
            return p.value
        return self.default(name)

    def default(self, name: str) -> str | None:
        if name in _DEFAULTS:
            return _DEFAULTS[name]
        compat = getattr(self, "compat", (0,))
        if name == "relay_domains":
            return "$mydestination" if compat < (2,) else ""
        if name == "mynetworks_style":
            return "subnet" if compat < (2,) else "host"
        if name == "smtpd_relay_restrictions":
            return "" if compat < (1,) else "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"
        if name == "smtpd_relay_before_recipient_restrictions":
            return "no" if compat < (3, 6) else "yes"
        if name == "postscreen_dnsbl_allowlist_threshold":
            old = "postscreen_dnsbl_whitelist_threshold"
            return f"${old}" if self.is_set(old) else "0"
        if name == "postscreen_denylist_action":
            return "$postscreen_blacklist_action" if self.is_set("postscreen_blacklist_action") else "ignore"
        if name == "myhostname":
            return MYHOSTNAME
        if name == "mydomain":
            host = self.settings.get("myhostname")
            if host is not None and "." in host.value and "$" not in host.value:
                return host.value.split(".", 1)[1]
            return MYDOMAIN
        return None

    def get(self, name: str) -> str:
        """The expanded value ("" for an unknown parameter)."""
        self.read.add(name)
        raw = self.get_raw(name)
        return "" if raw is None else self.expand(raw, name)

    def flag(self, name: str) -> bool:
        return self.get(name).strip().lower() in ("yes", "true", "1")

    def expand(self, text: str, where: str, depth: int = 0) -> str:
        if depth > 20:
            return text
        out: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch != "$" or i + 1 >= len(text):
                out.append(ch)
                i += 1
                continue
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt in "{(":
                close = "}" if nxt == "{" else ")"
                end = _matching(text, i + 1, nxt, close)
                if end < 0:
                    out.append(text[i:])
                    break
                out.append(self._expand_braced(text[i + 2:end], where, depth))
                i = end + 1
                continue
            m = re.match(r"[A-Za-z0-9_]+", text[i + 1:])
            if not m:
                out.append(ch)
                i += 1
                continue
            out.append(self._value_of(m.group(0), where, depth))
            i += 1 + m.end(0)
        return "".join(out)

    def _value_of(self, name: str, where: str, depth: int) -> str:
        self.referenced.setdefault(name, set()).add(where)
        raw = self.get_raw(name)
        if raw is None:
            self.undefined.setdefault(name, set()).add(where)
            return ""
        return self.expand(raw, name, depth + 1)

    def _expand_braced(self, inner: str, where: str, depth: int) -> str:
        m = re.match(r"\s*([A-Za-z0-9_]+)\s*", inner)
        if not m:
            return ""
        name, rest = m.group(1), inner[m.end():]
        value = self._value_of(name, where, depth)
        if not rest:
            return value
        op, rest = rest[0], rest[1:]
        if op not in "?:":
            return value
        when_set, when_unset = _alternatives(op, rest)
        chosen = when_set if value.strip() else when_unset
        return self.expand(chosen, where, depth + 1)


def _matching(text: str, start: int, open_ch: str, close_ch: str) -> int:
    depth = 0
    for j in range(start, len(text)):
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    return -1


def _alternatives(op: str, rest: str) -> tuple[str, str]:
    """``?value``, ``:value``, ``?{a}:{b}`` -> (text if set, text if unset)."""
    s = rest.strip()
    if s.startswith("{"):
        end = _matching(s, 0, "{", "}")
        first = s[1:end] if end > 0 else s[1:]
        tail = s[end + 1:].strip() if end > 0 else ""
        second = ""
        if tail.startswith(":"):
            t = tail[1:].strip()
            if t.startswith("{"):
                e2 = _matching(t, 0, "{", "}")
                second = t[1:e2] if e2 > 0 else t[1:]
            else:
                second = t
        if op == "?":
            return first.strip(), second.strip()
        return second.strip(), first.strip()
    return (rest, "") if op == "?" else ("", rest)


# ---- restrictions -----------------------------------------------------------

# restrictions that take the next element as their argument
_ARG = frozenset("""
check_client_access check_reverse_client_hostname_access check_client_a_access check_client_mx_access
check_client_ns_access check_reverse_client_hostname_a_access check_reverse_client_hostname_mx_access
check_reverse_client_hostname_ns_access check_helo_access check_helo_a_access check_helo_mx_access
check_helo_ns_access check_sender_access check_sender_a_access check_sender_mx_access check_sender_ns_access
check_recipient_access check_recipient_a_access check_recipient_mx_access check_recipient_ns_access
check_etrn_access check_sasl_access check_ccert_access check_policy_service reject_rbl_client reject_rhsbl_client
reject_rhsbl_reverse_client reject_rhsbl_helo reject_rhsbl_sender reject_rhsbl_recipient permit_dnswl_client
permit_rhswl_client sleep
""".split())

_NOT_TRANSLATED = {
    "check_policy_service": "a policy server decides per request (postgrey, iRedAPD, policyd-spf, Dovecot's "
                            "quota-status, ...), and smtpfw calls no policy servers; smtpfw has greylisting "
                            "of its own (`greylist != \"pass\"`, docs/state.md), SPF (`spf`, docs/content.md) "
                            "and rate limits (`limit`); the server's job has to be rewritten in rules by hand",
    "defer_if_permit": "smtpfw has no verdict that waits for a later permit (Postfix's deferred reject)",
    "defer_if_reject": "smtpfw has no verdict that waits for a later reject (Postfix's deferred defer)",
    "reject_unlisted_sender": "whether a sender in a local domain exists needs Postfix's recipient tables for the "
                              "sender; smtpfw asks the MTA behind only about recipients (rcpt.verified)",
    "reject_unverified_sender": "sender address verification (a probe to the sender's domain) has no smtpfw field",
    "permit_tls_clientcerts": "smtpfw has no field for the client's TLS certificate: clients that Postfix "
                              "permits by their certificate are checked like everyone else (stricter)",
    "permit_tls_all_clientcerts": "smtpfw has no field for the client's TLS certificate: clients that Postfix "
                                  "permits by their certificate are checked like everyone else (stricter)",
    "check_ccert_access": "smtpfw has no field for the client's TLS certificate",
    "permit_inet_interfaces": "the server's own interface addresses are not known to the importer: the rule is "
                              "left out (stricter); list them in mynetworks",
    "permit_mx_backup": "permit_mx_backup (deprecated in Postfix) needs the recipient domain's MX hosts, which "
                        "smtpfw has no field for",
    "reject_maps_rbl": "reject_maps_rbl (deprecated) reads maps_rbl_domains; write reject_rbl_client instead",
    "sleep": "a pause before the next restriction has no smtpfw equivalent (`tarpit` slows every later reply)",
    "permit_naked_ip_address": "permit_naked_ip_address (deprecated) has no smtpfw equivalent",
    "reject_unknown_forward_client_hostname": "no smtpfw field says whether the client's name has an address "
                                              "at all (client.fcrdns says whether it has the client's)",
    "check_client_a_access": "smtpfw has no field for the A records of a name",
    "check_helo_a_access": "smtpfw has no field for the A records of a name",
    "check_sender_a_access": "smtpfw has no field for the A records of a name",
    "check_recipient_a_access": "smtpfw has no field for the A records of a name",
    "check_reverse_client_hostname_a_access": "smtpfw has no field for the A records of a name",
    "check_etrn_access": "smtpfw does not implement ETRN",
    "reject_unverified_sender_login": "not a Postfix restriction smtpfw knows",
}
for _kind in ("client", "reverse_client_hostname", "helo", "sender", "recipient"):
    _NOT_TRANSLATED[f"check_{_kind}_mx_access"] = ("smtpfw has no field for the MX hosts of a domain "
                                                     "(Postfix looks up the MX hosts' addresses in the table)")
    _NOT_TRANSLATED[f"check_{_kind}_ns_access"] = "smtpfw has no field for the name servers of a domain"

_OLD_NAMES = {
    "reject_unknown_client": "reject_unknown_client_hostname",
    "reject_invalid_hostname": "reject_invalid_helo_hostname",
    "reject_non_fqdn_hostname": "reject_non_fqdn_helo_hostname",
    "reject_unknown_hostname": "reject_unknown_helo_hostname",
    "check_relay_domains": "reject_unauth_destination",
}

# an access value that permits (OK, PERMIT, all digits, 2NN text), as a `matches` pattern
PERMIT_PATTERN = r"^\s*(ok|permit|[0-9]+|2[0-9][0-9](\s.*)?)\s*$"
_HOOKS = ("connect", "helo", "mail", "rcpt", "data")
_RANK = {h: i for i, h in enumerate(_HOOKS)}

_DB_TYPES = ("mysql", "pgsql", "ldap", "sqlite")
_INDEXED = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash")


@dataclass
class _Rule:
    rid: str
    action: str
    conds: list[str]
    refusal: bool          # a terminal reject/tempfail/disconnect
    monitor: bool = False
    comments: list[str] = field(default_factory=list)

    def text(self) -> str:
        head = f"[{self.rid}] " + ("monitor " if self.monitor else "") + self.action
        return head + (" if " + " and ".join(self.conds) if self.conds else "")


@dataclass
class _Table:
    name: str
    kind: str              # access, regexp, pcre, db, inline
    spec: str              # as main.cf names it
    value_problems: list[str] = field(default_factory=list)   # W305 explanations, for apply
    name_keys: bool = False     # an access map with keys that are not addresses (hostnames)
    notes: list[str] = field(default_factory=list)
    degraded: bool = False      # a stand-in, or lines left out: does less than in Postfix


@dataclass
class _Ctx:
    param: str             # the main.cf parameter (or class name)
    label: str             # rule id prefix
    block: str             # "on:rcpt", "class:NAME"
    hook: str              # the hook whose fields the rules may use
    line: int
    reply: str             # the reply prefix for a generic reject ("Client host rejected")
    guard: list[str] = field(default_factory=list)
    ended: str | None = None
    warn_next: bool = False
    in_class: bool = False


@dataclass
class _Cond:
    """A condition with its negation, both as conjunct lists."""
    positive: str          # one expression ("" = never true)
    negative: list[str]    # conjuncts that together mean "not positive"


def _par(expr: str) -> str:
    return f"({expr})" if " or " in expr else expr


def _q(text: str) -> str:
    """A rule-language string.  Only `\\"` and `\\\\` are escapes there; any other
    backslash stands for itself, so a pattern is written as it reads."""
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            out.append("\\\\" if nxt in ('"', "\\", "") else "\\")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _ident(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower()
    if not s or not (s[0].isalpha() or s[0] == "_"):
        s = "m_" + s
    return s


_CODE_OK = re.compile(r"^(\d{1,3}|\*|\[\d{1,3}(\.\.\d{1,3})?(;\d{1,3}(\.\.\d{1,3})?)*\])"
                      r"(\.(\d{1,3}|\*|\[\d{1,3}(\.\.\d{1,3})?(;\d{1,3}(\.\.\d{1,3})?)*\])){3}$")
_DOMAIN = re.compile(r"^(\.|\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$",
                     re.IGNORECASE)
# words of the rule language (and the built-in list): not usable as names
_RESERVED = frozenset("""
list map zone plugin option include on class limit counter accept reject tempfail disconnect tag log warn
add_header run score use apply count tarpit stutter not and or in within matches like listed lookup failed
tagged if monitor file regexp pcre dnsbl rhsbl codes mask true false yes no per by concurrent counting
localnames
""".split())
_GENERIC_LABELS = frozenset({"bl", "b", "list", "dnsbl", "rbl", "wl", "ix", "multi", "black", "rhsbl", "dnswl",
                             "ipv6", "ipv4", "dq"})


def _value_problem(value: str, classes: set[str], hook: str) -> str | None:
    """Why an access map value is not an action smtpfw takes in ``hook``
    (lint W305), as smtpfw.lang.access_values reads values; None if it is."""
    v = value.strip()
    if not v:
        return "has no action after its key"
    word, _, rest = v.partition(" ")
    upper = word.upper()
    if upper in ("OK", "PERMIT", "DUNNO", "REJECT", "DEFER", "WARN") or v.isdigit():
        return None
    if re.match(r"[245]\d\d(\s|$)", v):
        return None
    if upper == "PREPEND":
        return None if hook == "data" else "adds a header, which smtpfw does only in `on data:`"
    if word in classes and not rest.strip():
        return None
    return "is not an action smtpfw takes"


class _Translator:
    def __init__(self, path: str, map_dir: str | None):
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.map_dir = map_dir
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        params, bad = parse_main_cf(text)
        self.bad_lines = bad
        self.p = _Params(params)
        self.report: list[tuple[int, int, ReportLine]] = []
        self.seq = 0
        self.files: dict[str, str] = {}
        self.decls: dict[str, str] = {}           # name -> declaration text (with its comment lines)
        self.decl_order: list[str] = []
        self.names: set[str] = set()
        self.rule_ids: set[str] = set()
        self.blocks: dict[str, list[_Rule | str]] = {}
        self.handled: set[str] = set()            # parameters whose lines are written elsewhere
        self.used: dict[str, tuple[Status, str]] = {}
        self.tables: dict[str, _Table | None] = {}
        self.table_failures: dict[str, str] = {}
        self.decl_files: dict[str, str] = {}      # declared name -> the file it reads
        self.zones: dict[tuple[str, str], str] = {}   # (kind, domain) -> zone name
        self.zone_uses: dict[str, list[str | None]] = {}
        self.zone_decl: dict[str, tuple[str, str]] = {}
        self.zone_notes: list[str] = []
        self.classes: set[str] = set()
        self.options: list[str] = []
        self.needs_ptr = False
        self._mynet: _Cond | None = None
        self._local: _Cond | None = None
        self._local_param_notes: dict[str, tuple[Status, str]] = {}
        self._domain_lists: dict[tuple[str, ...], str] = {}
        self._local_by_param: dict[str, list[str]] = {}
        self._owners: _Table | None | bool = False
        self.delay = self.p.flag("smtpd_delay_reject")

    # -- report ------------------------------------------------------------

    def note(self, param: str, original: str, status: Status, note: str, line: int | None = None) -> None:
        ln = self.p.line(param) if line is None else line
        self.seq += 1
        self.report.append((ln if ln else 10**9, self.seq, ReportLine(param, original, status, note, ln)))

    def use(self, param: str, status: Status, note: str) -> None:
        """A parameter read by the translation (its report line is made at the end)."""
        if param not in self.used:
            self.used[param] = (status, note)

    # -- names and declarations --------------------------------------------

    def fresh(self, base: str) -> str:
        """A name for a list, map, zone or class that no other has."""
        if base in _RESERVED:
            base += "_table"
        name = base
        n = 2
        while name in self.names or name in _RESERVED:
            name = f"{base}_{n}"
            n += 1
        self.names.add(name)
        return name

    def declare(self, name: str, text: str, comment: str | None = None) -> None:
        lines = [f"# {c}" for c in (comment or "").split("\n") if c] + [text]
        self.decls[name] = "\n".join(lines)
        self.decl_order.append(name)

    def add_file(self, base: str, content: str) -> str:
        return add_map_file(self.files, base, content)

    # -- rules ---------------------------------------------------------------

    def rid(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.:-]+", "-", base).strip("-") or "rule"
        if not (base[0].isalpha() or base[0] == "_"):
            base = "r-" + base
        rid = base
        n = 2
        while rid in self.rule_ids:
            rid = f"{base}-{n}"
            n += 1
        self.rule_ids.add(rid)
        return rid

    def comment(self, block: str, text: str) -> None:
        self.blocks.setdefault(block, []).append(text)

    def emit(self, block: str, rid_base: str, action: str, conds: list[str], *, refusal: bool,
             monitor: bool = False) -> tuple[str | None, str | None]:
        """Add a rule; (rule id, None), or (None, why it would never fire)."""
        items = self.blocks.setdefault(block, [])
        conds = list(dict.fromkeys(conds))
        for earlier in items:
            if isinstance(earlier, _Rule) and earlier.refusal and not earlier.monitor \
                    and set(earlier.conds) <= set(conds):
                if not earlier.conds:
                    return None, f"never reached: rule [{earlier.rid}] before it refuses unconditionally"
                return None, (f"never reached: rule [{earlier.rid}] before it refuses everything this "
                              "would (the same test, with no more exceptions)")
        rule = _Rule(self.rid(rid_base), action, conds, refusal, monitor)
        items.append(rule)
        return rule.rid, None

    # -- files and tables ------------------------------------------------------

    def find(self, path: str) -> str | None:
        """Where a file main.cf names is: under map_dir (the whole path, then
        the name alone), else the path itself, else beside main.cf."""
        candidates: list[str] = []
        if self.map_dir:
            candidates += [os.path.join(self.map_dir, path.lstrip("/")),
                           os.path.join(self.map_dir, os.path.basename(path))]
        else:
            candidates.append(path if os.path.isabs(path) else os.path.join(self.base, path))
            candidates.append(os.path.join(self.base, os.path.basename(path)))
        for c in candidates:
            if os.path.isfile(c):
                return c
        return None

    def table(self, spec: str, *, applied_in: str | None = None) -> _Table | None:
        """The smtpfw map for a Postfix table (declared on first use); None
        when it cannot be (``table_failures[spec]`` says why)."""
        original = spec
        spec = spec.removeprefix("proxy:")
        if spec in self.table_failures:
            self.table_failures[original] = self.table_failures[spec]
        if spec in self.tables:
            t = self.tables[spec]
            if t is not None and applied_in is not None and t.kind in ("access", "regexp", "pcre") \
                    and not t.value_problems:
                self._scan_values(t, applied_in)
            return t
        t = self._make_table(spec)
        self.tables[spec] = t
        if spec in self.table_failures:
            self.table_failures[original] = self.table_failures[spec]
        if t is not None and applied_in is not None:
            self._scan_values(t, applied_in)
        return t

    def _scan_values(self, t: _Table, hook: str) -> None:
        rel = self.decl_files.get(t.name)
        if rel is None:
            return
        content = self.files.get(rel, "")
        problems: list[str] = []
        for line_no, value in _map_values(content, t.kind):
            why = _value_problem(value, self.classes, hook)
            if why is not None:
                problems.append(f"{rel} line {line_no}: value `{value}` {why}: lint warns (W305); "
                                "smtpfw only logs a warning where Postfix would act on it")
        t.value_problems = problems or ["-"]

    def _make_table(self, spec: str) -> _Table | None:
        notes: list[str] = []
        kind, sep, rest = spec.partition(":")
        if not sep:
            self.table_failures[spec] = "not a table (TYPE:NAME)"
            return None
        kind = kind.lower()
        if kind == "inline":
            return self._inline_table(spec, rest, notes)
        if kind in _DB_TYPES:
            return self._db_table(spec, kind, rest, notes)
        if kind in _INDEXED or kind in ("cidr", "regexp", "pcre"):
            return self._file_table(spec, kind, rest, notes)
        self.table_failures[spec] = (f"a `{kind}:` table has no smtpfw equivalent (smtpfw reads files, inline "
                                     "tables and sqlite, pgsql, mysql and ldap tables)")
        return None

    def _file_table(self, spec: str, kind: str, path: str, notes: list[str]) -> _Table | None:
        fmt = {"regexp": "regexp", "pcre": "pcre"}.get(kind, "access")
        base = os.path.basename(path) or "table"
        name = self.fresh(_ident(base.split(".")[0] if kind in ("cidr", "regexp", "pcre") else base))
        found = self.find(path)
        if found is None:
            content = (f"# Stand-in for {path} ({spec}), which the importer did not find: no entries.\n"
                       f"# Copy the real table here (for {kind}: the postmap source, not the .db).\n"
                       if kind in _INDEXED else
                       f"# Stand-in for {path} ({spec}), which the importer did not find: no entries.\n"
                       "# Copy the real table here.\n")
            notes.append(f"{path} was not found: an empty stand-in was written (copy the real table there)")
            rel = self.add_file(base, content)
        else:
            content, dropped = self._checked_copy(found, fmt, base)
            rel = self.add_file(base, content)
            for what in dropped:
                notes.append(what.replace("@FILE@", rel))
            if kind in _INDEXED:
                notes.append(f"read from the postmap source {path}")
        self.decl_files[name] = rel
        decl = {"access": "file", "regexp": "regexp", "pcre": "pcre"}[fmt]
        self.declare(name, f"map {name} = {decl} {_q(rel)}", f"{spec}")
        t = _Table(name, fmt, spec, notes=notes,
                   degraded=any("commented out" in n or "stand-in" in n for n in notes))
        if fmt == "access":
            t.name_keys = any(_is_name_key(k) for k, _v in _access_pairs(self.files[rel]))
        return t

    def _checked_copy(self, found: str, fmt: str, base: str) -> tuple[str, list[str]]:
        """The file's text with the lines smtpfw's loader refuses commented
        out (E304, E401, E404; W303 duplicates), and what was done."""
        with open(found, encoding="utf-8", errors="replace") as f:
            text = f.read()
        _amap, diags = load_map(found, base, fmt)
        bad: dict[int, str] = {}
        for d in diags:
            if d.span is None or d.level.value == "hint":
                continue
            if d.level.value == "warning" and d.code != Code.W303_LIST_ENTRY_DUPLICATE:
                continue
            bad.setdefault(d.span.line, f"{d.code} {d.message}")
        if not bad:
            return text, []
        lines = text.split("\n")
        done: list[str] = []
        for number in sorted(bad):
            i = number - 1
            if i >= len(lines):
                continue
            original = lines[i]
            lines[i] = f"# smtpfw import: left out ({bad[number]}): {original}"
            j = i + 1
            while j < len(lines) and lines[j][:1].isspace() and lines[j].strip():
                lines[j] = "#   " + lines[j]
                j += 1
            done.append(f"@FILE@ line {number} `{original.strip()}` is commented out: {bad[number]}")
        return "\n".join(lines), done

    def _inline_table(self, spec: str, body: str, notes: list[str]) -> _Table | None:
        inner = body.strip()
        if inner.startswith("{") and inner.endswith("}"):
            inner = inner[1:-1]
        pairs: list[tuple[str, str]] = []
        for element in split_list(inner):
            key, eq, value = element.partition("=")
            if not eq:
                self.table_failures[spec] = f"inline table element `{element}` is not key=value"
                return None
            pairs.append((key.strip(), value.strip()))
        name = self.fresh("inline")
        body_text = ", ".join(f"{_q(k)}: {_q(v)}" for k, v in pairs)
        self.declare(name, f"map {name} = {{{body_text}}}", spec)
        t = _Table(name, "inline", spec, notes=notes)
        t.name_keys = any(_is_name_key(k) for k, _v in pairs)
        problems = [f"inline map {name} key `{k}`: value `{v}` is not an action smtpfw takes: lint warns (W305)"
                    for k, v in pairs if _value_problem(v, self.classes, "rcpt") is not None]
        t.value_problems = problems or ["-"]
        return t

    def _db_table(self, spec: str, kind: str, path: str, notes: list[str]) -> _Table | None:
        found = self.find(path)
        if found is None:
            self.table_failures[spec] = (f"its settings file {path} was not found (and a stand-in cannot be "
                                         "written: it holds the database's address and credentials)")
            return None
        base = os.path.basename(path)
        name = self.fresh(_ident(base.rsplit(".", 1)[0]))
        table, diags = load_table(name, found, base, kind)
        errors = [d for d in diags if d.level.value == "error"]
        if table is None or errors:
            why = "; ".join(f"{d.code} {d.message}" for d in errors) or "smtpfw cannot read it"
            self.table_failures[spec] = f"smtpfw refuses its settings file {path}: {why}"
            self.names.discard(name)
            return None
        with open(found, encoding="utf-8", errors="replace") as f:
            content = f.read()
        rel = self.add_file(base, content)
        self.decl_files[name] = rel
        for d in diags:
            if d.level.value == "warning":
                notes.append(f"{rel}: lint warns ({d.code}): {d.message}")
        notes.append(f"the settings file is copied to {rel} (with its credentials: keep it as private as "
                     "/etc/postfix); smtpfw looks the value up once, as it is, where Postfix also tries "
                     "parent domains and partial addresses")
        self.declare(name, f"map {name} = {kind} {_q(rel)}", spec)
        t = _Table(name, "db", spec, notes=notes)
        t.value_problems = ["-"]
        return t

    # -- networks and domains -----------------------------------------------

    def mynetworks(self) -> _Cond:
        if self._mynet is not None:
            return self._mynet
        atoms: list[str] = []
        entries: list[str] = []
        notes: list[str] = []
        status = Status.TRANSLATED
        if self.p.is_set("mynetworks"):
            raw = self.p.get("mynetworks")
            for token in split_list(raw):
                if token.startswith("!"):
                    notes.append(f"`{token}` (an exception) is left out: smtpfw lists have no exceptions")
                    status = Status.APPROXIMATED
                    continue
                if ":" in token and not token.startswith("[") and re.match(r"^[a-z]+:", token) \
                        and not _is_ip_or_net(token):
                    t = self.table(token)
                    if t is None:
                        notes.append(f"`{token}` is left out: {self.table_failures.get(token, '')}")
                        status = Status.APPROXIMATED
                    else:
                        atoms.append(f"client.ip in {t.name}")
                        notes += t.notes
                    continue
                if token.startswith("/"):
                    found = self.find(token)
                    listed: list[str] = []
                    if found is not None:
                        with open(found, encoding="utf-8", errors="replace") as f:
                            for element in split_list(re.sub(r"#[^\n]*", "", f.read())):
                                net, why = _network(element)
                                if net is None:
                                    notes.append(f"{token}: `{element}` is left out: {why}")
                                    status = Status.APPROXIMATED
                                else:
                                    listed.append(net)
                    else:
                        notes.append(f"{token} was not found: an empty stand-in was written")
                        status = Status.APPROXIMATED
                    name = self.fresh(_ident(os.path.basename(token)))
                    rel = self.add_file(os.path.basename(token),
                                        f"# from {token} (mynetworks), one network a line\n"
                                        + "".join(f"{n}\n" for n in listed))
                    self.decl_files[name] = rel
                    self.declare(name, f"list {name} = file {_q(rel)}", f"mynetworks: {token}")
                    atoms.append(f"client.ip in {name}")
                    continue
                net, why = _network(token)
                if net is None:
                    notes.append(f"`{token}` is left out: {why}")
                    status = Status.APPROXIMATED
                    continue
                if why:
                    notes.append(why)
                entries.append(net)
            what = "list mynetworks"
        else:
            style = self.p.get("mynetworks_style").strip().lower() or "host"
            if style == "host":
                entries = ["127.0.0.1", "::1"]
                notes.append("mynetworks is not set and mynetworks_style = host: Postfix trusts the server's own "
                             "addresses, which the importer cannot know; written as 127.0.0.1 and ::1 (add the "
                             "server's other addresses)")
            else:
                entries = ["127.0.0.0/8", "::1"]
                notes.append(f"mynetworks is not set and mynetworks_style = {style}: Postfix trusts the networks "
                             "of the server's interfaces, which the importer cannot know; written as "
                             "127.0.0.0/8 and ::1 (add the server's LAN networks)")
            status = Status.APPROXIMATED
            what = "list mynetworks (from mynetworks_style)"
            self.use("mynetworks_style", Status.APPROXIMATED,
                     f"mynetworks is not set: the {style} networks are written as {', '.join(entries)}")
        if entries:
            name = self.fresh("mynetworks")
            items = ", ".join(_list_item(e) for e in entries)
            src = (f"mynetworks = {_one_line(self.p.get_raw('mynetworks') or '')}" if self.p.is_set("mynetworks")
                   else f"mynetworks is not set; mynetworks_style = {self.p.get('mynetworks_style')}")
            self.declare(name, f"list {name} = [{items}]", src)
            atoms.insert(0, f"client.ip in {name}")
        if not atoms:
            notes.append("no network is left: permit_mynetworks permits nobody")
        self._mynet = _Cond(" or ".join(atoms), [_negate_in(a) for a in atoms])
        self.use("mynetworks", status, f"{what}: " + (", ".join(entries) if entries else "(empty)")
                 + ("; " + "; ".join(notes) if notes else ""))
        return self._mynet

    def local_domains(self) -> _Cond:
        """The recipient domains reject_unauth_destination lets through: local
        ($mydestination, $virtual_alias_domains, $virtual_mailbox_domains) and
        $relay_domains."""
        if self._local is not None:
            return self._local
        atoms: list[str] = []
        parent = {x.strip() for x in split_list(self.p.get("parent_domain_matches_subdomains"))}
        sources = [("mydestination", "in"), ("virtual_alias_domains", "in"), ("virtual_mailbox_domains", "in"),
                   ("relay_domains", "within" if "relay_domains" in parent else "in")]
        for param, op in sources:
            value = self.p.get(param)
            notes: list[str] = []
            status = Status.TRANSLATED
            literal: list[str] = []
            machine = False
            param_atoms: list[str] = []
            for token in split_list(value):
                if token == MYHOSTNAME:
                    machine = True
                    continue
                if _MARK in token:
                    shown = token.replace(MYDOMAIN, "$mydomain").replace(MYHOSTNAME, "$myhostname")
                    notes.append(f"`{shown}` is left out: it depends on this machine's name, which the importer "
                                 "cannot know (set myhostname/mydomain in main.cf)")
                    status = Status.APPROXIMATED
                    continue
                if token.startswith("/"):
                    before = len(notes)
                    param_atoms.append(self._domain_file(param, token, op, notes))
                    if len(notes) > before:
                        status = Status.APPROXIMATED
                    continue
                if re.match(r"^[a-z0-9]+:", token, re.IGNORECASE):
                    t = self.table(token)
                    if t is None:
                        notes.append(f"`{token}` is left out: {self.table_failures.get(token, '')}; mail for "
                                     "its domains is refused as relaying (stricter)")
                        status = Status.APPROXIMATED
                    else:
                        param_atoms.append(f"rcpt.domain in {t.name}")
                        notes += [n for n in t.notes if n not in notes]
                        if t.kind == "db" or t.degraded:
                            status = Status.APPROXIMATED
                    continue
                if _DOMAIN.match(token):
                    literal.append(token.lower().rstrip("."))
                else:
                    notes.append(f"`{token}` is left out: not a domain")
                    status = Status.APPROXIMATED
            if machine:
                param_atoms.insert(0, f"rcpt.domain {op} localnames")
                notes.insert(0, "$myhostname is this machine's name (not set in main.cf): smtpfw's built-in "
                                "list `localnames` (localhost and this machine's names) stands for it")
            if literal:
                items = tuple(dict.fromkeys(literal))
                name = self._domain_lists.get(items, "")
                if not name:
                    name = self.fresh(param)
                    self._domain_lists[items] = name
                    self.declare(name, f"list {name} = [{', '.join(_q(d) for d in items)}]",
                                 f"{param} = {_one_line(self.p.get_raw(param) or '')}")
                param_atoms.insert(1 if machine else 0, f"rcpt.domain {op} {name}")
            self._local_by_param[param] = list(param_atoms)
            for a in param_atoms:
                if a not in atoms:
                    atoms.append(a)
            if op == "within" and param_atoms:
                notes.append("a domain here also covers its subdomains (parent_domain_matches_subdomains)")
            summary = ", ".join(param_atoms) if param_atoms else "no domains"
            self._local_param_notes[param] = (status, f"recipient domains for the relay test: {summary}"
                                              + ("; " + "; ".join(notes) if notes else ""))
        atoms = _drop_covered(atoms)
        self._local = _Cond(" or ".join(atoms), [_negate_in(a) for a in atoms])
        for param, (status, note) in self._local_param_notes.items():
            self.use(param, status, note)
        return self._local

    def _domain_file(self, param: str, path: str, op: str, notes: list[str]) -> str:
        """A /file/name of domains as a list file (one a line); its test."""
        found = self.find(path)
        domains: list[str] = []
        if found is None:
            notes.append(f"{path} was not found: an empty stand-in was written (mail for its domains is refused "
                         "as relaying until the real file is copied there)")
        else:
            with open(found, encoding="utf-8", errors="replace") as f:
                text = f.read()
            for element in split_list("\n".join(line.split("#", 1)[0] for line in text.split("\n"))):
                if _DOMAIN.match(element) and ":" not in element:
                    domains.append(element.lower().rstrip("."))
                else:
                    notes.append(f"{path}: `{element}` is left out (not a domain)")
        base = os.path.basename(path)
        rel = self.add_file(base, f"# from {path} ({param}), one domain a line\n"
                            + "".join(f"{d}\n" for d in dict.fromkeys(domains)))
        name = self.fresh(_ident(base))
        self.decl_files[name] = rel
        self.declare(name, f"list {name} = file {_q(rel)}", f"{param}: {path}")
        return f"rcpt.domain {op} {name}"

    # -- zones ------------------------------------------------------------------

    def zone(self, kind: str, domain: str, codes: str | None) -> tuple[str, str]:
        """(zone name, " codes [...]" or "") for a DNS list lookup."""
        key = (kind, domain.lower())
        name = self.zones.get(key)
        if name is None:
            name = self.fresh(_zone_name(domain))
            self.zones[key] = name
            self.zone_decl[name] = (kind, domain.lower())
            known = public_zone(domain)
            want = "domain" if kind == "rhsbl" else "ip"
            if known is not None and known[1].lists != want:
                what = "domains" if known[1].lists == "domain" else "IP addresses"
                self.zone_notes.append(f"{domain} is a list of {what} used as an {kind}: lint warns (W706); "
                                       "no lookup will match")
        self.zone_uses.setdefault(name, []).append(codes)
        return name, (f" codes [{codes}]" if codes else "")

    def zone_declarations(self) -> None:
        for name, (kind, domain) in self.zone_decl.items():
            uses = self.zone_uses.get(name, [])
            codes = ""
            comment = None
            if any(u is None for u in uses):
                known = public_zone(domain)
                if known is not None:
                    codes = f" codes [{known[1].codes}]"
                    comment = (f"{domain}: Postfix counts any answer; smtpfw uses the list's documented codes "
                               f"({known[1].meaning})")
            self.declare(name, f"zone {name} = {kind} {_q(domain)}{codes}", comment)

    # -- sender login maps ---------------------------------------------------------

    def owners(self) -> _Table | None:
        if self._owners is False:
            spec_value = self.p.get("smtpd_sender_login_maps")
            specs = split_list(spec_value)
            t: _Table | None = None
            if len(specs) == 1:
                t = self.table(specs[0])
                why = self.table_failures.get(specs[0], "")
            else:
                why = "it names no table" if not specs else "it names several tables (smtpfw would need one map)"
            if t is None:
                self.use("smtpd_sender_login_maps", Status.NOT_TRANSLATED,
                         f"cannot be read: {why}; the login-mismatch restrictions are not translated")
            else:
                self.use("smtpd_sender_login_maps", Status.TRANSLATED if t.kind != "db" else Status.APPROXIMATED,
                         f"map {t.name}: the owners (SASL logins) of each sender address"
                         + ("; " + "; ".join(t.notes) if t.notes else ""))
            self._owners = t
        return self._owners if isinstance(self._owners, _Table) else None

    # -- restriction lists -------------------------------------------------------

    def restrictions(self, value: str) -> list[tuple[str, str | None, str]]:
        """(name, argument, original text) of each restriction in a list."""
        tokens = split_list(value)
        out: list[tuple[str, str | None, str]] = []
        i = 0
        while i < len(tokens):
            name = tokens[i]
            lname = name.lower()
            if lname in _ARG and i + 1 < len(tokens):
                arg = tokens[i + 1]
                shown = arg if re.fullmatch(r"\S+", arg) or re.match(r"[a-z]+:", arg) else "{ " + arg + " }"
                out.append((lname, arg, f"{name} {shown}"))
                i += 2
                continue
            out.append((lname, None, name))
            i += 1
        return out

    def run_list(self, ctx: _Ctx, value: str, param_for_report: str) -> None:
        items = self.restrictions(value)
        if not items:
            return
        for name, arg, original in items:
            if ctx.ended is not None:
                self.note(param_for_report, original, Status.TRANSLATED,
                          f"no rule needed: {ctx.ended} before it ends the list, so Postfix never evaluates it")
                continue
            self.comment(ctx.block, f"#   {original}")
            status, note = _no_rule_needed(*self.restriction(ctx, name, arg))
            if status in (Status.NOT_TRANSLATED, Status.NOT_UNDERSTOOD):
                self.comment(ctx.block, "#     (not translated: see the report)")
            elif note.startswith("no rule needed"):
                self.comment(ctx.block, "#     (no rule needed: see the report)")
            self.note(param_for_report, original, status, note)

    def restriction(self, ctx: _Ctx, name: str, arg: str | None) -> tuple[Status, str]:
        monitor = ctx.warn_next
        ctx.warn_next = False
        if name in _OLD_NAMES:
            new = _OLD_NAMES[name]
            status, note = self.restriction(ctx, new, arg)
            return status, f"(the old name of {new}) {note}"
        hook = ctx.hook
        lab = f"{ctx.label}-{name}"
        g = ctx.guard

        def need(min_hook: str, what: str) -> tuple[Status, str] | None:
            if _RANK[hook] < _RANK[min_hook]:
                return (Status.NOT_TRANSLATED,
                        (f"has no effect here: {what} is not known yet when Postfix evaluates {ctx.param} "
                        "(smtpd_delay_reject = no), so Postfix skips it too"))
            return None

        def refuse(action: str, conds: list[str], suffix: str = "") -> tuple[str | None, str | None]:
            rid, why = self.emit(ctx.block, lab + suffix, action, g + conds, refusal=True, monitor=monitor)
            return rid, why

        def done(rids: list[tuple[str | None, str | None]], what: str, status: Status = Status.TRANSLATED
                 ) -> tuple[Status, str]:
            made = [r for r, _w in rids if r]
            if not made:
                return Status.NOT_TRANSLATED, rids[0][1] or "never reached"
            extra = "" if not monitor else " (monitor: warn_if_reject before it)"
            if len(made) < len(rids):
                extra += " (its other part needs no rule: " + "; ".join(w for r, w in rids if not r and w) + ")"
            return status, f"rule{'s' if len(made) > 1 else ''} " + ", ".join(f"[{r}]" for r in made) \
                + f"{extra}: {what}"

        # ---- permits: guards for the rest of the list ----
        if name == "permit":
            ctx.ended = "`permit`"
            if ctx.in_class:
                return Status.APPROXIMATED, ("ends the class without a decision: smtpfw classes do not accept, so "
                                             "the rules after the map lookup or `use` that ran the class still run, "
                                             "where Postfix's permit also ends the list that named the class")
            return Status.TRANSLATED, ("the rest of this list is skipped (the end of the hook accepts, as the "
                                       "end of Postfix's lists does)" if not g else
                                       "ends the list: the rules after it in this list are not made")
        if name == "permit_mynetworks":
            c = self.mynetworks()
            if not c.positive:
                return Status.APPROXIMATED, "mynetworks holds nothing smtpfw can test: permits nobody"
            ctx.guard = g + c.negative
            return Status.TRANSLATED, f"the later rules of this list apply only if not: {c.positive}"
        if name == "permit_sasl_authenticated":
            if _RANK[hook] < _RANK["mail"]:
                return (Status.NOT_TRANSLATED, ("has no effect here: nobody has authenticated yet when Postfix "
                        f"evaluates {ctx.param} (smtpd_delay_reject = no)"))
            ctx.guard = g + ["not auth"]
            return Status.TRANSLATED, "the later rules of this list apply only to clients that did not authenticate"
        if name == "permit_auth_destination":
            r = need("rcpt", "the recipient")
            if r:
                return r
            c = self.local_domains()
            if not c.positive:
                return Status.APPROXIMATED, "no local or relay domain is known: permits nothing"
            ctx.guard = g + c.negative
            return Status.APPROXIMATED, ("the later rules of this list apply only if not: " + c.positive
                                         + " (Postfix also requires no sender-specified routing)")
        if name in ("permit_dnswl_client", "permit_rhswl_client"):
            if not arg:
                return Status.NOT_UNDERSTOOD, "needs a DNS list argument"
            domain, codes = _zone_arg(arg)
            if codes is None:
                return Status.NOT_TRANSLATED, f"the return-code filter of `{arg}` is not one smtpfw can write"
            if name == "permit_dnswl_client":
                z, cs = self.zone("dnsbl", domain, codes or None)
                ctx.guard = g + [f"client.ip not listed in {z}{cs}"]
            else:
                z, cs = self.zone("rhsbl", domain, codes or None)
                self.needs_ptr = True
                ctx.guard = g + [f"(not client.fcrdns or client.rdns not listed in {z}{cs})"]
            return Status.TRANSLATED, f"the later rules of this list apply only to clients not listed in {domain}"
        if name in _NOT_TRANSLATED:
            return Status.NOT_TRANSLATED, _NOT_TRANSLATED[name]
        if name == "warn_if_reject":
            ctx.warn_next = True
            return Status.TRANSLATED, "the next restriction becomes a `monitor` rule (logged, never refused)"

        # ---- plain rejects ----
        if name in ("reject", "defer"):
            code = self.p.get("reject_code" if name == "reject" else "defer_code").strip()
            action = _reply_action(code, "5.7.1" if name == "reject" else "4.7.1",
                                   f"{ctx.reply}: Access denied")
            rid, why = refuse(action, [])
            if rid and not g and not monitor:
                ctx.ended = f"`{name}`"
            return done([(rid, why)], f"{name}s everything that reaches it")
        if name in ("reject_unauth_destination", "defer_unauth_destination"):
            r = need("rcpt", "the recipient")
            if r:
                return r
            c = self.local_domains()
            relay = [_par(" and ".join(c.negative) + ' or rcpt.local matches "[%!@]"')] if c.negative else []
            if name == "reject_unauth_destination":
                action = _reply_action(self.p.get("relay_domains_reject_code").strip(), "5.7.1",
                                       "<{rcpt}>: Relay access denied")
            else:
                action = 'tempfail 454 4.7.1 "<{rcpt}>: Relay access denied"'
            rid, why = refuse(action, relay)
            self.use("inet_interfaces", Status.APPROXIMATED,
                     "read by Postfix's relay test: mail to this server's address literals (user@[192.0.2.1]) "
                     "is local there, refused as relaying here; smtpfw listens where its config's `listen:` says")
            return done([(rid, why)], ("recipients outside the local and relay domains"
                                       + ("" if c.negative else " (none is known: every recipient)")
                                       + ", and addresses with sender-specified routing (%, ! or @ in the local "
                                       "part)"),
                        Status.TRANSLATED if c.negative else Status.APPROXIMATED)
        if name == "reject_unauth_pipelining":
            rid, why = refuse('reject 554 5.5.0 "Error: improper use of SMTP command pipelining"',
                              ["session.unauth_pipelining"])
            extra = "" if hook == "data" else (" (Postfix checks it when this list is evaluated; "
                                               "session.unauth_pipelining remembers it from any earlier command)")
            return done([(rid, why)], "a client that sent commands ahead (RFC 2920)" + extra)
        if name == "reject_plaintext_session":
            r = need("helo", "whether the session is encrypted")
            if r:
                return r
            code = self.p.get("plaintext_reject_code").strip()
            rid, why = refuse(_reply_action(code, "5.7.1" if code.startswith("5") else "4.7.1",
                                            "Session encryption is required"), ["not tls"])
            return done([(rid, why)], "sessions without STARTTLS")
        if name == "reject_multi_recipient_bounce":
            r = need("rcpt" if ctx.param != "smtpd_data_restrictions" else "data", "the recipient count")
            if r:
                return r
            rid, why = refuse('reject 550 5.5.3 "<>: Multi-recipient bounce"', ["sender.null", "rcpt.count >= 1"])
            return done([(rid, why)], "a bounce (MAIL FROM:<>) to more than one recipient")

        # ---- HELO ----
        if name == "reject_invalid_helo_hostname":
            r = need("helo", "the HELO name")
            if r:
                return r
            code = self.p.get("invalid_hostname_reject_code").strip()
            rid, why = refuse(_reply_action(code, "5.5.2", "<{helo}>: Helo command rejected: Invalid name"),
                              ["not helo.valid"])
            return done([(rid, why)], "a HELO name that is not a valid host name or address literal")
        if name == "reject_non_fqdn_helo_hostname":
            r = need("helo", "the HELO name")
            if r:
                return r
            code = self.p.get("non_fqdn_reject_code").strip()
            a = refuse(_reply_action(code, "5.5.2", "<{helo}>: Helo command rejected: invalid ip address"),
                       ['helo matches "^\\["', "not helo.valid"], "-literal")
            b = refuse(_reply_action(code, "5.5.2", "<{helo}>: Helo command rejected: need fully-qualified hostname"),
                       ['not helo matches "^\\["', "not helo.fqdn"])
            return done([a, b], "a HELO name that is not fully qualified (an address literal is checked for syntax)")
        if name == "reject_unknown_helo_hostname":
            r = need("helo", "the HELO name")
            if r:
                return r
            code = self.p.get("unknown_hostname_reject_code").strip()
            text = "<{helo}>: Helo command rejected: Host not found"
            if code.startswith("4"):
                a = refuse(_reply_action(code, "4.7.1", text),
                           ['not helo matches "^\\["', '(helo.resolvable = "no" or helo.resolvable = "failed")'])
                rules = [a]
            else:
                rules = [refuse(_reply_action(code, "5.7.1", text), ['not helo matches "^\\["',
                                                                     'helo.resolvable = "no"']),
                         refuse(f'tempfail 450 4.7.1 {_q(text)}', ['not helo matches "^\\["',
                                                                  'helo.resolvable = "failed"'], "-dns")]
            return done(rules, "a HELO name with no A, AAAA or MX record (450 on a DNS failure too)")

        # ---- sender ----
        if name == "reject_non_fqdn_sender":
            r = need("mail", "the sender")
            if r:
                return r
            code = self.p.get("non_fqdn_reject_code").strip()
            rid, why = refuse(_reply_action(code, "5.5.2", "<{sender}>: Sender address rejected: need "
                                            "fully-qualified address"), ["not sender.null",
                                                                         'not sender.domain matches "\\."'])
            return done([(rid, why)], "a sender whose domain is not fully qualified (not the null sender)")
        if name == "reject_unknown_sender_domain":
            r = need("mail", "the sender")
            if r:
                return r
            return done(self._unknown_domain(ctx, lab, "sender", monitor),
                        "a sender domain with no MX, A or AAAA record (a null MX: 550 5.7.27; a DNS failure: "
                        "450), not the null sender", Status.APPROXIMATED)
        if name in ("reject_authenticated_sender_login_mismatch", "reject_sender_login_mismatch",
                    "reject_known_sender_login_mismatch", "reject_unauthenticated_sender_login_mismatch"):
            r = need("mail", "the sender and the login")
            if r:
                return r
            t = self.owners()
            if t is None:
                return Status.NOT_TRANSLATED, "smtpd_sender_login_maps cannot be read (see its report line)"
            rules = []
            if name != "reject_unauthenticated_sender_login_mismatch":
                conds = ["auth", "not sender.null"]
                if name == "reject_known_sender_login_mismatch":
                    conds.append(f'{t.name}(sender) != ""')
                conds.append(f"auth.user not in {t.name}(sender)")
                rules.append(refuse('reject 553 5.7.1 "<{sender}>: Sender address rejected: not owned by user '
                                    '{auth.user}"', conds))
            if name in ("reject_sender_login_mismatch", "reject_known_sender_login_mismatch",
                        "reject_unauthenticated_sender_login_mismatch"):
                rules.append(refuse('reject 553 5.7.1 "<{sender}>: Sender address rejected: not logged in"',
                                    ["not auth", "not sender.null", f'{t.name}(sender) != ""'], "-unauth"))
            status = Status.APPROXIMATED if t.kind == "db" else Status.TRANSLATED
            return done(rules, f"the SASL login must be one of the sender's owners in map {t.name}"
                        + (" (looked up once, as the whole address: no @domain or domain fallback)"
                           if t.kind == "db" else ""), status)

        # ---- recipient ----
        if name == "reject_non_fqdn_recipient":
            r = need("rcpt", "the recipient")
            if r:
                return r
            code = self.p.get("non_fqdn_reject_code").strip()
            rid, why = refuse(_reply_action(code, "5.5.2", "<{rcpt}>: Recipient address rejected: need "
                                            "fully-qualified address"), ['not rcpt.domain matches "\\."'])
            return done([(rid, why)], "a recipient whose domain is not fully qualified")
        if name == "reject_unknown_recipient_domain":
            r = need("rcpt", "the recipient")
            if r:
                return r
            return done(self._unknown_domain(ctx, lab, "rcpt", monitor),
                        "a recipient domain with no MX, A or AAAA record (a null MX: 550 5.7.27; a DNS failure: "
                        "450)", Status.APPROXIMATED)
        if name == "reject_unlisted_recipient":
            r = need("rcpt", "the recipient")
            if r:
                return r
            return self._unlisted(ctx, lab, monitor)
        if name == "reject_unverified_recipient":
            r = need("rcpt", "the recipient")
            if r:
                return r
            code = self.p.get("unverified_recipient_reject_code").strip()
            rid, why = refuse(_reply_action(code, "5.1.1" if code.startswith("5") else "4.1.1",
                                            "<{rcpt}>: Recipient address rejected: undeliverable address"),
                              ['rcpt.verified = "no"'])
            return done([(rid, why)], "a recipient the MTA behind refuses (a callout: forward mode only; "
                        "Postfix probes the final destination instead)", Status.APPROXIMATED)

        # ---- client ----
        if name == "reject_unknown_client_hostname":
            code = self.p.get("unknown_client_reject_code").strip()
            rid, why = refuse(_reply_action(code, "4.7.25" if code.startswith("4") else "5.7.25",
                                            "Client host rejected: cannot find your hostname, [{client.ip}]"),
                              ["not client.fcrdns"])
            return done([(rid, why)], "a client whose address has no name that resolves back to it "
                        "(450 on a DNS failure too)")
        if name == "reject_unknown_reverse_client_hostname":
            code = self.p.get("unknown_client_reject_code").strip()
            rid, why = refuse(_reply_action(code, "4.7.25" if code.startswith("4") else "5.7.25",
                                            "Client host rejected: cannot find your reverse hostname, "
                                            "[{client.ip}]"), ['client.ptr != "found"'])
            return done([(rid, why)], "a client address without a PTR record (450 on a DNS failure too)")

        # ---- DNS lists ----
        if name in ("reject_rbl_client", "reject_rhsbl_client", "reject_rhsbl_reverse_client", "reject_rhsbl_helo",
                    "reject_rhsbl_sender", "reject_rhsbl_recipient"):
            return self._dns_list(ctx, name, arg, lab, monitor)

        # ---- tables ----
        if name in ("check_client_access", "check_reverse_client_hostname_access", "check_helo_access",
                    "check_sender_access", "check_recipient_access", "check_sasl_access"):
            return self._access(ctx, name, arg, lab, monitor)

        # ---- restriction classes ----
        if name in self.classes:
            rid, why = self.emit(ctx.block, lab, f"use {name}", g, refusal=False, monitor=monitor)
            if rid is None:
                return Status.NOT_TRANSLATED, why or ""
            return Status.APPROXIMATED, (f"rule [{rid}]: runs class {name}; a `permit` inside the class does not "
                                         "end this list (smtpfw classes do not accept), so the rules after it "
                                         "still run")
        if name.startswith(("check_", "reject_", "permit_", "defer_")):
            return Status.NOT_UNDERSTOOD, "a restriction the importer does not know"
        return Status.NOT_UNDERSTOOD, ("neither a restriction the importer knows nor a restriction class "
                                       "(smtpd_restriction_classes)")

    def _unknown_domain(self, ctx: _Ctx, lab: str, who: str, monitor: bool) -> list[tuple[str | None, str | None]]:
        field_ = "sender.resolvable" if who == "sender" else "rcpt.resolvable"
        addr = "{sender}" if who == "sender" else "{rcpt}"
        role = "Sender" if who == "sender" else "Recipient"
        dom = "{sender.domain}" if who == "sender" else "{rcpt.domain}"
        base = ["not sender.null"] if who == "sender" else []
        code = self.p.get("unknown_address_reject_code").strip()
        enh = "8" if who == "sender" else "2"
        g = ctx.guard
        out = [self.emit(ctx.block, lab + "-nullmx",
                         f'reject 550 5.7.27 "<{addr}>: {role} address rejected: Domain {dom} does not accept '
                         f'mail (nullMX)"', g + base + [f'{field_} = "nullmx"'], refusal=True, monitor=monitor)]
        text = f"<{addr}>: {role} address rejected: Domain not found"
        if code.startswith("4"):
            out.append(self.emit(ctx.block, lab, _reply_action(code, f"4.1.{enh}", text),
                                 g + base + [f'({field_} = "no" or {field_} = "failed")'], refusal=True,
                                 monitor=monitor))
        else:
            out.append(self.emit(ctx.block, lab, _reply_action(code, f"5.1.{enh}", text),
                                 g + base + [f'{field_} = "no"'], refusal=True, monitor=monitor))
            out.append(self.emit(ctx.block, lab + "-dns", f"tempfail 450 4.1.{enh} {_q(text)}",
                                 g + base + [f'{field_} = "failed"'], refusal=True, monitor=monitor))
        return out

    def _unlisted(self, ctx: _Ctx, lab: str, monitor: bool, implicit: bool = False) -> tuple[Status, str]:
        self.local_domains()
        params = ["mydestination", "virtual_alias_domains", "virtual_mailbox_domains"]
        if split_list(self.p.get("relay_recipient_maps")):
            params.append("relay_domains")
        atoms = _drop_covered(list(dict.fromkeys(a for p_ in params for a in self._local_by_param.get(p_, []))))
        c = _Cond(" or ".join(atoms), [_negate_in(a) for a in atoms])
        if not c.positive:
            return Status.NOT_TRANSLATED, "no local domain is known, so no recipient is checked"
        code = self.p.get("unknown_local_recipient_reject_code").strip()
        action = _reply_action(code, "5.1.1", "<{rcpt}>: Recipient address rejected: User unknown")
        rid, why = self.emit(ctx.block, lab, action, ctx.guard + ['rcpt.verified = "no"', _par(c.positive)],
                             refusal=True, monitor=monitor)
        if rid is None:
            return Status.NOT_TRANSLATED, why or ""
        return Status.APPROXIMATED, (f"rule [{rid}]: a recipient in a local domain (relay domains too when "
                                     "relay_recipient_maps is set) that the MTA behind "
                                     "does not take (rcpt.verified: a callout to the MTA behind, which answers "
                                     "from its own recipient tables; forward mode only, and no refusal when it "
                                     "cannot answer)")

    def _dns_list(self, ctx: _Ctx, name: str, arg: str | None, lab: str, monitor: bool) -> tuple[Status, str]:
        if not arg:
            return Status.NOT_UNDERSTOOD, "needs a DNS list argument"
        domain, codes = _zone_arg(arg)
        if codes is None:
            return Status.NOT_TRANSLATED, f"the return-code filter of `{arg}` is not one smtpfw can write"
        code = self.p.get("maps_rbl_reject_code").strip()
        spec = {
            "reject_rbl_client": ("dnsbl", "client.ip", "Client host", "{client.ip}", "connect", []),
            "reject_rhsbl_client": ("rhsbl", "client.rdns", "Client host", "{client.rdns}", "connect",
                                    ["client.fcrdns"]),
            "reject_rhsbl_reverse_client": ("rhsbl", "client.rdns", "Unverified Client host", "{client.rdns}",
                                            "connect", []),
            "reject_rhsbl_helo": ("rhsbl", "helo", "Helo command", "{helo}", "helo", []),
            "reject_rhsbl_sender": ("rhsbl", "sender.domain", "Sender address", "{sender.domain}", "mail",
                                    ["not sender.null"]),
            "reject_rhsbl_recipient": ("rhsbl", "rcpt.domain", "Recipient address", "{rcpt.domain}", "rcpt", []),
        }[name]
        kind, fld, klass, what, min_hook, extra = spec
        if _RANK[ctx.hook] < _RANK[min_hook]:
            return (Status.NOT_TRANSLATED, (f"has no effect here: {fld} is not known yet when Postfix evaluates "
                    f"{ctx.param} (smtpd_delay_reject = no), so Postfix skips it too"))
        z, cs = self.zone(kind, domain, codes or None)
        if fld == "client.rdns":
            self.needs_ptr = True
        if name == "reject_rhsbl_sender":
            what = "{sender}"                    # Postfix's $rbl_what is the whole address
        reply, reply_note = self.rbl_reply(domain, code, klass, what, kind)
        action = _reply_action(*reply)
        rid, why = self.emit(ctx.block, lab, action, ctx.guard + extra + [f"{fld} listed in {z}{cs}"],
                             refusal=True, monitor=monitor)
        if rid is None:
            return Status.NOT_TRANSLATED, why or ""
        filt = f", answers {codes}" if codes else ""
        status = Status.APPROXIMATED if reply_note.startswith("approximated") else Status.TRANSLATED
        note = f"rule [{rid}]: {fld} listed in zone {z} ({domain}{filt})" + (f"; {reply_note}" if reply_note else "")
        if not codes and public_zone(domain) is not None:
            note += "; Postfix counts any answer, smtpfw the list's documented codes (see the zone)"
            status = Status.APPROXIMATED
        for zn in self.zone_notes:
            if domain in zn:
                note += "; " + zn
        if fld == "client.rdns" and ctx.hook == "connect":
            status = Status.APPROXIMATED
            note += ("; at connect the name is found by a DNS lookup of that same hook, and smtpfw asks the DNS lists "
                     "of such a name only in a later hook: this rule does not fire at connect")
        return status, note

    def _access(self, ctx: _Ctx, name: str, arg: str | None, lab: str, monitor: bool) -> tuple[Status, str]:
        if not arg:
            return Status.NOT_UNDERSTOOD, "needs a table argument"
        fields = {
            "check_client_access": ("client.ip", "connect"),
            "check_reverse_client_hostname_access": ("client.rdns", "connect"),
            "check_helo_access": ("helo", "helo"),
            "check_sender_access": ("sender", "mail"),
            "check_recipient_access": ("rcpt", "rcpt"),
            "check_sasl_access": ("auth.user", "mail"),
        }
        fld, min_hook = fields[name]
        if _RANK[ctx.hook] < _RANK[min_hook]:
            return (Status.NOT_TRANSLATED, (f"has no effect here: {fld} is not known yet when Postfix evaluates "
                    f"{ctx.param} (smtpd_delay_reject = no), so Postfix skips it too"))
        t = self.table(arg, applied_in=ctx.hook)
        if t is None:
            return Status.NOT_TRANSLATED, f"the table cannot be read: {self.table_failures.get(arg, '')}"
        lookups = [fld]
        notes = list(t.notes)
        status = Status.TRANSLATED
        if t.kind == "access" and not self.access_maps_match_parents() and self._bare_domain_keys(t):
            if fld in ("sender", "rcpt"):
                t = self._exact_copy(t)
                notes.append(f"smtpd_access_maps is not in parent_domain_matches_subdomains, so a `domain` key "
                             f"matches that domain only: its keys are written `@domain` in {self.decl_files[t.name]}")
            else:
                status = Status.APPROXIMATED
                notes.append(f"smtpd_access_maps is not in parent_domain_matches_subdomains, so for Postfix a "
                             f"`domain` key matches that name only; smtpfw maps match {fld}'s parent domains too "
                             "(write the keys as full names, or `.domain` for subdomains)")
        if name == "check_client_access" and (t.name_keys or t.kind in ("regexp", "pcre")):
            lookups = ["client.rdns", "client.ip"]
            notes.append("Postfix looks up the client's verified name, then its address: two rules")
        if name == "check_sasl_access":
            notes.append("only for authenticated clients")
        rules: list[tuple[str | None, str | None]] = []
        for f_ in lookups:
            m = f"{t.name}({f_})"
            if t.kind == "db":
                not_permit = [f'{m} != "ok"', f'{m} != "permit"']
            else:
                not_permit = [f"{m} not matches {_q(PERMIT_PATTERN)}"]
            pre = ["client.fcrdns"] if f_ == "client.rdns" and name == "check_client_access" else []
            if name == "check_sasl_access":
                pre = ["auth"]
            rid, why = self.emit(ctx.block, lab + ("-name" if f_ == "client.rdns" and len(lookups) > 1 else ""),
                                 f"apply {m}", ctx.guard + pre + not_permit, refusal=False, monitor=monitor)
            rules.append((rid, why))
            if t.kind == "db":
                # lint cannot read a database's values, so a permit there may
                # not switch the later rules off (an OK for any domain would be
                # an open relay it cannot rule out: E701): stricter than Postfix
                continue
            if pre:
                inner = not_permit[0] if len(not_permit) == 1 else "(" + " and ".join(not_permit) + ")"
                ctx.guard = ctx.guard + [f"(not {pre[0]} or {inner})"]
            else:
                ctx.guard = ctx.guard + not_permit
        if t.kind == "db":
            status = Status.APPROXIMATED
            notes.append("a permit is recognised as the values OK and PERMIT only (not digits or 2NN), and the "
                         "later rules of the list still apply where the database permits (stricter than Postfix: "
                         "smtpfw cannot see a database's values, and an OK there must not open a relay)")
        problems = [p for p in t.value_problems if p != "-"] + self._pattern_problems(t, lookups)
        if problems:
            status = Status.APPROXIMATED
            notes += problems
        if t.degraded:
            status = Status.APPROXIMATED
        made = [r for r, _w in rules if r]
        if not made:
            return Status.NOT_TRANSLATED, rules[0][1] or ""
        return status, (", ".join(f"[{r}]" for r in made) + f": apply map {t.name} ({arg}) to "
                        + " and ".join(lookups) + "; an OK ends only this list: the map's other answers act, "
                        "and the later rules of the list apply only when it did not permit"
                        + ("; " + "; ".join(notes) if notes else ""))

    def rbl_reply(self, zone: str, code: str, klass: str, what: str, kind: str) -> tuple[tuple[str, str, str], str]:
        """(code, enhanced, text) of a DNS list refusal: the zone's template in
        rbl_reply_maps, else default_rbl_reply, with Postfix's $rbl_* names as
        smtpfw fields; and a note (empty when exact, "approximated: ..." when not)."""
        template, note = self.p.get_raw("default_rbl_reply") or _DEFAULT_RBL_REPLY, ""
        self.p.read.add("default_rbl_reply")
        if self.p.is_set("rbl_reply_maps"):
            self.p.read.add("rbl_reply_maps")
            found = self._rbl_reply_maps().get(zone.lower())
            if found is not None:
                template, note = found, "its reply from rbl_reply_maps"
        txt = "{dnsbl.txt}" if kind == "dnsbl" else "{rhsbl.txt}"
        names = {"rbl_code": code, "rbl_domain": zone, "rbl_class": klass, "rbl_what": what, "rbl_reason": txt,
                 "rbl_txt": txt, "client_address": "{client.ip}", "client_name": "{client.rdns}",
                 "reverse_client_name": "{client.rdns}", "helo_name": "{helo}", "sender": "{sender}",
                 "recipient": "{rcpt}", "recipient_domain": "{rcpt.domain}", "sender_domain": "{sender.domain}"}
        unknown: list[str] = []

        def name_of(m: re.Match) -> str:
            var, cond, inner = m.group(1) or m.group(2) or m.group(3), m.group(4), m.group(5)
            if cond is not None:                 # ${name?text}: smtpfw has no conditionals
                if template != _DEFAULT_RBL_REPLY:
                    unknown.append(f"${{{var}?...}} is written as its text, as if {var} were set")
                return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda n: names.get(n.group(1) or n.group(2), ""), inner)
            if var not in names:
                unknown.append(f"${var} has no smtpfw field: left out")
                return ""
            return names[var]
        text = re.sub(r"\$(\w+)|\$\((\w+)\)|\$\{(\w+)(?:(\?)([^}]*))?\}", name_of, template)
        m = re.match(r"^\s*([45]\d\d)(?:\s+([45]\.\d{1,3}\.\d{1,3}))?\s*(.*)$", text)
        if m is None:
            return (code, "5.7.1", text.strip()), f"approximated: the reply `{template}` has no reply code; {code} used"
        if unknown:
            note = "approximated: " + "; ".join([note] + unknown if note else unknown)
        return (m.group(1), m.group(2) or "5.7.1", m.group(3)), note

    def _rbl_reply_maps(self) -> dict[str, str]:
        """rbl_reply_maps: zone -> reply template, from the tables' source files."""
        out: dict[str, str] = {}
        for spec in split_list(self.p.get("rbl_reply_maps")):
            kind, _, path = spec.removeprefix("proxy:").partition(":")
            found = self.find(path) if kind.lower() in _INDEXED else None
            if found is None:
                continue
            with open(found, encoding="utf-8", errors="replace") as f:
                for key, value in _access_pairs(f.read()):
                    out.setdefault(key.lower(), value)
        return out

    def access_maps_match_parents(self) -> bool:
        """Postfix's parent_domain_matches_subdomains names smtpd_access_maps
        (its default): a `domain` key of an access map covers subdomains."""
        return "smtpd_access_maps" in split_list(self.p.get("parent_domain_matches_subdomains"))

    def _bare_domain_keys(self, t: _Table) -> bool:
        rel = self.decl_files.get(t.name)
        return rel is not None and any(_is_name_key(k) and not k.startswith(".")
                                       for k, _v in _access_pairs(self.files.get(rel, "")))

    def _exact_copy(self, t: _Table) -> _Table:
        """A copy of access map ``t`` for address lookups in which a bare
        `domain` key is `@domain` (that domain only, as Postfix without
        smtpd_access_maps in parent_domain_matches_subdomains); made once."""
        key = t.spec + " (exact domains)"
        if key in self.tables and self.tables[key] is not None:
            return self.tables[key]  # type: ignore[return-value]
        rel = self.decl_files[t.name]
        lines = []
        for line in self.files[rel].split("\n"):
            s = line.strip()
            k = s.split(None, 1)[0] if s else ""
            if s and not s.startswith("#") and not line[:1].isspace() and _is_name_key(k) and not k.startswith("."):
                line = line.replace(k, "@" + k, 1)
            lines.append(line)
        name = self.fresh(t.name + "_exact")
        stem, dot, ext = os.path.basename(rel).partition(".")
        new_rel = self.add_file(f"{stem}_exact{dot}{ext}", "\n".join(lines))
        self.decl_files[name] = new_rel
        self.declare(name, f"map {name} = file {_q(new_rel)}", f"{t.spec}, its domain keys as @domain (exact)")
        exact = _Table(name, t.kind, t.spec, value_problems=t.value_problems, name_keys=t.name_keys,
                       notes=list(t.notes), degraded=t.degraded)
        self.tables[key] = exact
        return exact

    def _pattern_problems(self, t: _Table, fields: list[str]) -> list[str]:
        """Patterns of a regexp/pcre map that can never match the field it is
        looked up by (what lint reports as W402)."""
        rel = self.decl_files.get(t.name)
        if t.kind not in ("regexp", "pcre") or rel is None:
            return []
        lines, _d = logical_lines(self.files[rel], rel)
        table, _d2 = parse_regexp_lines(lines, rel, t.kind)
        out: list[str] = []
        for key, _value, span in table.entries():
            for f_ in fields:
                why = _map_pattern_problem(key, f_)
                if why:
                    out.append(f"{rel} line {span.line}: pattern {key} can never match {f_}: {why}: lint warns (W402)")
                    break
        return out

    # -- postscreen ----------------------------------------------------------------

    def postscreen(self) -> None:
        params = [n for n in self.p.settings if n.startswith("postscreen_")]
        if not params:
            return
        block = "on:connect"
        ctx = _Ctx("postscreen_access_list", "postscreen", block, "connect", self.p.line("postscreen_access_list"),
                   "Client host rejected")
        self.comment(block, "# postscreen (main.cf postscreen_* settings; they apply when master.cf runs "
                            "postscreen on port 25)")
        deny = self.p.get("postscreen_denylist_action").strip().lower() or "ignore"
        access = self.p.get("postscreen_access_list")
        self.comment(block, f"# postscreen_access_list = {_one_line(self.p.get_raw('postscreen_access_list') or '')}")
        self.handled.add("postscreen_access_list")
        # With smtpd_delay_reject = yes nothing else runs `on connect:`, so postscreen's allowlisting can
        # be an `accept` (it ends this hook only: the smtpd restrictions run at RCPT); otherwise a guard.
        accepts = self.delay
        for name, arg, original in self.restrictions(access):
            self.comment(block, f"#   {original}")
            if name == "permit_mynetworks":
                if accepts:
                    c = self.mynetworks()
                    rid, why = self.emit(block, "postscreen-permit_mynetworks", "accept", [_par(c.positive)],
                                         refusal=False) if c.positive else (None, "mynetworks is empty")
                    status, note = ((Status.TRANSLATED, (f"rule [{rid}]: clients in mynetworks skip the postscreen "
                                     "rules (`accept` ends `on connect:` only)")) if rid else
                                    (Status.APPROXIMATED, why or ""))
                else:
                    status, note = self.restriction(ctx, name, None)
                    note = note.replace("the later rules of this list", "the postscreen rules")
            elif ":" in name:
                t = self.table(name, applied_in="connect")
                if t is None:
                    status, note = (Status.NOT_TRANSLATED,
                                    f"the table cannot be read: {self.table_failures.get(name, '')}")
                else:
                    m = f"{t.name}(client.ip)"
                    permit = f"{m} matches {_q(PERMIT_PATTERN)}"
                    not_permit = [f"{m} not matches {_q(PERMIT_PATTERN)}"] if t.kind != "db" else \
                        [f'{m} != "ok"', f'{m} != "permit"']
                    if accepts and deny == "ignore":
                        rid, why = self.emit(block, f"postscreen-{t.name}", "accept", [permit] if t.kind != "db"
                                             else [f'({m} = "ok" or {m} = "permit")'], refusal=False)
                        how = ("`permit` entries skip the postscreen rules; `reject` entries are ignored "
                               "(postscreen_denylist_action = ignore)")
                    elif accepts:
                        rid, why = self.emit(block, f"postscreen-{t.name}", f"apply {m}", [], refusal=False)
                        how = ("`permit` entries skip the postscreen rules (accept ends `on connect:` only); "
                               "`reject` entries (denylisted) are refused at once with the map's reply "
                               f"(postscreen_denylist_action = {deny}: postscreen "
                               + ("drops them with 521" if deny == "drop" else "answers 550 at RCPT") + ")")
                    else:
                        mon = deny == "ignore"
                        rid, why = self.emit(block, f"postscreen-{t.name}", f"apply {m}", ctx.guard + not_permit,
                                             refusal=False, monitor=mon)
                        ctx.guard = ctx.guard + not_permit
                        how = ("`permit` skips the postscreen rules after it; `reject` (denylisted) is refused at "
                               f"once with the map's reply (postscreen_denylist_action = {deny}"
                               + (": monitor, only logged)" if mon else ")"))
                    if rid is None:
                        status, note = Status.NOT_TRANSLATED, why or ""
                    else:
                        status = Status.APPROXIMATED
                        note = (f"rule [{rid}]: map {t.name} looked up by client.ip; {how}"
                                + ("; " + "; ".join(t.notes) if t.notes else "")
                                + ("; " + "; ".join(p for p in t.value_problems if p != "-")
                                   if any(p != "-" for p in t.value_problems) else ""))
            else:
                status, note = Status.NOT_UNDERSTOOD, "not a postscreen_access_list element the importer knows"
            if status in (Status.NOT_TRANSLATED, Status.NOT_UNDERSTOOD):
                self.comment(block, "#     (not translated: see the report)")
            self.note("postscreen_access_list", original if self.p.is_set("postscreen_access_list")
                      else f"(default) {original}", status, note)
        # DNSBL scores
        sites = split_list(self.p.get("postscreen_dnsbl_sites"))
        self.handled.update({"postscreen_dnsbl_sites", "postscreen_dnsbl_threshold", "postscreen_dnsbl_action",
                             "postscreen_dnsbl_allowlist_threshold", "postscreen_dnsbl_whitelist_threshold",
                             "postscreen_greet_action", "postscreen_denylist_action", "postscreen_blacklist_action"})
        weights: list[int] = []
        if sites:
            self.comment(block, "# postscreen_dnsbl_sites = (each entry adds its weight to score dnsbl once)")
        for site in sites:
            sm = re.fullmatch(r"([^=*]+)(?:=([^*]+))?(?:\*(-?\d+))?", site)
            if not sm:
                self.note("postscreen_dnsbl_sites", site, Status.NOT_UNDERSTOOD, "not DOMAIN[=FILTER][*WEIGHT]")
                continue
            domain, filt, weight = sm.group(1), sm.group(2), int(sm.group(3) or 1)
            self.comment(block, f"#   {site}")
            if filt is not None and not _CODE_OK.match(filt):
                self.comment(block, "#     (not translated: see the report)")
                self.note("postscreen_dnsbl_sites", site, Status.NOT_TRANSLATED,
                          f"the filter `{filt}` is not a return-code pattern smtpfw can write")
                continue
            z, cs = self.zone("dnsbl", domain, filt)
            sign = f"+{weight}" if weight >= 0 else str(weight)
            rid, why = self.emit(block, f"postscreen-{z}", f"score dnsbl {sign}", ctx.guard +
                                 [f"client.ip listed in {z}{cs}"], refusal=False)
            weights.append(weight)
            note = f"rule [{rid}]: score dnsbl {sign} when client.ip is listed in zone {z} ({domain}" + \
                (f", answers {filt})" if filt else ")")
            status = Status.TRANSLATED
            if not filt and public_zone(domain) is not None:
                note += "; postscreen counts any answer, smtpfw the list's documented codes (see the zone)"
                status = Status.APPROXIMATED
            self.note("postscreen_dnsbl_sites", site, status, note)
        # pregreet
        greet = self.p.get("postscreen_greet_action").strip().lower() or "ignore"
        greet_orig = f"postscreen_greet_action = {greet}"
        if greet in ("enforce", "drop"):
            action = ('reject 550 5.5.1 "Protocol error"' if greet == "enforce"
                      else 'disconnect 521 5.5.1 "Protocol error"')
            self.comment(block, f"# {greet_orig}")
            rid, why = self.emit(block, "postscreen-pregreet", action, ctx.guard + ["client.pregreet"],
                                 refusal=True)
            if greet == "enforce":
                self._need_delay()
            self.note("postscreen_greet_action", greet_orig, Status.APPROXIMATED,
                      f"rule [{rid}]: a client that talks before its turn (client.pregreet) is "
                      + ("refused at its first RCPT (550, with option delay_reject)" if greet == "enforce"
                         else "disconnected with 521")
                      + "; only measured when smtpfw's config sets smtp.greet_wait > 0 "
                        "(postscreen_greet_wait)")
        elif self.p.is_set("postscreen_greet_action"):
            self.note("postscreen_greet_action", greet_orig, Status.TRANSLATED,
                      "ignore: the pregreet test only logs in postscreen; nothing to refuse (smtpfw records "
                      "client.pregreet when smtp.greet_wait > 0)")
        # thresholds
        allow_param = ("postscreen_dnsbl_allowlist_threshold" if self.p.is_set("postscreen_dnsbl_allowlist_threshold")
                       else "postscreen_dnsbl_whitelist_threshold")
        allow = _int(self.p.get("postscreen_dnsbl_allowlist_threshold"), 0)
        if sites:
            lowest = sum(w for w in weights if w < 0)
            if allow < 0 and lowest > allow:
                self.note(allow_param, f"{allow_param} = {allow}", Status.TRANSLATED,
                          f"no rule needed: the weights of postscreen_dnsbl_sites take score.dnsbl down to {lowest} "
                          f"at most, never to {allow}, so no client is allowlisted (in Postfix either)")
            elif allow < 0:
                self.comment(block, f"# {allow_param} = {allow}: the tests below are skipped")
                if accepts:
                    rid, why = self.emit(block, "postscreen-dnsbl-allowlist", "accept",
                                         [f"score.dnsbl <= {allow}"], refusal=False)
                    note = (f"rule [{rid}]: score.dnsbl <= {allow} skips the postscreen rules after it "
                            "(`accept` ends `on connect:` only)")
                else:
                    ctx.guard = ctx.guard + [f"score.dnsbl > {allow}"]
                    note = f"the postscreen rules after the scores apply only if score.dnsbl > {allow}"
                self.note(allow_param, f"{allow_param} = {allow}", Status.TRANSLATED, note)
            elif self.p.is_set(allow_param):
                self.note(allow_param, f"{allow_param} = {allow}", Status.TRANSLATED,
                          "0 or more: no allowlisting by score (as in Postfix)")
            threshold = _int(self.p.get("postscreen_dnsbl_threshold"), 1)
            action_name = self.p.get("postscreen_dnsbl_action").strip().lower() or "ignore"
            text = "Service unavailable; client [{client.ip}] blocked using DNSBLs (rank {score.dnsbl})"
            mon = action_name == "ignore"
            if action_name == "drop":
                action = f"disconnect 521 5.7.1 {_q(text)}"
            else:
                action = f"reject 550 5.7.1 {_q(text)}"
            self.comment(block, f"# postscreen_dnsbl_threshold = {threshold}, postscreen_dnsbl_action = "
                                f"{action_name}")
            rid, why = self.emit(block, "postscreen-dnsbl-threshold", action,
                                 ctx.guard + [f"score.dnsbl >= {threshold}"], refusal=True, monitor=mon)
            if action_name == "enforce":
                self._need_delay()
            reach = sum(w for w in weights if w > 0)
            how = {"enforce": "refused at each RCPT (550; option delay_reject holds the refusal until then, as "
                              "postscreen talks on)",
                   "drop": "disconnected with 521",
                   "ignore": "only logged (monitor), as postscreen's ignore only logs"}.get(action_name, "refused")
            self.note("postscreen_dnsbl_threshold", f"postscreen_dnsbl_threshold = {threshold}",
                      Status.TRANSLATED if reach >= threshold else Status.APPROXIMATED,
                      f"rule [{rid}]: score.dnsbl >= {threshold}: {how}; postscreen names the list with the "
                      "largest weight in its reply, smtpfw gives the rank"
                      + ("" if reach >= threshold else
                         f"; the weights add up to {reach} at most: lint warns (W605), as it never fires"))
            self.note("postscreen_dnsbl_action", f"postscreen_dnsbl_action = {action_name}", Status.TRANSLATED,
                      f"used by rule [{rid}]: {how}")
        else:
            for p_ in ("postscreen_dnsbl_threshold", "postscreen_dnsbl_action", allow_param):
                if self.p.is_set(p_):
                    self.note(p_, f"{p_} = {self.p.get_raw(p_)}", Status.TRANSLATED,
                              "postscreen_dnsbl_sites is empty: no DNSBL score to test")
        if self.p.is_set("postscreen_dnsbl_sites") and not sites:
            self.note("postscreen_dnsbl_sites", "(empty)", Status.TRANSLATED, "no DNS lists")
        for p_ in ("postscreen_denylist_action", "postscreen_blacklist_action"):
            if self.p.is_set(p_):
                self.note(p_, f"{p_} = {self.p.get_raw(p_)}", Status.TRANSLATED,
                          "used for the `reject` entries of postscreen_access_list (see there)")

    def _need_delay(self) -> None:
        if "option delay_reject = yes" not in self.options:
            self.options.append("option delay_reject = yes")

    # -- the whole file ----------------------------------------------------------

    def run(self) -> ImportResult:
        # classes first: map values and lists may name them
        class_names = split_list(self.p.get("smtpd_restriction_classes"))
        for c in class_names:
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", c) and c not in self.names:
                self.classes.add(c)
                self.names.add(c)
        self.postscreen()
        lists = self._lists()
        for param, label, hook, reply in lists:
            self._translate_list(param, label, hook, reply)
        self._relay_check_missing()
        self._implicit_unlisted()
        for c in class_names:
            self._translate_class(c)
        self._report_parameters(class_names)
        self.zone_declarations()
        text = self.render()
        return ImportResult(text, dict(sorted(self.files.items())),
                            [r for _l, _s, r in sorted(self.report, key=lambda x: (x[0], x[1]))])

    def _lists(self) -> list[tuple[str, str, str, str]]:
        early = "rcpt" if self.delay else None
        out = [("smtpd_client_restrictions", "client", early or "connect", "Client host rejected"),
               ("smtpd_helo_restrictions", "helo", early or "helo", "<{helo}>: Helo command rejected"),
               ("smtpd_sender_restrictions", "sender", early or "mail", "<{sender}>: Sender address rejected")]
        relay = ("smtpd_relay_restrictions", "relay", "rcpt", "<{rcpt}>: Recipient address rejected")
        rcpt = ("smtpd_recipient_restrictions", "rcpt", "rcpt", "<{rcpt}>: Recipient address rejected")
        before = self.p.flag("smtpd_relay_before_recipient_restrictions")
        out += [relay, rcpt] if before else [rcpt, relay]
        out += [("smtpd_data_restrictions", "data", "data", "<DATA>: Data command rejected"),
                ("smtpd_end_of_data_restrictions", "eod", "data", "<END-OF-MESSAGE>: End-of-data rejected")]
        self.handled.update(p for p, *_ in out)
        self.handled.update({"smtpd_delay_reject", "smtpd_relay_before_recipient_restrictions"})
        self.note("smtpd_delay_reject", f"smtpd_delay_reject = {'yes' if self.delay else 'no'}"
                  if self.p.is_set("smtpd_delay_reject") else "(default) yes", Status.TRANSLATED,
                  "the client, HELO and sender restrictions run at RCPT TO, as in Postfix: their rules are "
                  "`on rcpt:`" if self.delay else
                  "the client, HELO and sender restrictions run `on connect:`, `on helo:` and `on mail:`")
        if self.p.is_set("smtpd_relay_before_recipient_restrictions") or self.p.compat < (3, 6):
            self.note("smtpd_relay_before_recipient_restrictions",
                      (f"smtpd_relay_before_recipient_restrictions = "
                       f"{self.p.get_raw('smtpd_relay_before_recipient_restrictions')}"
                       if self.p.is_set("smtpd_relay_before_recipient_restrictions")
                       else f"(default at compatibility_level {'.'.join(map(str, self.p.compat))}) "
                            f"{'yes' if before else 'no'}"),
                      Status.TRANSLATED, "smtpd_relay_restrictions' rules come "
                      + ("before" if before else "after") + " smtpd_recipient_restrictions' rules")
        return out

    def _translate_list(self, param: str, label: str, hook: str, reply: str) -> None:
        raw = self.p.get_raw(param) or ""
        value = self.p.get(param)
        block = f"on:{hook}"
        is_set = self.p.is_set(param)
        if not split_list(value):
            if is_set:
                self.note(param, f"{param} = {raw}" if raw else "(empty)", Status.TRANSLATED, "empty: no restrictions")
            return
        ctx = _Ctx(param, label, block, hook, self.p.line(param), reply)
        shown = _one_line(raw)
        self.comment(block, f"# {param} = {shown}" + ("" if is_set else "   (Postfix's default)"))
        if "$" in raw:
            self.comment(block, f"#   = {_one_line(value)}")
        before = len(self.report)
        self.run_list(ctx, value, param)
        if not is_set:
            for i in range(before, len(self.report)):
                ln, seq, r = self.report[i]
                self.report[i] = (ln, seq, ReportLine(r.parameter, f"(default) {r.original}", r.status, r.note, 0))

    def _relay_check_missing(self) -> None:
        """Postfix refuses to run (smtpd: fatal) when neither the relay nor the
        recipient restrictions hold a restriction that can refuse relaying;
        smtpfw then gets the strict relay check of its default ruleset."""
        closing = {"reject_unauth_destination", "defer_unauth_destination", "reject", "defer", "defer_if_permit",
                   "check_relay_domains"}
        for param in ("smtpd_relay_restrictions", "smtpd_recipient_restrictions"):
            if any(name in closing for name, _a, _o in self.restrictions(self.p.get(param))):
                return
        c = self.local_domains()
        conds = [_par(" and ".join(c.negative) + ' or rcpt.local matches "[%!@]"')] if c.negative else []
        self.comment("on:rcpt", "# no relay check in smtpd_relay_restrictions or smtpd_recipient_restrictions: "
                                "Postfix would not start; smtpfw refuses relaying to anyone")
        rid, _why = self.emit("on:rcpt", "relay-check-missing", 'reject 554 5.7.1 "<{rcpt}>: Relay access denied"',
                              conds, refusal=True)
        self.note("(translation)", "no reject_unauth_destination", Status.APPROXIMATED,
                  f"rule [{rid}]: neither smtpd_relay_restrictions nor smtpd_recipient_restrictions "
                  "(compatibility_level "
                  f"{'.'.join(map(str, self.p.compat))}) holds a restriction that refuses relaying, so Postfix's smtpd "
                  "stops with a fatal error; the import refuses every recipient outside the local and relay domains, "
                  "from every client (mynetworks and authenticated clients included), as smtpfw's default ruleset does")

    def _implicit_unlisted(self) -> None:
        param = "smtpd_reject_unlisted_recipient"
        self.handled.add(param)
        orig = f"{param} = {self.p.get_raw(param)}" if self.p.is_set(param) else "(default) yes"
        if not self.p.flag(param):
            self.note(param, orig, Status.TRANSLATED, "no: unknown recipients are not refused at RCPT TO")
            return
        block = "on:rcpt"
        self.comment(block, f"# {param} = yes" + ("" if self.p.is_set(param) else "   (Postfix's default)")
                     + ": after the restrictions, unknown recipients in local domains are refused")
        ctx = _Ctx(param, "unlisted", block, "rcpt", self.p.line(param), "")
        status, note = _no_rule_needed(*self._unlisted(ctx, "unlisted-recipient", False, implicit=True))
        if note.startswith("no rule needed"):
            self.comment(block, "#   (no rule needed: see the report)")
        self.note(param, orig, status, note)

    def _translate_class(self, name: str) -> None:
        if name not in self.classes:
            self.note("smtpd_restriction_classes", name, Status.NOT_TRANSLATED,
                      "not a name smtpfw can give a class (letters, digits, _ and -), or it clashes with another "
                      "name of the ruleset")
            return
        self.handled.add(name)
        value = self.p.get(name)
        if not self.p.is_set(name):
            self.note("smtpd_restriction_classes", name, Status.NOT_TRANSLATED,
                      f"class {name} has no parameter {name} = ... in main.cf: an empty class")
        block = f"class:{name}"
        self.blocks.setdefault(block, [])
        self.comment(block, f"# {name} = {_one_line(self.p.get_raw(name) or '')}")
        ctx = _Ctx(name, name, block, "rcpt", self.p.line(name), "<{rcpt}>: Recipient address rejected",
                   in_class=True)
        self.run_list(ctx, value, name)
        if not self.delay:
            self.note(name, f"class {name}", Status.APPROXIMATED,
                      "translated for RCPT TO; used from an earlier hook (smtpd_delay_reject = no), lint "
                      "refuses the fields that hook does not know yet")

    def _report_parameters(self, class_names: list[str]) -> None:
        self.handled.add("smtpd_restriction_classes")
        if class_names:
            self.note("smtpd_restriction_classes", self.p.get_raw("smtpd_restriction_classes") or "",
                      Status.TRANSLATED, "each class becomes `class NAME:`; a map value or list element naming it "
                      "runs it (`apply`, `use`)")
        for earlier, later in self.p.overridden:
            self.note(earlier.name, f"{earlier.name} = {_one_line(earlier.value)}", Status.NOT_APPLICABLE,
                      f"overridden by the setting on line {later.line} (Postfix uses the last one)", earlier.line)
        for number, text in self.bad_lines:
            self.note("(syntax)", _one_line(text), Status.NOT_UNDERSTOOD,
                      "not a `name = value` setting or a continuation of one", number)
        for name, param in self.p.settings.items():
            if name in self.handled:
                continue
            original = f"{name} = {_one_line(param.value)}"
            if name in self.used:
                status, note = self.used[name]
                self.note(name, original, status, note)
                continue
            status, note = self._classify_param(name)
            readers = sorted(w for w in self.p.referenced.get(name, set())
                             if w != name and (w in self.used or w in self.handled))
            if readers and status in (Status.NOT_APPLICABLE, Status.NOT_UNDERSTOOD):
                status, note = Status.TRANSLATED, (f"read through ${name} in {', '.join(readers)} (translated "
                                                   f"there); otherwise: {note}")
            self.note(name, original, status, note)
        for name in ("mynetworks", "mynetworks_style", "inet_interfaces", "mydestination", "relay_domains",
                     "virtual_alias_domains", "virtual_mailbox_domains", "smtpd_sender_login_maps"):
            if name in self.used and not self.p.is_set(name):
                status, note = self.used[name]
                shown = "(from mynetworks_style)" if name == "mynetworks" else (self.p.get_raw(name) or "(empty)")
                self.note(name, f"(default) {shown}", status, note, 0)
        if self.needs_ptr:
            self.note("(translation)", "client.rdns listed in ...", Status.TRANSLATED,
                      "rule [lookup-client-name] at connect has the client's PTR looked up, so the name's DNS "
                      "lists can be asked when the later rules run")
        for name, wheres in sorted(self.p.undefined.items()):
            self.note("(expansion)", f"${name}", Status.NOT_UNDERSTOOD,
                      f"named in {', '.join(sorted(wheres))} but neither set in main.cf nor a parameter whose "
                      "default the importer knows: expanded as empty (Postfix warns about it too)")

    def _classify_param(self, name: str) -> tuple[Status, str]:
        if name in _CODE_PARAMS:
            if name in self.p.read:
                return Status.TRANSLATED, f"the reply code of the translated {_CODE_PARAMS[name]}"
            return Status.NOT_APPLICABLE, (f"the reply code of {_CODE_PARAMS[name]}, which this main.cf does not "
                                           "use in a translated restriction")
        if name == "compatibility_level":
            return Status.TRANSLATED, ("used for Postfix's defaults that depend on it (relay_domains, "
                                       "mynetworks_style, smtpd_relay_restrictions, "
                                       "smtpd_relay_before_recipient_restrictions)")
        if name == "smtpd_helo_required":
            if self.p.flag(name):
                return Status.TRANSLATED, "built in: smtpfw answers MAIL before HELO/EHLO with 503 5.5.1"
            return Status.APPROXIMATED, "smtpfw always requires HELO/EHLO before MAIL (503 5.5.1)"
        if name == "parent_domain_matches_subdomains":
            if self.access_maps_match_parents():
                return Status.TRANSLATED, ("read for relay_domains (a domain there also covers its subdomains "
                                           "only when relay_domains is in this list) and access maps (smtpfw "
                                           "access maps match parent domains, as with smtpd_access_maps)")
            return Status.TRANSLATED, ("read for relay_domains (a domain there also covers its subdomains only "
                                       "when relay_domains is in this list) and access maps: without "
                                       "smtpd_access_maps, a `domain` key is that domain only (address lookups "
                                       "use a copy of the map with `@domain` keys; name lookups are reported)")
        if name == "smtpd_forbid_bare_newline":
            v = self.p.get(name).strip().lower()
            if v in ("yes", "reject"):
                return Status.TRANSLATED, "built in: smtpfw refuses a bare LF in DATA with 554 5.6.11"
            return Status.APPROXIMATED, (f"{v}: smtpfw always refuses a bare LF in DATA with 554 5.6.11 "
                                         "(built in; it never normalizes)")
        if name == "smtpd_tls_auth_only":
            return Status.TRANSLATED, "built in: smtpfw offers AUTH only after STARTTLS"
        if name == "smtpd_etrn_restrictions":
            return Status.NOT_APPLICABLE, "smtpfw does not implement ETRN"
        if name == "smtpd_reject_unlisted_sender":
            if self.p.flag(name):
                return Status.NOT_TRANSLATED, _NOT_TRANSLATED["reject_unlisted_sender"]
            return Status.TRANSLATED, "no: senders are not checked against the recipient tables"
        if name in ("smtpd_sender_login_maps",):
            return Status.NOT_APPLICABLE, "no translated restriction reads it (no reject_*sender_login_mismatch)"
        m = re.match(r"^postscreen_(bare_newline|pipelining|non_smtp_command)_(enable|action)$", name)
        if m and not self.p.flag(f"postscreen_{m.group(1)}_enable"):
            return Status.TRANSLATED, (f"no rule needed: postscreen_{m.group(1)}_enable is off, so postscreen does not "
                                       "run this test")
        if name.startswith("postscreen_"):
            return Status.NOT_TRANSLATED, _POSTSCREEN.get(name, "a postscreen setting smtpfw has no equivalent for "
                                                               "(postscreen's deep protocol tests and its cache)")
        c = _classify(name)
        if c is not None:
            return c
        if name in self.p.referenced:
            where = ", ".join(sorted(self.p.referenced[name]))
            return Status.TRANSLATED, f"used through ${name} in {where} (translated there)"
        return Status.NOT_UNDERSTOOD, ("not a parameter the importer knows, and no parameter of main.cf names it "
                                       "($name): if master.cf uses it (-o ...=$" + name + "), translate that "
                                       "service's settings by hand")

    # -- output ------------------------------------------------------------------

    def render(self) -> str:
        out: list[str] = [
            f"# Imported from a Postfix main.cf ({os.path.basename(self.path)}) by `smtpfw import postfix-config`.",
            "# The report lists every parameter and restriction of the file: what was done, or why not.",
            "# A permit of Postfix's smtpd restriction lists is a condition of the later rules of its list (an",
            "# smtpfw `accept` would end the whole hook, skipping the lists after it), so no rule accepts a",
            "# recipient: the end of the hook does.  Only postscreen's allowlisting accepts, `on connect:`.",
            "",
        ]
        if self.options:
            out += self.options + [""]
        used = set()
        for items in self.blocks.values():
            for item in items:
                if isinstance(item, _Rule):
                    used.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", item.text()))
        for name in self.decl_order:
            if name not in self.decls:
                continue
            decl = self.decls.pop(name)
            if name in used:
                out.append(decl)
            elif name in self.decl_files:
                self.files.pop(self.decl_files[name], None)
        out.append("")
        for block, items in self.blocks.items():
            if not block.startswith("class:"):
                continue
            out.append(f"class {block[6:]}:")
            out += self._render_items(items)
            out.append("")
        if self.needs_ptr:
            self.blocks.setdefault("on:connect", []).insert(0, _Rule(
                "lookup-client-name", "tag client_name_looked_up", ['client.ptr = "found"'], False,
                comments=[("# has the client's PTR looked up at connect, so that the DNS lists of its name "
                          "can be asked later")]))
        for hook in _HOOKS:
            hook_items = self.blocks.get(f"on:{hook}")
            if not hook_items:
                continue
            out.append(f"on {hook}:")
            out += self._render_items(hook_items)
            out.append("")
        while out and out[-1] == "":
            out.pop()
        return "\n".join(out) + "\n"

    @staticmethod
    def _render_items(items: list[_Rule | str]) -> list[str]:
        lines: list[str] = []
        for item in items:
            if isinstance(item, _Rule):
                lines += [f"    {c}" for c in item.comments]
                lines.append(f"    {item.text()}")
            else:
                lines.append(f"    {item}")
        if not any(isinstance(i, _Rule) for i in items):
            lines.append("    # (no rules)")
        return lines


_POSTSCREEN = {
    "postscreen_dnsbl_ttl": "the DNSBL pass cache: smtpfw's dns.pass_ttl (config file; off by default)",
    "postscreen_dnsbl_min_ttl": "the DNSBL pass cache: smtpfw's dns.pass_ttl (config file) is one fixed time",
    "postscreen_dnsbl_max_ttl": "the DNSBL pass cache: smtpfw's dns.pass_ttl (config file) is one fixed time",
    "postscreen_greet_ttl": "the pass cache of the pregreet test: smtpfw's smtp.greet_pass_ttl (config file)",
    "postscreen_greet_wait": "the pregreet wait: smtpfw's smtp.greet_wait (config file), which must be > 0 for "
                             "client.pregreet to be measured",
    "postscreen_greet_banner": "the pregreet banner: smtpfw's greeting comes from its config (hostname, "
                               "smtp.banner)",
    "postscreen_dnsbl_reply_map": "smtpfw's reply names the score, not the list: no reply map",
    "postscreen_cache_map": "postscreen's cache: smtpfw keeps no pass cache for DNS lists",
    "postscreen_cache_cleanup_interval": "postscreen's cache: smtpfw keeps no pass cache for DNS lists",
    "postscreen_cache_retention_time": "postscreen's cache: smtpfw keeps no pass cache for DNS lists",
    "postscreen_bare_newline_enable": "the bare-newline test runs in postscreen's after-greeting phase; smtpfw "
                                      "has session.bare_newline, not translated by the importer",
    "postscreen_bare_newline_action": "the bare-newline test runs in postscreen's after-greeting phase; smtpfw "
                                      "has session.bare_newline, not translated by the importer",
    "postscreen_pipelining_enable": "the pipelining test of postscreen's after-greeting phase: "
                                    "session.unauth_pipelining, not translated by the importer",
    "postscreen_non_smtp_command_enable": "smtpfw closes connections that send non-SMTP commands (GET, "
                                          "CONNECT, ...) itself (built in), at once",
    "postscreen_non_smtp_command_action": "smtpfw closes connections that send non-SMTP commands (GET, "
                                          "CONNECT, ...) itself (built in), at once",
    "postscreen_pipelining_action": "the pipelining test of postscreen's after-greeting phase: "
                                    "session.unauth_pipelining, not translated by the importer",
    "postscreen_discard_ehlo_keywords": "smtpfw's EHLO keywords are fixed",
}

# (pattern, status, note) for parameters that do not decide what smtpd accepts
_CATEGORIES: list[tuple[str, Status, str]] = [
    ((r"^(queue_directory|command_directory|daemon_directory|data_directory|meta_directory|shlib_directory|"
     r"mail_owner|setgid_group|sendmail_path|newaliases_path|mailq_path|manpage_directory|sample_directory|"
     r"readme_directory|html_directory|debugger_command|debug_peer_level|debug_peer_list|mail_name|biff|"
     r"import_environment|export_environment|syslog_\w+|maillog_file\w*|enable_long_queue_ids|"
     r"mail_spool_directory|default_database_type|config_directory|respectful_logging|inet_protocols)$"),
     Status.NOT_APPLICABLE, "installation, process or logging setting of Postfix itself"),
    (r"^(smtp|lmtp)_", Status.NOT_APPLICABLE,
     "delivery of accepted mail (Postfix's SMTP/LMTP client): stays with the MTA behind smtpfw"),
    ((r"^(relayhost|default_transport|transport_maps|sender_dependent_\w+|fallback_relay|relay_transport|"
     r"\w+_destination_\w*limit|\w+_destination_concurrency\w*|default_destination_\w+|smtp_fallback_relay|"
     r"local_transport|virtual_transport|mailbox_transport|mailbox_command|empty_address_recipient)$"),
     Status.NOT_APPLICABLE, "routing and delivery of accepted mail: stays with the MTA behind smtpfw"),
    (r"^(smtpd_tls_\w+|tls_\w+|smtpd_use_tls|smtpd_enforce_tls|smtpd_starttls_timeout)$", Status.NOT_APPLICABLE,
     ("TLS of the SMTP server: smtpfw's tls.cert and tls.key are in its config file; protocol and cipher "
     "settings have no smtpfw equivalent")),
    (r"^(smtpd_sasl_\w+|broken_sasl_auth_clients)$", Status.NOT_APPLICABLE,
     "SMTP AUTH: smtpfw's auth.users_file (config file); it offers AUTH PLAIN/LOGIN after STARTTLS"),
    ((r"^(alias_maps|alias_database|virtual_alias_maps|virtual_maps|virtual_mailbox_maps|virtual_\w*_maps|"
     r"virtual_minimum_uid|virtual_mailbox_base|virtual_mailbox_limit|local_recipient_maps|"
     r"relay_recipient_maps|home_mailbox|mailbox_size_limit|recipient_delimiter|\w*canonical_\w+|"
     r"\w*_bcc_maps|always_bcc|relocated_maps|myorigin|append_dot_mydomain|append_at_myorigin|"
     r"allow_percent_hack|swap_bangpath|allow_min_user|masquerade_\w+|propagate_unmatched_extensions|"
     r"enable_original_recipient|owner_request_special|expand_owner_alias|forward_path|luser_relay|"
     r"mydomain|myhostname|smtputf8_enable|allow_mail_to_\w+|remote_header_rewrite_domain|"
     r"local_header_rewrite_clients|show_user_unknown_table_name|unknown_\w+_reject_code|"
     r"virtual_mailbox_lock|mailbox_delivery_lock|local_command_shell)$"),
     Status.NOT_APPLICABLE, ("addressing, rewriting and local or virtual delivery: stays with the MTA behind "
                            "smtpfw (the unlisted-recipient rule asks it about recipients)")),
    ((r"^(bounce_queue_lifetime|maximal_queue_lifetime|delay_warning_time|minimal_backoff_time|"
     r"maximal_backoff_time|queue_run_delay|qmgr_\w+|default_process_limit|\w+_recipient_limit|"
     r"bounce_\w+|delay_notice_recipient|notify_classes|2bounce_notice_recipient|error_notice_recipient)$"),
     Status.NOT_APPLICABLE, "queue management, delivery scheduling and bounces: stay with the MTA behind smtpfw"),
    (r"^(milter_\w+|smtpd_milters|non_smtpd_milters|smtpd_milter_maps)$", Status.NOT_APPLICABLE,
     ("milters: the MTA behind still runs them on the mail smtpfw passes on (smtpfw can itself run as a milter: "
     "`smtpfw milter`)")),
    ((r"^(header_checks|body_checks|mime_header_checks|nested_header_checks|milter_header_checks|"
     r"body_checks_size_limit|header_size_limit)$"), Status.NOT_TRANSLATED,
     ("content checks of Postfix's cleanup daemon, not a restriction: smtpfw can read the same table with "
     "`apply MAP(headers)` / `apply MAP(body.lines)` in `on data:`, which the importer does not write; "
     "the MTA behind keeps applying it")),
    (r"^(inet_interfaces|proxy_interfaces)$", Status.NOT_APPLICABLE,
     "listening addresses: smtpfw's `listen:` in its config file"),
    (r"^(smtpd_banner)$", Status.NOT_APPLICABLE, "the greeting: smtpfw's hostname and smtp.banner (config file)"),
    (r"^message_size_limit$", Status.NOT_APPLICABLE,
     "the message size limit: smtpfw's limits.max_message_size (config file)"),
    (r"^disable_vrfy_command$", Status.TRANSLATED,
     "built in: smtpfw never verifies an address for VRFY (it answers 252)"),
    ((r"^(smtpd_error_sleep_time|smtpd_soft_error_limit|smtpd_hard_error_limit|smtpd_junk_command_limit|"
     r"smtpd_recipient_limit|smtpd_recipient_overshoot_limit|smtpd_client_\w+_limit|smtpd_client_\w+_rate_limit|"
     r"smtpd_timeout|smtpd_proxy_timeout|smtpd_per_record_deadline|anvil_\w+|smtpd_client_event_limit_exceptions|"
     r"smtpd_history_flush_threshold|smtpd_peername_lookup|smtpd_client_port_logging)$"),
     Status.NOT_TRANSLATED,
     ("connection and error limits: smtpfw's limits: settings (config file) and `limit` rules (docs/state.md); "
     "the importer does not write them")),
    (r"^(smtpd_discard_ehlo_keywords|smtpd_discard_ehlo_keyword_address_maps)$", Status.NOT_TRANSLATED,
     "smtpfw's EHLO keywords are fixed"),
    ((r"^(smtpd_command_filter|smtpd_reject_footer\w*|smtpd_expansion_filter|smtpd_authorized_\w+|"
     r"smtpd_forbid_bare_newline_exclusions|smtpd_forbid_bare_newline_reject_code|smtpd_proxy_\w+|"
     r"smtpd_forbid_unauth_pipelining|smtpd_sasl_authenticated_header|smtpd_upstream_proxy_\w+|"
     r"smtpd_log_access_permit_actions|smtpd_hide_client_session|smtpd_client_restrictions_\w+|"
     r"smtpd_reject_footer_maps|smtpd_dns_reply_filter|smtpd_policy_service_\w+)$"),
     Status.NOT_TRANSLATED, "an SMTP server setting smtpfw has no equivalent for"),
    (r"^(proxy_read_maps|proxy_write_maps)$", Status.NOT_APPLICABLE,
     "which tables Postfix's proxymap may open: smtpfw opens the tables itself"),
    ((r"^(tls_server_sni_maps|content_filter|receive_override_options|hopcount_limit|in_flow_delay|"
     r"local_destination_\w+|virtual_destination_\w+|alternate_config_directories|multi_instance_\w+|"
     r"authorized_\w+|strict_\w+|message_strip_characters|max_idle|max_use|process_id_directory)$"),
     Status.NOT_APPLICABLE, "not about what the SMTP server accepts: stays with the MTA behind smtpfw"),
]


def _classify(name: str) -> tuple[Status, str] | None:
    for pattern, status, note in _CATEGORIES:
        if re.match(pattern, name):
            return status, note
    return None


# ---- small helpers -----------------------------------------------------------

def _no_rule_needed(status: Status, note: str) -> tuple[Status, str]:
    """A restriction whose rule an earlier rule always pre-empts is translated
    by leaving it out: it never fires in Postfix either."""
    if status is Status.NOT_TRANSLATED and note.startswith("never reached: "):
        return Status.TRANSLATED, "no rule needed: " + note[len("never reached: "):]
    return status, note


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _int(text: str, default: int) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return default


_DEFAULT_RBL_REPLY = "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using $rbl_domain${rbl_reason?; $rbl_reason}"


def _reply_action(code: str, enhanced: str, text: str) -> str:
    code = code if re.fullmatch(r"[45]\d\d", code) else "554"
    if code.startswith("4"):
        enhanced = "4" + enhanced[1:]
        return f"tempfail {code} {enhanced} {_q(text)}"
    enhanced = "5" + enhanced[1:]
    return f"reject {code} {enhanced} {_q(text)}"


def _zone_arg(arg: str) -> tuple[str, str | None]:
    """DOMAIN[=FILTER] -> (domain, filter, "" without one; None when smtpfw cannot write it)."""
    domain, eq, filt = arg.partition("=")
    if not eq:
        return domain, ""
    if not _CODE_OK.match(filt):
        return domain, None
    return domain, filt


def _zone_name(domain: str) -> str:
    labels = [label for label in domain.lower().rstrip(".").split(".") if label]
    if len(labels) > 1:
        labels = labels[:-1]
    labels = [lb for lb in labels if not (len(lb) >= 20 and re.fullmatch(r"[a-z0-9]+", lb))] or labels
    if labels and labels[0] in _GENERIC_LABELS and len(labels) > 1:
        return _ident(f"{labels[0]}_{labels[1]}")
    return _ident(labels[0] if labels else "zone")


def _is_ip_or_net(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip("[]").replace("]/", "/"), strict=False)
        return True
    except ValueError:
        return False


def _network(token: str) -> tuple[str | None, str]:
    """A mynetworks element -> (the smtpfw list entry, a note) or (None, why)."""
    t = token
    if t.startswith("["):
        t = t.replace("[", "").replace("]", "")
    try:
        net = ipaddress.ip_network(t, strict=False)
    except ValueError:
        if _DOMAIN.match(token):
            return None, ("a host or domain name: Postfix matches the client's name, smtpfw lists of networks "
                          "take addresses only")
        return None, "not a network"
    note = ""
    if str(net) != t and "/" in t and str(net.network_address) != t.split("/")[0]:
        note = f"`{token}` has host bits set: written as {net}"
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None \
            and net.prefixlen >= 96:
        v4 = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}", strict=False)
        return _net_text(v4), (f"`{token}` (IPv4-mapped) is written as {v4}: smtpfw looks IPv4-mapped "
                               "addresses up as IPv4")
    return _net_text(net), note


def _net_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    full = net.prefixlen == net.max_prefixlen
    return str(net.network_address) if full else str(net)


def _list_item(entry: str) -> str:
    return entry if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}(/\d{1,2})?", entry) else _q(entry)


def _drop_covered(atoms: list[str]) -> list[str]:
    """`F in L` is left out where `F within L` is there too."""
    return [a for a in atoms if not (" in " in a and a.replace(" in ", " within ", 1) in atoms)]


def _negate_in(atom: str) -> str:
    """`X in L` -> `X not in L` (and `within`)."""
    for op in (" in ", " within "):
        if op in atom:
            left, _, right = atom.partition(op)
            return f"{left} not{op}{right}"
    return f"not ({atom})"


def _is_name_key(key: str) -> bool:
    k = key.strip().lower()
    if not k or "@" in k or k == "<>":
        return False
    return not (_is_ip_or_net(k) or re.fullmatch(r"[0-9.]+|[0-9a-f:]+", k))


def add_map_file(files: dict[str, str], base: str, content: str) -> str:
    """``content`` as ``maps/BASE`` in ``files`` (``maps/STEM_2.EXT``, ... when
    that name is taken); its relative name."""
    rel = f"maps/{base}"
    n = 2
    while rel in files:
        stem, dot, ext = base.partition(".")
        rel = f"maps/{stem}_{n}{dot}{ext}"
        n += 1
    files[rel] = content
    return rel


def _access_pairs(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in text.split("\n"):
        s = line.strip()
        if not s or s.startswith("#") or line[:1].isspace():
            continue
        key, _, value = s.partition(" ") if " " in s else s.partition("\t")
        out.append((key, value.strip()))
    return out


def _map_values(text: str, kind: str) -> list[tuple[int, str]]:
    """(line, value) of each entry of an access, regexp or pcre map file."""
    out: list[tuple[int, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r")
        number = i + 1
        i += 1
        s = line.strip()
        if not s or s.startswith("#") or line[:1].isspace():
            continue
        while i < len(lines) and lines[i][:1].isspace() and lines[i].strip() \
                and not lines[i].strip().startswith("#"):
            s += " " + lines[i].strip()
            i += 1
        if kind in ("regexp", "pcre"):
            if re.match(r"^(if|endif)\b", s):
                continue
            m = re.match(r"^!?(/(?:\\.|[^/])*/|#(?:\\.|[^#])*#)[A-Za-z]*\s*(.*)$", s)
            if m is None:
                continue
            if s.startswith("!") or not m.group(2):
                value = m.group(2)
            else:
                value = m.group(2)
            out.append((number, value.strip()))
        else:
            parts = s.split(None, 1)
            out.append((number, parts[1] if len(parts) > 1 else ""))
    return out


def import_main_cf(path: str, *, map_dir: str | None = None) -> ImportResult:
    """Translate the Postfix main.cf at ``path``.  Files it names are looked
    for under ``map_dir`` when given (the whole path below it, then the file
    name alone), else at the path main.cf gives (or beside main.cf).  The
    result's ``files`` are to be written beside the ruleset, under their
    relative names; ``report`` has a line for every parameter of the file
    and every restriction of its restriction lists."""
    return _Translator(path, map_dir).run()
