"""Regular expressions whose shape makes a backtracking engine (Python's
``re``) take exponential or high-polynomial time on a text that almost
matches: lint warns about them (W403) until rules get a linear-time engine.

Two shapes, found on the parsed pattern (``re._parser``), not on its text:

- a nested quantifier: an unbounded repetition of a part that itself
  repeats a variable number of times (``(a+)+``, ``(\\w+\\.?)*``,
  ``(a{1,3})*``), or any repetition (``{2,}``) of a part that repeats without
  bound (``(a+){2,9}``).  A text can then be split among the iterations in
  very many ways, and a failing match tries them all.  An inner repetition
  followed by a character it cannot match (``(\\w+\\.)*``: a word, then a
  dot) stops at one place only, so it does not count;
- a repeated alternation whose alternatives can match the same text
  (``(a|a)*``, ``(a|aa)*``, ``(.|\\s)*``, ``(a|b|ab)*``): some alternative's
  text is also matched by repeating the others.

Possessive repetitions (``a++``) and atomic groups (``(?>...)``) never give
back what they matched, so they are not counted: they are also the fix.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

try:
    import re._compiler as _compiler  # type: ignore[import-not-found]
    import re._parser as _parser  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_compile as _compiler  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

MAXREPEAT = _parser.MAXREPEAT
_REPEATS = (_parser.MAX_REPEAT, _parser.MIN_REPEAT)
_CANDIDATES = "a0 .-_xA@\t"      # characters tried to make a sample of a one-character item
_ONE_CHAR = (_parser.LITERAL, _parser.NOT_LITERAL, _parser.ANY, _parser.IN, _parser.CATEGORY)
MAX_DEPTH = 50


@dataclass(frozen=True)
class Backtracking:
    """Why a pattern can backtrack catastrophically, and how to fix it."""

    reason: str
    fix: str


def find(source: str, flags: int = re.IGNORECASE) -> Backtracking | None:
    """The first catastrophic-backtracking shape in a pattern, or None
    (also None for a pattern that does not parse: E401 reports that)."""
    try:
        parsed = _parser.parse(source, flags)
        return _walk(parsed.data, parsed.state, flags, 0)
    except Exception:  # lint never fails on a pattern
        return None


def _walk(items, state, flags: int, depth: int) -> Backtracking | None:
    if depth > MAX_DEPTH:
        return None
    for op, av in items:
        if op in _REPEATS:
            lo, hi, body = av
            found = _repeated(lo, hi, body, state, flags)
            if found is not None:
                return found
        for sub in _children(op, av):
            found = _walk(sub, state, flags, depth + 1)
            if found is not None:
                return found
    return None


def _children(op, av) -> list:
    """The sub-sequences of one parsed item."""
    if op in _REPEATS or op is _parser.POSSESSIVE_REPEAT:
        return [av[2]]
    if op is _parser.SUBPATTERN:
        return [av[-1]]
    if op is _parser.ATOMIC_GROUP:
        return [av]
    if op is _parser.BRANCH:
        return list(av[1])
    if op in (_parser.ASSERT, _parser.ASSERT_NOT):
        return [av[1]]
    if op is _parser.GROUPREF_EXISTS:
        return [s for s in av[1:] if s is not None]
    return []


def _repeated(lo: int, hi: int, body, state, flags: int) -> Backtracking | None:
    """Is repeating ``body`` (lo..hi times) one of the two shapes?"""
    if hi < 2:
        return None
    inner = _inner_repeat(_unwrap(list(body)), hi != MAXREPEAT, state, flags)
    if inner is not None:
        return Backtracking(
            "a repetition of a part that itself repeats, so a text can be split among them in many ways "
            "(nested quantifier, as in `(a+)+`)",
            "make the inner repetition possessive or the group atomic: they never give back what "
            "they matched, so there is one way to try (`(\\w+\\.)*` → `(\\w++\\.)*`, `(a+)+` → `(?>a+)+`)")
    overlap = _overlapping_alternatives(body, state, flags)
    if overlap is not None:
        return Backtracking(
            f"a repeated group whose alternatives match the same text (`{_shown(overlap)}` is matched by one "
            "alternative and by repeating another, as in `(a|aa)*`)",
            "make the alternatives exclusive (`(a|b)*` → `[ab]*`), or the group atomic (`(?>a|aa)*`)")
    return None


def _inner_repeat(items, unbounded_only: bool, state, flags: int, depth: int = 0):
    """A backtracking repetition inside ``items`` (the repeated body at depth
    0) that can match a variable number of times (without bound, if
    ``unbounded_only``) and is not followed by a character it cannot match
    (at the end of the body, what follows is the body's next iteration)."""
    if depth > MAX_DEPTH:
        return None
    for k, (op, av) in enumerate(items):
        if op is _parser.ATOMIC_GROUP or op is _parser.POSSESSIVE_REPEAT:
            continue
        if op in _REPEATS:
            lo, hi, body = av
            variable = (hi == MAXREPEAT) if unbounded_only else (hi != lo)
            following = items[k + 1:] or (items if depth == 0 else [])
            if variable and not _delimited(body, following, state, flags):
                return op, av
        for sub in _children(op, av):
            found = _inner_repeat(sub, unbounded_only, state, flags, depth + 1)
            if found is not None:
                return found
    return None


def _delimited(body, following, state, flags: int) -> bool:
    """A repetition of ``body`` followed by ``following`` stops at one place
    only: what must come next starts with a character the body cannot
    start with (checked over printable ASCII)."""
    mine, next_ = _first_char(body), _first_char(following)
    if mine is None or next_ is None:
        return False
    a = _compiler.compile(_parser.SubPattern(state, [mine]), flags)
    b = _compiler.compile(_parser.SubPattern(state, [next_]), flags)
    return not any(a.fullmatch(c) and b.fullmatch(c) for c in string.printable)


def _first_char(items, depth: int = 0):
    """The one-character item every match of ``items`` starts with, or None
    if that is not one item (optional parts, alternatives, nothing)."""
    for op, av in items:
        if depth > MAX_DEPTH:
            return None
        if op in (_parser.AT, _parser.ASSERT, _parser.ASSERT_NOT):
            continue
        if op in _ONE_CHAR:
            return op, av
        if op is _parser.SUBPATTERN or op is _parser.ATOMIC_GROUP:
            return _first_char(_children(op, av)[0], depth + 1)
        if (op in _REPEATS or op is _parser.POSSESSIVE_REPEAT) and av[0] >= 1:
            return _first_char(av[2], depth + 1)
        return None
    return None


def _overlapping_alternatives(body, state, flags: int) -> str | None:
    """A text one alternative of ``body`` matches that repeating the other
    alternatives also matches, or None."""
    items = _unwrap(list(body))
    at = next((i for i, (op, _av) in enumerate(items) if op is _parser.BRANCH), None)
    if at is None:
        return None
    alternatives = list(items[at][1][1])
    before, after = items[:at], items[at + 1:]
    for i, alt in enumerate(alternatives):
        others = alternatives[:i] + alternatives[i + 1:]
        one = before + list(alt) + after
        sample = _sample(one, state, flags)
        if not sample:
            continue
        rest = before + ([(_parser.BRANCH, (None, others))] if len(others) > 1 else list(others[0])) + after
        repeated = [(_parser.MAX_REPEAT, (1, MAXREPEAT, _parser.SubPattern(state, rest)))]
        if _fullmatch(one, sample, state, flags) and _fullmatch(repeated, sample, state, flags):
            return sample
    return None


def _unwrap(items: list) -> list:
    """A body that is one group: the group's content."""
    while len(items) == 1 and items[0][0] is _parser.SUBPATTERN:
        items = list(items[0][1][-1])
    return items


def _sample(items, state, flags: int, depth: int = 0) -> str | None:
    """A short non-empty text ``items`` matches (None if unknown)."""
    if depth > MAX_DEPTH:
        return None
    out = []
    for op, av in items:
        if op is _parser.LITERAL:
            out.append(chr(av))
        elif op in _REPEATS or op is _parser.POSSESSIVE_REPEAT:
            part = _sample(av[2], state, flags, depth + 1)
            if part is None:
                return None
            out.append(part * max(av[0], 1) if av[1] else "")
        elif op is _parser.SUBPATTERN or op is _parser.ATOMIC_GROUP:
            part = _sample(_children(op, av)[0], state, flags, depth + 1)
            if part is None:
                return None
            out.append(part)
        elif op is _parser.BRANCH:
            part = next((p for p in (_sample(a, state, flags, depth + 1) for a in av[1]) if p is not None), None)
            if part is None:
                return None
            out.append(part)
        elif op in (_parser.AT, _parser.ASSERT, _parser.ASSERT_NOT):
            continue
        elif op in _ONE_CHAR:
            ch = next((c for c in _CANDIDATES if _fullmatch([(op, av)], c, state, flags)), None)
            if ch is None:
                return None
            out.append(ch)
        else:
            return None     # back-references and the like: no sample
    return "".join(out)


def _fullmatch(items, text: str, state, flags: int) -> bool:
    pattern = _compiler.compile(_parser.SubPattern(state, list(items)), flags)
    return pattern.fullmatch(text) is not None


def _shown(text: str) -> str:
    return text.replace("\t", "\\t").replace("\n", "\\n")
