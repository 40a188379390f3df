"""What the importers of other systems' configurations share.

``postfix_conf`` defines the result types (``ImportResult``, ``ReportLine``,
``Status``); the postfwd and qpsmtpd importers give the same result, with
report lines that name the file of the configuration they come from
(``SourceReportLine``), and build their rulesets with ``RulesetBuilder``:
declarations, rules per hook, names that do not clash, and the relay check
smtpfw's default ruleset makes.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from smtpfw.importers.postfix_conf import _RESERVED, ImportResult, ReportLine, Status, _q, add_map_file

__all__ = ["HOOKS", "ImportResult", "ReportLine", "RulesetBuilder", "SourceReportLine", "Status", "and_", "hook_of",
           "ident", "list_item", "not_", "or_", "q", "read_config", "FALSE", "TRUE"]

HOOKS = ("connect", "helo", "mail", "rcpt", "data")
RANK = {h: i for i, h in enumerate(HOOKS)}

q = _q


@dataclass(frozen=True)
class SourceReportLine(ReportLine):
    """A report line that names its configuration file (``file:line``)."""

    file: str = ""

    def format(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else f"{self.file or '(import)'}"
        return f"{where}: {self.parameter}: {self.status.value}: {self.original}\n    {self.note}"


def read_config(path: str) -> str:
    """The text of a configuration file (UTF-8, undecodable bytes replaced);
    OSError when it cannot be read (a folder is IsADirectoryError)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def ident(text: str, prefix: str = "m_") -> str:
    s = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower()
    if not s or not (s[0].isalpha() or s[0] == "_"):
        s = prefix + s
    return s


def list_item(entry: str) -> str:
    """An entry of an inline list: IPv4 addresses and networks bare, the rest quoted."""
    return entry if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}(/\d{1,2})?", entry) else q(entry)


def network(text: str) -> tuple[str | None, str]:
    """A network or address as an smtpfw list entry, with a note when its
    host bits were set; (None, why) when it is neither."""
    t = text.strip().strip("[]")
    try:
        net = ipaddress.ip_network(t, strict=False)
    except ValueError:
        return None, f"`{text}` is not an IP address or network"
    shown = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    note = ""
    if "/" in t and str(net.network_address) != t.split("/")[0]:
        note = f"`{text}` has host bits set: written as {shown}, the network it stands for"
    return shown, note


# ---- conditions ------------------------------------------------------------------
#
# A condition is a string in the rule language; TRUE and FALSE stand for the
# conditions that always / never hold, so that a test postfwd or qpsmtpd can
# decide from the configuration alone is simplified away.

TRUE = "\x00true"
FALSE = "\x00false"


def _depths(text: str):
    """(position, parenthesis depth after it) of each character of
    ``text`` outside quoted strings."""
    depth = 0
    i = 0
    in_str = False
    while i < len(text):
        ch = text[i]
        if in_str:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        else:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            yield i, depth
        i += 1


def _top_level(text: str, word: str):
    """Where ``word`` (" or ", " and ") stands in ``text`` outside quotes
    and parentheses."""
    return (i for i, depth in _depths(text) if depth == 0 and text.startswith(word, i))


def _top_level_or(expr: str) -> bool:
    return next(_top_level(expr, " or "), None) is not None


def paren(expr: str) -> str:
    return f"({expr})" if _top_level_or(expr) else expr


def or_(parts: list[str]) -> str:
    out: list[str] = []
    for p in parts:
        if p == TRUE:
            return TRUE
        if p == FALSE or p in out:
            continue
        out.append(p)
    if not out:
        return FALSE
    if len(out) == 1:
        return out[0]
    return "(" + " or ".join(out) + ")"


def and_(parts: list[str]) -> str:
    out: list[str] = []
    for p in parts:
        if p == FALSE:
            return FALSE
        if p == TRUE or p in out:
            continue
        out.append(p)
    if not out:
        return TRUE
    return " and ".join(paren(p) for p in out)


def not_(expr: str) -> str:
    if expr == TRUE:
        return FALSE
    if expr == FALSE:
        return TRUE
    m = re.fullmatch(r"not \((.*)\)", expr)
    if m and _balanced(m.group(1)):
        return m.group(1)
    if expr.startswith("(") and expr.endswith(")") and _balanced(expr[1:-1]):
        return f"not {expr}"
    if re.fullmatch(r"not (tagged )?[A-Za-z_][A-Za-z0-9_.]*", expr):
        return expr[4:]
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", expr) or re.fullmatch(r"tagged [A-Za-z_][A-Za-z0-9_]*", expr):
        return f"not {expr}"
    return f"not ({expr})"


def _balanced(expr: str) -> bool:
    depth = 0
    for _i, depth in _depths(expr):
        if depth < 0:
            return False
    return depth == 0


# the fields of the rule language, by the hook that first knows them
_FIELD_HOOK = {
    "client": "connect", "listener": "connect", "time": "connect", "score": "connect", "session": "connect",
    "helo": "helo", "esmtp": "helo", "tls": "helo", "spf": "mail",
    "sender": "mail", "auth": "mail", "mail": "mail",
    "rcpt": "rcpt", "rcpts": "rcpt", "greylist": "rcpt",
    "message": "data", "header": "data", "headers": "data", "dkim": "data", "dmarc": "data",
    "virus": "data", "spam": "data",
}


def hook_of(expr: str) -> str:
    """The first hook in which every field a condition or text reads is known."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    rank = 0
    for m in re.finditer(r"(?<![\w.])([a-z_]+)(?:\.[a-z_0-9.]+)?", text):
        hook = _FIELD_HOOK.get(m.group(1))
        if hook is not None:
            rank = max(rank, RANK[hook])
    return HOOKS[rank]


def wrap(text: str, indent: str = "        ", width: int = 110) -> str:
    """A long rule broken before its top-level `and`s (newlines do not
    matter in the rule language)."""
    if len(text) <= width:
        return text
    parts: list[str] = []
    start = 0
    for i in _top_level(text, " and "):
        parts.append(text[start:i])
        start = i + 1
    parts.append(text[start:])
    return ("\n" + indent).join(parts)


# ---- the ruleset -----------------------------------------------------------------

@dataclass
class Rule:
    rid: str
    action: str
    cond: str = TRUE
    comments: list[str] = field(default_factory=list)

    def text(self) -> str:
        head = f"[{self.rid}] {self.action}"
        if self.cond in (TRUE, ""):
            return head
        return wrap(f"{head} if {self.cond}")


class RulesetBuilder:
    """Declarations and rules, rendered in hook order."""

    def __init__(self, header: list[str]):
        self.header = header
        self.options: list[str] = []
        self.decls: list[str] = []
        self.blocks: dict[str, list[Rule | str]] = {h: [] for h in HOOKS}
        self.names: set[str] = set()
        self.rule_ids: set[str] = set()
        self.files: dict[str, str] = {}

    def fresh(self, base: str) -> str:
        base = ident(base)
        if base in _RESERVED:
            base += "_list"
        name, n = base, 2
        while name in self.names or name in _RESERVED:
            name = f"{base}_{n}"
            n += 1
        self.names.add(name)
        return name

    def rid(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.:-]+", "-", base).strip("-") or "rule"
        if not (base[0].isalpha() or base[0] == "_"):
            base = "r-" + base
        rid, n = base, 2
        while rid in self.rule_ids:
            rid = f"{base}-{n}"
            n += 1
        self.rule_ids.add(rid)
        return rid

    def declare(self, text: str, comment: str | None = None) -> None:
        self.decls += [f"# {c}" for c in (comment or "").split("\n") if c] + [text]

    def add_file(self, base: str, content: str) -> str:
        return add_map_file(self.files, base, content)

    def comment(self, hook: str, text: str) -> None:
        self.blocks[hook].append(text if text.startswith("#") else f"# {text}")

    def rule(self, hook: str, rid_base: str, action: str, cond: str = TRUE, comments: list[str] | None = None) -> str:
        rule = Rule(self.rid(rid_base), action, cond, list(comments or []))
        self.blocks[hook].append(rule)
        return rule.rid

    def render(self) -> str:
        out = list(self.header) + [""]
        if self.options:
            out += self.options + [""]
        if self.decls:
            out += self.decls + [""]
        for hook in HOOKS:
            items = self.blocks[hook]
            if not any(isinstance(i, Rule) for i in items):
                continue
            out.append(f"on {hook}:")
            for item in items:
                if isinstance(item, Rule):
                    out += [f"    {c}" for c in item.comments]
                    out += [f"    {line}" for line in item.text().split("\n")]
                else:
                    out.append(f"    {item}")
            out.append("")
        while out and out[-1] == "":
            out.pop()
        return "\n".join(out) + "\n"
