"""Diagnostics: one type for every problem found in rules, lists or config.

The parser, the compiler, `smtpfw lint`, `smtpfw test` and `serve` (when it
loads or reloads rules) all report through ``Diagnostic``; the formatters in
``smtpfw.lint_output`` print them.  Codes live in one registry (``CODES``) so
they stay stable and documented (docs/lint.md).
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


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    name: str
    severity: Severity
    summary: str


def _c(code: str, name: str, severity: Severity, summary: str) -> Code:
    return Code(code, name, severity, summary)


E, W, H = Severity.ERROR, Severity.WARNING, Severity.HINT

CODES: dict[str, Code] = {
    c.code: c
    for c in [
        # reading and syntax
        _c("E001", "io-error", E, "a rule file cannot be read"),
        _c("E002", "syntax-error", E, "the text is not valid rule syntax"),
        _c("E003", "include-error", E, "an include is missing, is not a .rules file or includes itself"),
        _c("W004", "invisible-character", W, "an invisible character (no-break or zero-width space, bidi control) in a file"),
        # names
        _c("E101", "unknown-hook", E, "`on` names a hook that does not exist"),
        _c("E102", "unknown-field", E, "a condition or placeholder names an unknown field"),
        _c("E103", "unknown-list", E, "a condition names a list that is not declared"),
        _c("E104", "unknown-zone", E, "a condition names a DNS zone that is not declared"),
        _c("E105", "unknown-plugin", E, "`run` names a plugin that is not declared"),
        _c("E106", "unknown-option", E, "`option` names an unknown option or gives a bad value"),
        _c("E107", "duplicate-name", E, "a list, zone, plugin or rule id is declared twice"),
        _c("E108", "rule-outside-hook", E, "a rule appears before any `on <hook>:`"),
        _c("E109", "hook-never-runs", E, "`on disconnect:` names a hook the server never runs"),
        # fields and types
        _c("E201", "field-not-available", E, "a field is used in a hook where it is not yet known"),
        _c("E202", "type-mismatch", E, "a value or operator does not fit the field's type"),
        _c("E203", "action-not-allowed", E, "an action cannot be used in this hook"),
        # lists
        _c("E301", "list-file-missing", E, "a list file is missing or unreadable"),
        _c("E302", "list-entry-malformed", E, "a list entry is not a valid address, domain or network"),
        _c("W303", "list-entry-duplicate", W, "a list has the same entry twice"),
        # patterns
        _c("E401", "bad-regex", E, "a regular expression does not compile"),
        _c("W402", "pattern-never-matches", W, "a glob or regex can never match the field"),
        _c("W403", "catastrophic-backtracking", W, "a regular expression can take exponential time"),
        # replies
        _c("E501", "reply-code-contradicts-action", E, "a reply code does not fit the action"),
        _c("E502", "bad-enhanced-code", E, "an enhanced status code is malformed or contradicts the reply code"),
        _c("E503", "unknown-placeholder", E, "reply or log text names an unknown {placeholder} or leaves one unclosed"),
        # rule structure
        _c("W601", "unreachable-rule", W, "a rule comes after an unconditional terminal rule"),
        _c("W602", "shadowed-rule", W, "an earlier rule already matches everything this rule matches"),
        _c("W603", "unused-declaration", W, "a list, zone or plugin is declared but never used"),
        # policy
        _c("E701", "open-relay", E, "an untrusted client can relay to a non-local domain"),
        _c("W702", "rejects-null-sender", W, "the null sender <> is rejected at MAIL"),
        _c("H703", "public-zone-without-codes", H, "a public DNSBL is used without a return-code filter"),
        _c("E704", "monitor-mode-relays", E, "`option mode = \"monitor\"` lets mail to any domain through"),
        # plugins
        _c("E801", "plugin-load-error", E, "a plugin cannot be imported or constructed"),
        # ruleset tests (smtpfw test)
        _c("E901", "expectation-failed", E, "a ruleset test expectation did not hold"),
        _c("E902", "expectation-syntax", E, "a ruleset test line cannot be read"),
    ]
}


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    help: str | None = None
    severity: Severity | None = None  # None = the code's default

    @property
    def level(self) -> Severity:
        return self.severity or CODES[self.code].severity

    @property
    def name(self) -> str:
        return CODES[self.code].name

    def sort_key(self):
        s = self.span
        return (s.file, s.line, s.column, self.code) if s else ("", 0, 0, self.code)

    def to_json(self) -> dict:
        s = self.span
        return {
            "code": self.code,
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
