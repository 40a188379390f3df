"""Postfix regexp_table(5) and pcre_table(5) maps, on one RE2 set.

Syntax (both man pages, "TABLE FORMAT"):

``/pattern/flags result``
    the result when the pattern occurs in the value;
``!/pattern/flags result``
    the result when it does *not* (no ``$n`` in the result then);
``/pattern1/flags!/pattern2/flags result``
    (regexp tables only) when pattern1 occurs and pattern2 does not;
``if /pattern/flags`` ... ``endif``, ``if !/pattern/flags`` ... ``endif``
    the lines in between apply only when the condition holds; they nest;
    ``if`` and ``endif`` are case-insensitive, as in Postfix;
blank lines, ``#`` comments, continuation lines
    as in every Postfix table (``smtpfw.maps.base``).

The delimiter is any character that is not a letter, digit or white space
(``/`` by custom); a backslash before it keeps it in the pattern.  Flags
toggle (``ii`` is no change).  regexp: ``i`` (case-insensitive: on by
default), ``m`` (multi-line: ``^``/``$`` at line breaks, ``.`` not across
them; off), ``x`` (extended syntax: on; toggled off the pattern is a POSIX
*basic* regular expression).  pcre: ``i`` (on), ``m`` (off), ``s`` (``.``
matches a line break: on), ``x`` (spaces and comments ignored: off), ``A``
(anchored at the start: off), ``E`` (``$`` only at the very end: RE2's
``$`` always is, so a no-op), ``U`` (ungreedy), ``X`` (unknown escapes are
errors: RE2's always are, so a no-op).  Any other flag is E304.

"TABLE SEARCH ORDER": patterns are tried in file order against the whole
value (no parent-domain or user@domain splitting); the first that applies
wins.  "TEXT SUBSTITUTION": ``$1``..``$9`` (any number up to the pattern's
group count), ``${n}`` and ``$(n)`` are replaced by that group of the match
("" when the group took no part), ``$$`` is a ``$``; a ``$`` followed by
anything else, a non-numeric ``$name``, ``$0``, a number above the group
count or a ``$n`` in a negated line are E304, and the line is skipped, as
Postfix skips it.

Where smtpfw differs from Postfix, it is to fail safe and say so:

- a line Postfix would skip with a warning is E304 (and skipped): no
  closing delimiter, an unknown flag, no result, a bad ``$`` reference, an
  ``endif`` without ``if``, text that is not a pattern line; extra text
  after ``if``/``endif`` is an E304 *warning* and ignored, as in Postfix;
- an ``if`` whose pattern cannot be used (E401/E404) disables its whole
  block, where Postfix drops only the ``if`` line and so applies the
  block's lines to every value; an ``if`` without ``endif`` runs to the end
  of the file (E304, as Postfix's "more IFs than ENDIFs");
- a pattern RE2 cannot run (backreferences, lookaround, ...) is E404 with
  the rewrite; an invalid one is E401 (``smtpfw.maps.regex``).

Values are folded (lower-case) before lookup, so a case-sensitive pattern
(the ``i`` flag toggled) with upper-case letters never matches.

Lookup: all patterns (rules, negated ones, ``if`` conditions) are in one
RE2 set searched once per lookup; a DFA answers which patterns occur in one
pass over the value, whatever the number of patterns.  When the table has
no negation and no ``if``, the winner is the lowest index the set reports;
otherwise the candidates (rules whose pattern occurred, and the negated
rules) are checked in file order against the set's answer.  Only the
winning pattern runs again, and only when its result uses ``$n``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import re2  # type: ignore[import-untyped]

from smtpfw.diagnostics import Code, Diagnostic, Severity, Span
from smtpfw.maps.base import LogicalLine, MapHit
from smtpfw.maps.regex import PCRE, POSIX, Regex, compile_pattern, set_matcher

REGEXP_FLAGS = "imx"
PCRE_FLAGS = "imsxAEUX"


@dataclass(frozen=True, slots=True)
class _Pattern:
    negated: bool
    body: str               # between the delimiters, as written
    flags: str
    start: int              # offset of the first `!` or the delimiter in the line
    body_start: int         # offset of body[0]
    end: int                # offset after the flags


@dataclass(slots=True)
class _Rule:
    key: str                                # the pattern(s) as written
    line: int
    value: str                              # the result as written
    parts: tuple[str | int, ...] | None     # the result split at $n, or None when it has none
    regex: Regex | None                     # the first pattern, for $n
    first: int                              # set index of the first pattern
    conds: tuple[tuple[int, bool], ...]     # (set index, must occur) for the rule to apply
    value_span: Span
    hit: MapHit | None                      # the answer, when it has no $n


class RegexpMap:
    """A regexp_table(5) (``fmt="regexp"``) or pcre_table(5) (``fmt="pcre"``) map."""

    __slots__ = ("fmt", "file", "_rules", "_match", "_simple", "_by_pattern", "_negated")

    def __init__(self, fmt: str, file: str, rules: list[_Rule], patterns: list[str]) -> None:
        self.fmt = fmt
        self.file = file
        self._rules = rules
        self._match: Callable[[bytes], list[int]] = _matcher(patterns)
        by_pattern: dict[int, list[int]] = {}
        negated: list[int] = []
        for r, rule in enumerate(rules):
            if (rule.first, True) in rule.conds:
                by_pattern.setdefault(rule.first, []).append(r)
            else:
                negated.append(r)
        self._by_pattern = {p: tuple(rs) for p, rs in by_pattern.items()}
        self._negated = tuple(negated)
        # No `!`, no `if`, no second pattern: every pattern is some rule's
        # own, numbered in file order, so the first rule to apply is the one
        # of the lowest pattern that occurs.
        firsts = _first_rules(rules)
        self._simple = not negated and len(firsts) == len(patterns) and \
            all(len(rule.conds) == 1 for rule in rules) and all(rule.first == i for i, rule in enumerate(firsts))

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"RegexpMap({self.fmt}, {self.file!r}, {len(self._rules)} rules)"

    def entries(self) -> Iterator[tuple[str, str, Span]]:
        for rule in self._rules:
            yield rule.key, rule.value, rule.value_span

    def lookup(self, value: str, ftype: str = "string") -> MapHit | None:
        hits = self._match(value.encode("utf-8", "surrogatepass"))
        rule: _Rule | None
        if self._simple:
            if not hits:
                return None
            rule = self._rules[self._by_pattern[min(hits)][0]]
        else:
            rule = self._first_applying(hits)
            if rule is None:
                return None
        if rule.hit is not None:
            return rule.hit
        return MapHit(self._expand(rule, value), rule.key, rule.line)

    def _first_applying(self, hits: list[int]) -> _Rule | None:
        by_pattern = self._by_pattern
        candidates = [r for p in hits for r in by_pattern.get(p, ())]
        candidates.extend(self._negated)
        if not candidates:
            return None
        candidates.sort()
        occurred = set(hits)
        rules = self._rules
        for r in candidates:
            rule = rules[r]
            for p, want in rule.conds:
                if (p in occurred) is not want:
                    break
            else:
                return rule
        return None

    @staticmethod
    def _expand(rule: _Rule, value: str) -> str:
        assert rule.parts is not None and rule.regex is not None
        groups = rule.regex.captures(value)
        if groups is None:              # cannot happen: the set said it occurs
            groups = ("",) * (rule.regex.groups + 1)
        return "".join(part if isinstance(part, str) else groups[part] for part in rule.parts)


def _first_rules(rules: list[_Rule]) -> list[_Rule]:
    """The first rule of each pattern (later ones with the same pattern never apply)."""
    seen: set[int] = set()
    out = []
    for rule in rules:
        if rule.first not in seen:
            seen.add(rule.first)
            out.append(rule)
    return out


def _matcher(patterns: list[str]) -> Callable[[bytes], list[int]]:
    """The set's search function; a table too large for one set is split."""
    if not patterns:
        return lambda data: []
    try:
        return set_matcher(patterns)
    except re2.error:
        if len(patterns) == 1:      # cannot happen: each pattern compiled on its own
            return lambda data: []
    half = len(patterns) // 2
    left, right = _matcher(patterns[:half]), _matcher(patterns[half:])
    return lambda data: left(data) + [half + i for i in right(data)]


# ---------------------------------------------------------------------------
# parsing

class _Parser:
    def __init__(self, fmt: str, file: str) -> None:
        self.fmt = fmt
        self.file = file
        self.diags: list[Diagnostic] = []
        self.rules: list[_Rule] = []
        self.patterns: list[str] = []
        self.index: dict[str, int] = {}
        # open `if`s: (line, condition (set index, want) or None when the if is unusable)
        self.ifs: list[tuple[int, tuple[int, bool] | None]] = []
        self.seen: dict[tuple, int] = {}

    def error(self, message: str, span: Span, help: str | None = None,
              severity: Severity | None = None) -> None:
        self.diags.append(Diagnostic(Code.E304_MAP_ENTRY_MALFORMED, message, span, help=help, severity=severity))

    def parse_line(self, ll: LogicalLine, *, inline: Span | None = None, value: str | None = None,
                   number: int = 0) -> None:
        """One logical line; for an inline map, the pattern (``ll.text``)
        and its ``value`` come separately and every diagnostic is at ``inline``."""
        text = ll.text

        def span(offset: int = 0, width: int | None = None) -> Span:
            return inline if inline is not None else ll.span(self.file, offset, width)

        head = text[:5].lower()
        if value is None and head.startswith("if") and not (len(text) > 2 and text[2].isascii()
                                                             and text[2].isalnum()):
            self.parse_if(ll, span)
            return
        if value is None and head == "endif" and not (len(text) > 5 and text[5].isascii() and text[5].isalnum()):
            self.parse_endif(ll, span)
            return
        if text[0].isalnum():
            self.error("not a pattern line: a line is `/pattern/flags result`, `if /pattern/` or `endif`",
                       span(0, len(text.split(None, 1)[0])),
                       "start the pattern with a delimiter such as `/`" if inline is None else
                       "write the key as `/pattern/flags`")
            return
        first = self.pattern(text, 0, span)
        if first is None:
            return
        end = first.end
        second = None
        if self.fmt == POSIX and end < len(text) and text[end] == "!":
            second = self.pattern(text, end, span)
            if second is None:
                return
            end = second.end
        key = text[:end]
        if value is None:
            rest = text[end:]
            value = rest.strip()
            value_offset = len(text) - len(rest.lstrip())
            if not value:
                self.error("no result after the pattern", span(0, end),
                           "write the result after the pattern, e.g. `/^dsl-/ REJECT dynamic address`")
                return
            if rest[:1] and not rest[0].isspace():
                self.error(f"unknown flag `{rest[0]}` after the pattern", span(end, 1),
                           self.flag_help())
                return
        else:
            value_offset = 0
            if end < len(text):
                self.error(f"unexpected text `{text[end:]}` after the pattern", span(end),
                           "the key of an inline pattern map is one `/pattern/flags`")
                return
        parts = _template(value)
        if isinstance(parts, str):
            self.error(f"bad `$` reference in the result: {parts}", span(value_offset, len(value)),
                       "write `$1`..`$9` or `${n}` for a group of the match, `$$` for a dollar sign")
            return
        numbers = [p for p in parts if isinstance(p, int)]
        if numbers and first.negated:
            self.error("`$n` in the result of a negated pattern: a pattern that does not occur has no groups",
                       span(value_offset, len(value)), "remove the `$n`, or drop the `!`")
            return
        regex = self.compile(first, span)
        cond2 = None
        if second is not None:
            regex2 = self.compile(second, span)
            if regex2 is None:
                return
            cond2 = (self.add(regex2.pattern), not second.negated)
        if regex is None:
            return
        if numbers and max(numbers) > regex.groups:
            self.error(f"`${max(numbers)}` in the result, but the pattern has "
                       f"{regex.groups or 'no'} group{'s' if regex.groups != 1 else ''}",
                       span(value_offset, len(value)),
                       "groups are the parts of the pattern in `(...)`, numbered from 1")
            return
        if any(cond is None for _, cond in self.ifs):
            return                  # inside an unusable `if`: never applies (reported at the if)
        own = (self.add(regex.pattern), not first.negated)
        conds = tuple(c for _, c in self.ifs if c is not None) + (own,) + ((cond2,) if cond2 else ())
        dup_key = (tuple(line for line, _ in self.ifs), conds)
        line = ll.line if inline is None else number
        if dup_key in self.seen:
            self.diags.append(Diagnostic(Code.W303_LIST_ENTRY_DUPLICATE,
                                         f"`{key}` is already on line {self.seen[dup_key]}: this line never applies",
                                         span(0, end), help="remove one of them"))
            return
        self.seen[dup_key] = ll.line
        text_parts = None if not numbers else parts
        literal = "".join(p for p in parts if isinstance(p, str)) if not numbers else value
        rule = _Rule(key, line, value, text_parts, regex if numbers else None, own[0], conds,
                     span(value_offset, len(value)), None)
        if not numbers:
            rule.hit = MapHit(literal, key, line)
        self.rules.append(rule)

    def parse_if(self, ll: LogicalLine, span: Callable[..., Span]) -> None:
        text = ll.text
        start = 2
        while start < len(text) and text[start].isspace():
            start += 1
        pat = self.pattern(text, start, span) if start < len(text) else None
        if start >= len(text):
            self.error("`if` without a pattern", span(0, 2), "write `if /pattern/` (or `if !/pattern/`)")
        cond = None
        if pat is not None:
            extra = text[pat.end:].strip()
            if extra:
                self.error(f"text after the `if` pattern is ignored: `{extra}`",
                           span(pat.end + len(text[pat.end:]) - len(text[pat.end:].lstrip()), len(extra)),
                           "an `if` line holds only its pattern; the lines up to `endif` say what to answer "
                           "(and do not indent them: an indented line continues the one before)",
                           Severity.WARNING)
            regex = self.compile(pat, span)
            if regex is not None:
                cond = (self.add(regex.pattern), not pat.negated)
        self.ifs.append((ll.line, cond))     # None: the block never applies

    def parse_endif(self, ll: LogicalLine, span: Callable[..., Span]) -> None:
        text = ll.text
        if not self.ifs:
            self.error("`endif` without `if`: ignored", span(0, 5), "remove it, or add the `if` it closes")
            return
        extra = text[5:].strip()
        if extra:
            self.error(f"text after `endif` is ignored: `{extra}`", span(len(text) - len(extra), len(extra)),
                       "an `endif` line holds only `endif`", Severity.WARNING)
        self.ifs.pop()

    def finish(self) -> None:
        for line, _ in self.ifs:
            self.error("`if` without `endif`: it applies to the end of the file",
                       Span.point(self.file, line, 1, 2), "add `endif` where the block ends")

    def flag_help(self) -> str:
        if self.fmt == POSIX:
            return "regexp: tables know the flags i, m and x (each toggles); for Perl syntax use a pcre: table"
        return "pcre: tables know the flags i, m, s, x, A, E, U and X (each toggles)"

    def pattern(self, text: str, p: int, span: Callable[..., Span]) -> _Pattern | None:
        """The `[!...]/body/flags` starting at ``text[p]``."""
        start = p
        negated = False
        while p < len(text) and text[p] == "!":
            negated = not negated
            p += 1
        while p < len(text) and text[p].isspace():
            p += 1
        if p >= len(text):
            self.error("no pattern", span(start, 1), "write `/pattern/`")
            return None
        delim = text[p]
        if delim.isalnum():
            self.error(f"a pattern starts with a delimiter such as `/`, not `{delim}`", span(p, 1),
                       "write `/pattern/`")
            return None
        q = p + 1
        while q < len(text) and text[q] != delim:
            q += 2 if text[q] == "\\" else 1
        if q >= len(text):
            self.error(f"no closing `{delim}` after the pattern", span(p), f"end the pattern with `{delim}` "
                       f"(write `\\{delim}` for a `{delim}` inside it)")
            return None
        f = q + 1
        allowed = REGEXP_FLAGS if self.fmt == POSIX else PCRE_FLAGS
        while f < len(text) and not text[f].isspace() and not (self.fmt == POSIX and text[f] == "!"):
            if text[f] not in allowed:
                self.error(f"unknown flag `{text[f]}` after the pattern", span(f, 1), self.flag_help())
                return None
            f += 1
        return _Pattern(negated, text[p + 1:q], text[q + 1:f], start, p + 1, f)

    def compile(self, pat: _Pattern, span: Callable[..., Span]) -> Regex | None:
        def toggled(flag: str) -> bool:
            return pat.flags.count(flag) % 2 == 1

        if self.fmt == POSIX:
            multiline = toggled("m")
            regex, err = compile_pattern(pat.body, POSIX, ignore_case=not toggled("i"), multiline=multiline,
                                         dotall=not multiline, basic=toggled("x"))
        else:
            regex, err = compile_pattern(pat.body, PCRE, ignore_case=not toggled("i"), multiline=toggled("m"),
                                         dotall=not toggled("s"), extended=toggled("x"),
                                         anchored=toggled("A"), ungreedy=toggled("U"))
        if err is not None:
            offset = pat.body_start + (err.offset or 0)
            self.diags.append(err.diagnostic(span(offset, 1 if err.offset is not None else len(pat.body))))
            return None
        return regex

    def add(self, pattern: str) -> int:
        index = self.index.get(pattern)
        if index is None:
            index = self.index[pattern] = len(self.patterns)
            self.patterns.append(pattern)
        return index


def _template(value: str) -> tuple[str | int, ...] | str:
    """A result split into text and group numbers (Postfix mac_parse: `$n`,
    `${n}`, `$(n)`, `$$`), or what is wrong with it."""
    parts: list[str | int] = []
    buf: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c != "$":
            buf.append(c)
            i += 1
            continue
        if value.startswith("$$", i):
            buf.append("$")
            i += 2
            continue
        i += 1
        if i < n and value[i] in "({":
            opening, closing = value[i], ")" if value[i] == "(" else "}"
            level, j = 1, i + 1
            while j < n and level:
                level += (value[j] == opening) - (value[j] == closing)
                j += 1
            if level:
                return f"`{value[i - 1:]}` is not closed"
            name = value[i + 1:j - 1]
            i = j
        else:
            j = i
            while j < n and value[j].isascii() and (value[j].isalnum() or value[j] == "_"):
                j += 1
            name = value[i:j]
            i = j
        if not name:
            return "a `$` with no group number after it"
        if not (name.isascii() and name.isdigit()):
            return f"`{name}` is not a group number"
        if int(name) < 1:
            return f"`${name}`: groups are numbered from 1"
        if buf:
            parts.append("".join(buf))
            buf = []
        parts.append(int(name))
    if buf:
        parts.append("".join(buf))
    return tuple(parts)


def parse_regexp_lines(lines: list[LogicalLine], file: str, fmt: str) -> tuple[RegexpMap, list[Diagnostic]]:
    """A map from a table's logical lines; ``fmt`` "regexp" or "pcre"."""
    parser = _Parser(POSIX if fmt == "regexp" else PCRE, file)
    for ll in lines:
        parser.parse_line(ll)
    parser.finish()
    return RegexpMap(fmt, file, parser.rules, parser.patterns), parser.diags


def regexp_map_from_pairs(pairs, fmt: str) -> tuple[RegexpMap, list[Diagnostic]]:
    """An inline map: each key a `/pattern/flags`, each value its result."""
    file = pairs[0][2].file if pairs else "<inline>"
    parser = _Parser(POSIX if fmt == "regexp" else PCRE, file)
    for number, (key, value, span) in enumerate(pairs, 1):
        key = key.strip()
        if not key:
            parser.error("an empty pattern", span, "write `/pattern/`")
            continue
        parser.parse_line(LogicalLine(key, span.line), inline=span, value=value, number=number)
    return RegexpMap(fmt, file, parser.rules, parser.patterns), parser.diags
