"""Diagnostics: one type for every problem found in rules, lists or config.

The parser, the compiler, `smtpfw lint`, `smtpfw test` and `serve` (when it
loads or reloads rules) all report through ``Diagnostic``; the formatters in
``smtpfw.lint_output`` print them.  Codes live in one registry (``CODES``) so
they stay stable and documented (docs/lint.md): each is a member of
``Code`` (``Code.E302_LIST_ENTRY_MALFORMED``), which producers name
instead of writing "E302".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    HINT = "hint"

    @property
    def rank(self) -> int:
        return {"error": 2, "warning": 1, "hint": 0}[self.value]


@dataclass(frozen=True, slots=True)
class Span:
    """A source range: 1-based line and column, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def point(cls, file: str, line: int, column: int, width: int = 1) -> "Span":
        return cls(file, line, column, line, column + max(width, 1))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


E, W, H = Severity.ERROR, Severity.WARNING, Severity.HINT


class Code(enum.StrEnum):
    """A diagnostic code.  A member is its code string
    (``Code.E302_LIST_ENTRY_MALFORMED == "E302"``) and carries its name,
    default severity and summary; docs/lint.md documents each under the
    anchor ``code.anchor`` (``#e302``).  Producers use the members, never
    the bare strings, so a code cannot be misspelt or go unregistered."""

    label: str
    severity: Severity
    summary: str

    def __new__(cls, code: str, label: str, severity: Severity, summary: str) -> "Code":
        member = str.__new__(cls, code)
        member._value_ = code
        member.label, member.severity, member.summary = label, severity, summary
        return member

    @property
    def code(self) -> str:
        return self.value

    @property
    def anchor(self) -> str:
        """The section of docs/lint.md that explains it."""
        return self.value.lower()

    # reading and syntax
    E001_IO_ERROR = "E001", "io-error", E, "a rule file cannot be read"
    E002_SYNTAX_ERROR = "E002", "syntax-error", E, "the text is not valid rule syntax"
    E003_INCLUDE_ERROR = "E003", "include-error", E, "an include is missing, is not a .rules file or includes itself"
    W004_INVISIBLE_CHARACTER = ("W004", "invisible-character", W,
                                "an invisible character (no-break or zero-width space, bidi control) in a file")
    # names
    E101_UNKNOWN_HOOK = "E101", "unknown-hook", E, "`on` names a hook that does not exist"
    E102_UNKNOWN_FIELD = "E102", "unknown-field", E, "a condition or placeholder names an unknown field"
    E103_UNKNOWN_LIST = "E103", "unknown-list", E, "a condition names a list that is not declared"
    E104_UNKNOWN_ZONE = "E104", "unknown-zone", E, "a condition names a DNS zone that is not declared"
    E105_UNKNOWN_PLUGIN = "E105", "unknown-plugin", E, "`run` names a plugin that is not declared"
    E106_UNKNOWN_OPTION = "E106", "unknown-option", E, "`option` names an unknown option or gives a bad value"
    E107_DUPLICATE_NAME = "E107", "duplicate-name", E, "a list, zone, plugin or rule id is declared twice"
    E108_RULE_OUTSIDE_HOOK = "E108", "rule-outside-hook", E, "a rule appears before any `on <hook>:`"
    E109_HOOK_NEVER_RUNS = "E109", "hook-never-runs", E, "`on disconnect:` names a hook the server never runs"
    E110_UNKNOWN_CLASS = "E110", "unknown-class", E, "`use` names a rule class that is not declared"
    # fields and types
    E201_FIELD_NOT_AVAILABLE = "E201", "field-not-available", E, "a field is used in a hook where it is not yet known"
    E202_TYPE_MISMATCH = "E202", "type-mismatch", E, "a value or operator does not fit the field's type"
    E203_ACTION_NOT_ALLOWED = "E203", "action-not-allowed", E, "an action cannot be used in this hook"
    # lists
    E301_LIST_FILE_MISSING = "E301", "list-file-missing", E, "a list file is missing or unreadable"
    E302_LIST_ENTRY_MALFORMED = ("E302", "list-entry-malformed", E,
                                 "a list entry is not a valid address, domain or network")
    W303_LIST_ENTRY_DUPLICATE = "W303", "list-entry-duplicate", W, "a list has the same entry twice"
    E304_MAP_ENTRY_MALFORMED = ("E304", "map-entry-malformed", E,
                                "a map line has no value, a bad key or a pattern the engine cannot run")
    W305_MAP_VALUE_NOT_ACTION = ("W305", "map-value-not-action", W,
                                 "a map applied as an access map has a value that is not an action")
    E306_TABLE_CONFIG_ERROR = ("E306", "table-config-error", E,
                               "a database or LDAP map's settings file lacks a setting, has a bad value or "
                               "one smtpfw does not support")
    W307_TABLE_PARAMETER_UNKNOWN = ("W307", "table-parameter-unknown", W,
                                    "a database or LDAP map's settings file has a setting smtpfw does not know")
    # patterns
    E401_BAD_REGEX = "E401", "bad-regex", E, "a regular expression does not compile"
    W402_PATTERN_NEVER_MATCHES = "W402", "pattern-never-matches", W, "a glob or regex can never match the field"
    E404_REGEX_NOT_LINEAR = ("E404", "regex-not-linear", E,
                             "a regular expression needs backtracking (backreference, lookaround) or a PCRE-only escape")
    # replies
    E501_REPLY_CODE_CONTRADICTS_ACTION = ("E501", "reply-code-contradicts-action", E,
                                          "a reply code does not fit the action")
    E502_BAD_ENHANCED_CODE = ("E502", "bad-enhanced-code", E,
                              "an enhanced status code is malformed or contradicts the reply code")
    E503_UNKNOWN_PLACEHOLDER = ("E503", "unknown-placeholder", E,
                                "reply or log text names an unknown {placeholder} or leaves one unclosed")
    # rule structure
    W601_UNREACHABLE_RULE = "W601", "unreachable-rule", W, "a rule comes after an unconditional terminal rule"
    W602_SHADOWED_RULE = "W602", "shadowed-rule", W, "an earlier rule already matches everything this rule matches"
    W603_UNUSED_DECLARATION = "W603", "unused-declaration", W, "a list, zone or plugin is declared but never used"
    W604_FIELD_NOT_IN_MODE = "W604", "field-not-in-mode", W, "a rule tests a field the mode it runs in never has"
    W605_SCORE_UNREACHABLE = ("W605", "score-unreachable", W,
                              "a score test's threshold cannot be reached by the rules that add to the score")
    # policy
    E701_OPEN_RELAY = "E701", "open-relay", E, "an untrusted client can relay to a non-local domain"
    W702_REJECTS_NULL_SENDER = "W702", "rejects-null-sender", W, "the null sender <> is rejected at MAIL"
    H703_PUBLIC_ZONE_WITHOUT_CODES = ("H703", "public-zone-without-codes", H,
                                      "a public DNSBL is used without a return-code filter")
    E704_MONITOR_MODE_RELAYS = ("E704", "monitor-mode-relays", E,
                                "`option mode = \"monitor\"` lets mail to any domain through")
    W705_PUBLIC_RESOLVER = ("W705", "public-resolver", W,
                            "the config asks DNS lists through a public resolver that they refuse")
    W706_ZONE_KIND_MISMATCH = ("W706", "zone-kind-mismatch", W,
                               "a well-known domain list is declared as an IP dnsbl, or an IP list as an rhsbl")
    # plugins
    E801_PLUGIN_LOAD_ERROR = "E801", "plugin-load-error", E, "a plugin cannot be imported or constructed"
    # ruleset tests (smtpfw test)
    E901_EXPECTATION_FAILED = "E901", "expectation-failed", E, "a ruleset test expectation did not hold"
    E902_EXPECTATION_SYNTAX = "E902", "expectation-syntax", E, "a ruleset test line cannot be read"
    # smtpfw itself
    E999_INTERNAL_ERROR = "E999", "internal-error", E, "checking the rules failed: a bug in smtpfw, not in the rules"


CODES: dict[str, Code] = {c.value: c for c in Code}


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    help: str | None = None
    severity: Severity | None = None  # None = the code's default

    def __post_init__(self) -> None:
        """An unregistered code is a bug here, not a surprise in the output."""
        code = CODES.get(self.code)
        if code is None:
            raise ValueError(f"unregistered diagnostic code {self.code!r}: add it to diagnostics.Code")
        object.__setattr__(self, "code", code)

    @property
    def level(self) -> Severity:
        return self.severity or CODES[self.code].severity

    @property
    def name(self) -> str:
        return CODES[self.code].label

    def sort_key(self):
        s = self.span
        return (s.file, s.line, s.column, self.code) if s else ("", 0, 0, self.code)

    def to_json(self) -> dict:
        s = self.span
        return {
            "code": str(self.code),
            "name": self.name,
            "severity": self.level.value,
            "message": self.message,
            "file": s.file if s else None,
            "line": s.line if s else None,
            "column": s.column if s else None,
            "end_line": s.end_line if s else None,
            "end_column": s.end_column if s else None,
            "help": self.help,
        }


def has_errors(diags) -> bool:
    return any(d.level is Severity.ERROR for d in diags)


def did_you_mean(word: str, candidates, n: int = 1) -> str | None:
    """The closest candidate to a misspelt word, or None."""
    import difflib

    cands = list(candidates)
    best = difflib.get_close_matches(word, cands, n=n, cutoff=0.6)
    if not best:
        lowered = {c.lower(): c for c in cands}
        best = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
        best = [lowered[b] for b in best]
    return best[0] if best else None


def nearest_file(path: str, suffix: str = "") -> str | None:
    """For a path that does not exist: the closest name of a file in its
    folder (ending in ``suffix``), so a misspelt include or list file gets a
    did-you-mean like a misspelt name does."""
    import os

    folder, name = os.path.split(path)
    if os.path.exists(path):
        return None
    try:
        names = [n for n in os.listdir(folder or ".") if n.endswith(suffix)
                 and os.path.isfile(os.path.join(folder, n))]
    except OSError:
        return None
    return did_you_mean(name, names)
