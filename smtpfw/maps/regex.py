"""Regular expressions on RE2: linear time, whatever the pattern and the text.

Three dialects are read and translated to RE2 syntax:

``python``
    Rule regexes (``matches``; docs/rules.md).  RE2 reads nearly all of
    Python's syntax; translated: ``\\Z`` (end of text) -> ``\\z``, ``{,n}`` ->
    ``{0,n}``, ``(?<name>``/``(?'name'`` -> ``(?P<name>``, ``\\uXXXX``,
    ``\\UXXXXXXXX`` and ``\\N{NAME}`` -> ``\\x{...}``, ``(?#comments)`` and the
    ``(?a)``/``(?u)`` flags dropped, a leading ``(?x)`` applied (whitespace
    and ``#`` comments removed outside classes).
``pcre``
    Postfix pcre_table(5) patterns (Perl syntax): as above (but ``{,n}``
    stays literal text, as in PCRE before 10.43), and PCRE-only escapes
    (``\\h``, ``\\R``, ``\\K``, ...) are refused with the rewrite.
``posix``
    Postfix regexp_table(5) patterns: POSIX extended regular expressions as
    the C library (glibc) reads them, translated: inside a bracket
    expression a backslash is an ordinary character (``[\\.]`` is a backslash
    or a dot), ``[[:alpha:]]`` classes are kept (RE2 has them),
    ``[[=e=]]`` and ``[[.-.]]`` become the character; outside brackets the
    GNU escapes ``\\w \\W \\s \\S \\b \\B`` are kept, ``\\``` and ``\\'`` become
    ``\\A`` and ``\\z``, ``{,n}`` becomes ``{0,n}``.  Any other backslash
    before a letter or digit is refused: POSIX reads ``\\d`` as the letter
    ``d``, which is never what was meant.  With Postfix's ``x`` flag the
    pattern is a *basic* regular expression (``\\(...\\)``, ``\\{m,n\\}``,
    ``\\|``), translated the same way.  Submatches for ``$1`` follow POSIX's
    leftmost-longest rule (RE2 ``longest_match``).

What RE2 cannot run — backreferences, lookahead and lookbehind, atomic
groups, possessive repetition, conditionals, recursion, PCRE-only escapes
and verbs, more than 1,000 repetitions — is refused as
``E404_REGEX_NOT_LINEAR`` with the rewrite in ``help``; a pattern that is
invalid in its own dialect is ``E401_BAD_REGEX`` (for ``python`` and
``pcre``, Python's ``re`` is asked whether the source is valid at all).

Differences that remain, and do not matter for the folded one-line values
rules and maps test: ``$`` matches only at the very end (Python and PCRE
also match before a final newline), and ``\\d``, ``\\w``, ``\\b`` are ASCII.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import re2  # type: ignore[import-untyped]

from smtpfw.diagnostics import Code, Diagnostic, Span

PYTHON, PCRE, POSIX = "python", "pcre", "posix"
DIALECTS = (PYTHON, PCRE, POSIX)
MAX_REPEAT = 1000           # RE2's limit on {n,m}
SET_MAX_MEM = 64 << 20      # memory budget of a map's pattern set (RE2's default is 8 MiB)


@dataclass(frozen=True, slots=True)
class RegexError:
    """Why a pattern cannot be used.  ``code`` is E401_BAD_REGEX (invalid in
    its own dialect) or E404_REGEX_NOT_LINEAR (valid, but needs backtracking
    or a construct RE2 lacks); ``help`` says how to rewrite it; ``offset``
    is the 0-based index in the source of the construct, when known."""

    code: Code
    message: str
    help: str | None = None
    offset: int | None = None

    @property
    def not_linear(self) -> bool:
        return self.code is Code.E404_REGEX_NOT_LINEAR

    def diagnostic(self, span: Span | None = None) -> Diagnostic:
        return Diagnostic(self.code, self.message, span, help=self.help)


class Regex:
    """A compiled pattern.  ``search`` answers yes/no (RE2's DFA, no
    submatches); ``captures`` gives the whole match and each group."""

    __slots__ = ("source", "pattern", "groups", "groupindex", "_re", "_raw", "_search", "_needs", "_test")

    def __init__(self, source: str, pattern: str, compiled, needs: Needs | None = None) -> None:
        self.source = source                # as written
        self.pattern = pattern              # in RE2 syntax, flags included: what a re2.Set takes
        self._re = compiled
        self.groups: int = compiled.groups
        self.groupindex: dict[str, int] = dict(compiled.groupindex)
        self._raw: Callable | None = getattr(getattr(compiled, "_regexp", None), "Match", None)
        self._search: Callable[[bytes], list[int]] | None = None
        self._needs = needs                 # what every match needs (see _prefilter)
        self._test: Callable[[str], bool] | None = None

    def __repr__(self) -> str:
        return f"Regex({self.source!r})"

    def search(self, text: str) -> bool:
        """Does the pattern occur in ``text``?"""
        test = self._test
        if test is None:
            test = self._test = self.tester()
        return test(text)

    def tester(self) -> Callable[[str], bool]:
        """``search`` as one function, for the engine's hot path.  A call into
        RE2 costs about 0.5 µs whatever the pattern (the binding's dispatch,
        the buffer, releasing the GIL), more than Python's ``re`` needs for a
        whole short search; so a text that lacks what every match needs (a
        literal, a first or last character: ``_prefilter``) is answered here."""
        match = self._search
        if match is None:
            match = self._search = self._searcher()
        if self._needs is None:
            return lambda text: bool(match(text.encode("utf-8", "surrogatepass")))
        atoms, first, last = self._needs

        def test(text: str) -> bool:
            if text and text.isascii():     # else RE2 decides (Unicode case folding: K matches k)
                low = text.lower()
                if first is not None and low[0] not in first:
                    return False
                if last is not None and low[-1] not in last:
                    return False
                if atoms is not None:
                    for atom in atoms:
                        if atom in low:
                            break
                    else:
                        return False
            return bool(match(text.encode("utf-8", "surrogatepass")))
        return test

    def _searcher(self) -> Callable[[bytes], list[int]]:
        """A one-pattern RE2 set: a yes/no answer from the DFA alone, several
        times faster than a search for the match's position."""
        try:
            return _one_pattern_set(self.pattern)
        except re2.error:               # cannot happen: the pattern compiled on its own
            compiled = self._re
            return lambda data: [] if compiled.search(data) is None else [0]

    def captures(self, text: str) -> tuple[str, ...] | None:
        """(whole match, group 1, ...) of the first match, "" for a group that
        took no part; None when there is no match."""
        data = text.encode("utf-8", "surrogatepass")     # a value decoded with surrogateescape must not crash
        if self._raw is None:           # a google-re2 without the inner object
            m = self._re.search(text)
            return None if m is None else tuple(g or "" for g in (m.group(0), *m.groups()))
        spans = self._raw(_UNANCHORED, data, 0, len(data))
        if spans[0][0] < 0:
            return None
        return tuple("" if start < 0 else data[start:end].decode("utf-8", "replace") for start, end in spans)


_UNANCHORED = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)


def re2_options(*, longest: bool = False, max_mem: int | None = None):
    options = re2.Options()
    options.log_errors = False          # errors are reported as diagnostics, not on stderr
    options.longest_match = longest
    if max_mem is not None:
        options.max_mem = max_mem
    return options


def set_matcher(patterns: list[str], max_mem: int | None = None) -> Callable[[bytes], list[int]]:
    """One RE2 set searching for all ``patterns`` (RE2 syntax, each with its
    own inline flags): a function from UTF-8 text to the indices of the
    patterns that occur in it, in no particular order.  Raises re2.error
    when a pattern is rejected or the set is too large to compile."""
    s = re2.Set.SearchSet(re2_options(max_mem=SET_MAX_MEM if max_mem is None else max_mem))
    for p in patterns:
        s.Add(p)
    s.Compile()
    inner = getattr(s, "_set", None)
    if inner is not None:
        return inner.Match             # list[int], [] for none: no wrapper per call
    return lambda data: s.Match(data) or []


def _one_pattern_set(pattern: str) -> Callable[[bytes], list[int]]:
    return set_matcher([pattern], max_mem=8 << 20)


def compile_regex(source: str, *, ignore_case: bool = True,
                  dialect: str = PYTHON) -> tuple[Regex | None, RegexError | None]:
    """Compile a rule regex (``dialect="python"``) for RE2: (Regex, None), or
    (None, RegexError) saying whether it is invalid (E401) or valid but not
    runnable in linear time (E404), with the rewrite in ``help``."""
    regex, error = compile_pattern(source, dialect, ignore_case=ignore_case)
    if regex is not None:
        regex.search("")                # build the matcher now, not in the first session
    return regex, error


def compile_pattern(source: str, dialect: str, *, ignore_case: bool = True, multiline: bool = False,
                    dotall: bool = False, extended: bool = False, basic: bool = False,
                    anchored: bool = False, ungreedy: bool = False) -> tuple[Regex | None, RegexError | None]:
    """``compile_regex`` with every flag a Postfix table can set:
    ``multiline`` (^ and $ at line breaks), ``dotall`` (. matches a line
    break), ``extended`` (PCRE x: spaces and # comments ignored), ``basic``
    (POSIX basic instead of extended syntax), ``anchored`` (PCRE A),
    ``ungreedy`` (PCRE U)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown regex dialect {dialect!r}")
    try:
        body = _Translator(source, dialect, extended=extended, basic=basic).run()
    except _Refused as refused:
        return None, refused.error
    flags = ("i" if ignore_case else "") + ("m" if multiline else "") + ("s" if dotall else "") + \
            ("U" if ungreedy else "")
    pattern = (f"(?{flags})" if flags else "") + (rf"\A(?:{body})" if anchored else body)
    try:
        compiled = re2.compile(pattern, re2_options(longest=dialect == POSIX))
    except re2.error as err:
        return None, _classify(source, dialect, _text(err), ignore_case)
    needs = _prefilter(source, ignore_case) if dialect == PYTHON and not extended else None
    return Regex(source, pattern, compiled, needs), None


def _text(err: Exception) -> str:
    arg = err.args[0] if err.args else str(err)
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _classify(source: str, dialect: str, re2_message: str, ignore_case: bool) -> RegexError:
    """RE2 refused what the translator let through: invalid, or only beyond RE2?"""
    if "repetition" in re2_message and "size" in re2_message:
        return RegexError(Code.E404_REGEX_NOT_LINEAR, f"RE2 cannot run this pattern: {re2_message}",
                          f"RE2 repeats at most {MAX_REPEAT} times: use `+` or `*`, or a smaller count")
    if "too large" in re2_message or "too big" in re2_message:
        return RegexError(Code.E404_REGEX_NOT_LINEAR, f"the pattern is too large for RE2: {re2_message}",
                          "split it into several simpler patterns, or use smaller repetition counts")
    if dialect == POSIX:
        return RegexError(Code.E401_BAD_REGEX, f"invalid regular expression: {re2_message}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            re.compile(source, re.IGNORECASE if ignore_case else 0)
        except re.error as err:
            hint = None
            bad = re.match(r"bad escape \\(.)", err.msg)
            if bad and bad.group(1) in _PCRE_ESCAPES:
                hint = _PCRE_ESCAPES[bad.group(1)][1]
            return RegexError(Code.E401_BAD_REGEX, f"invalid regular expression: {err.msg}"
                              + (f" at position {err.pos + 1}" if err.pos is not None else ""),
                              hint, err.pos)
        except (OverflowError, RecursionError, ValueError) as err:
            return RegexError(Code.E401_BAD_REGEX, f"invalid regular expression: {err}")
    return RegexError(Code.E404_REGEX_NOT_LINEAR, f"RE2 cannot run this pattern: {re2_message}",
                      "see RE2's syntax (https://github.com/google/re2/wiki/Syntax) for what it supports")


# ---------------------------------------------------------------------------
# prefilter: what every match needs, checked in Python before calling RE2

_MAX_ATOMS = 8          # more alternatives than this: not worth checking one by one
_MAX_CLASS = 16         # a character class of more characters is no atom
# (strings one of which every match contains, or None; the characters a match
# must begin with when the pattern is anchored at the start, or None; the same
# for the end), all lower-case
Needs = tuple[tuple[str, ...] | None, frozenset[str] | None, frozenset[str] | None]


def _prefilter(source: str, ignore_case: bool) -> Needs | None:
    """What every match of ``source`` needs, for ``Regex.tester`` to answer
    "no" without RE2 when a text lacks it: one of some strings; when the
    pattern is anchored at the start (end), a first (last) character of
    some set.  None when nothing useful is known.

    The answer is only ever "no": any doubt goes to RE2.  It looks at ASCII texts
    only (every envelope value, nearly every header), lower-cased on both
    sides, so case-insensitive patterns, and Unicode case folding (the
    Kelvin sign matches `k`), need no thought: an ASCII text holding
    neither `K` nor `k` cannot match a `K` in any case.  The pattern is read
    with Python's own parser (``python`` dialect: the rule's syntax as
    written), of which only literals, small classes, groups, alternations
    and repetitions are used."""
    import re._parser as sre_parse  # type: ignore[import-not-found]  # Python's own regex parser (3.11+)
    from re import _constants as C  # type: ignore[attr-defined]
    flags = re.IGNORECASE if ignore_case else 0
    try:
        with warnings.catch_warnings():
            # Python reads RE2's `[[:digit:]]` as a nested set: a warning, and
            # another meaning.  Whatever Python warns about or cannot read
            # (`\p{Greek}`, `\Q...\E`, `\x{41}`) gets no prefilter.
            warnings.simplefilter("error")
            tree = sre_parse.parse(source, flags)
    except (re.error, Warning, OverflowError, RecursionError, ValueError):
        return None

    def chars(op, av) -> frozenset[str] | None:
        """The characters one item matches, lower-cased; None if many or unknown."""
        if op is C.LITERAL:
            c = chr(av)
            return frozenset(c.lower()) if c.isascii() else None
        if op is C.IN:
            out: set[str] = set()
            for iop, iav in av:
                if iop is C.LITERAL and chr(iav).isascii():
                    out.add(chr(iav).lower())
                elif iop is C.RANGE and iav[1] < 128 and iav[1] - iav[0] < _MAX_CLASS:
                    out.update(chr(c).lower() for c in range(iav[0], iav[1] + 1))
                else:
                    return None              # NEGATE, CATEGORY (\d: Unicode in Python, ASCII in RE2), ...
            return frozenset(out) if len(out) <= _MAX_CLASS else None
        return None

    def needed(items) -> tuple[str, ...] | None:
        """Strings one of which every match of the sequence contains."""
        best: tuple[str, ...] | None = None
        run: list[str] = []

        def better(cand):
            nonlocal best
            if cand is None or len(cand) > _MAX_ATOMS:
                return
            if best is None or (min(map(len, cand)), -len(cand)) > (min(map(len, best)), -len(best)):
                best = cand
        for op, av in items:
            single = chars(op, av) if op is C.LITERAL else None
            if single is not None:
                run.append(next(iter(single)))
                continue
            if run:
                better(("".join(run),))
                run = []
            better(needed_one(op, av))
        if run:
            better(("".join(run),))
        return best

    def needed_one(op, av) -> tuple[str, ...] | None:
        if op is C.IN:
            cs = chars(op, av)
            return tuple(sorted(cs)) if cs else None
        if op is C.SUBPATTERN:
            return needed(av[-1])
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            return needed(av[2]) if av[0] >= 1 else None
        if op is C.ATOMIC_GROUP:
            return needed(av)
        if op is C.BRANCH:
            out: list[str] = []
            for branch in av[1]:
                got = needed(branch)
                if got is None:
                    return None
                out += got
            return tuple(dict.fromkeys(out)) if len(set(out)) <= _MAX_ATOMS else None
        return None

    def firsts(items, reverse: bool) -> tuple[frozenset[str] | None, bool]:
        """(characters a match of the sequence can begin with (end with, if
        ``reverse``), or None if any; whether it can match the empty string)."""
        out: set[str] = set()
        for op, av in (reversed(items) if reverse else items):
            got, empty = firsts_one(op, av, reverse)
            if got is None:
                return None, False
            out |= got
            if not empty:
                return frozenset(out), False
        return frozenset(out), True

    def firsts_one(op, av, reverse: bool) -> tuple[frozenset[str] | None, bool]:
        if op in (C.LITERAL, C.IN):
            return chars(op, av), False
        if op is C.SUBPATTERN:
            return firsts(av[-1], reverse)
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            got, empty = firsts(av[2], reverse)
            return got, empty or av[0] == 0
        if op is C.BRANCH:
            out: set[str] = set()
            empty = False
            for branch in av[1]:
                got, e = firsts(branch, reverse)
                if got is None:
                    return None, False
                out |= got
                empty = empty or e
            return frozenset(out), empty
        return None, False              # ., \d, assertions, anchors inside: anything

    def anchored(items, start: bool) -> list | None:
        """The sequence without its first (last) item, when that item is `^`
        or `\\A` (`$` or `\\Z`) and so every match starts (ends) there."""
        if not items:
            return None
        op, av = items[0] if start else items[-1]
        if op is C.AT and av in ((C.AT_BEGINNING, C.AT_BEGINNING_STRING) if start else (C.AT_END, C.AT_END_STRING)):
            return items[1:] if start else items[:-1]
        return None

    items = list(tree)
    atoms = needed(items)
    first = last = None
    if not tree.state.flags & re.MULTILINE:         # `(?m)`: ^ and $ at every line
        for start in (True, False):
            rest = anchored(items, start)
            if rest is not None:
                got, empty = firsts(rest, not start)
                if got is not None and not empty:
                    if start:
                        first = got
                    else:
                        last = got
    if atoms is None and first is None and last is None:
        return None
    return atoms, first, last


# ---------------------------------------------------------------------------
# translation

class _Refused(Exception):
    def __init__(self, error: RegexError) -> None:
        super().__init__(error.message)
        self.error = error


def _not_linear(message: str, help: str, offset: int) -> _Refused:
    return _Refused(RegexError(Code.E404_REGEX_NOT_LINEAR, message, help, offset))


def _invalid(message: str, help: str | None, offset: int) -> _Refused:
    return _Refused(RegexError(Code.E401_BAD_REGEX, message, help, offset))


# PCRE escapes RE2 does not have: what they are, and the rewrite
_PCRE_ESCAPES = {
    "K": ("`\\K` (reset the start of the match)",
          "delete it: it only moves where the reported match starts, which neither rules nor map results use"),
    "G": ("`\\G` (where the previous match ended)", "write `^`: a lookup searches once, from the start"),
    "R": ("`\\R` (any line break)", "write `(?:\\r\\n|\\n|\\r)`"),
    "h": ("`\\h` (horizontal white space)", "write `[ \\t]`"),
    "H": ("`\\H` (not horizontal white space)", "write `[^ \\t]`"),
    "v": ("`\\v` (vertical white space in PCRE)", "write `[\\n\\x0b\\f\\r]`"),
    "V": ("`\\V` (not vertical white space)", "write `[^\\n\\x0b\\f\\r]`"),
    "e": ("`\\e` (the escape character)", "write `\\x1b`"),
    "X": ("`\\X` (a grapheme cluster)", "write `.`, or `\\P{M}\\p{M}*`"),
    "N": ("`\\N` (not a line break)", "write `[^\\n]`"),
    "c": ("`\\cX` (a control character)", "write the character as `\\xHH`"),
    "o": ("`\\o{...}` (an octal character code)", "write the character as `\\x{HH}`"),
}
_BACKREF_HELP = ("RE2 has no backreferences: list the alternatives instead, e.g. "
                 "`(ab|cd)-\\1` becomes `ab-ab|cd-cd`")
_POSIX_CLASSES = frozenset({"alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower", "print",
                            "punct", "space", "upper", "xdigit"})
_RE2_CLASSES = _POSIX_CLASSES | {"ascii", "word"}
_INTERVAL = re.compile(r"\{(\d*)(,?)(\d*)\}")
_BRE_INTERVAL = re.compile(r"\\\{(\d*)(,?)(\d*)\\\}")
_FLAG_GROUP = re.compile(r"\(\?([A-Za-z]*)(?:-([A-Za-z]*))?([:)])")
_HEX = frozenset("0123456789abcdefABCDEF")
_SPACE = " \t\n\r\f\v"


class _Translator:
    """One pass over a pattern: RE2 syntax out, or _Refused."""

    def __init__(self, src: str, dialect: str, *, extended: bool, basic: bool) -> None:
        self.src = src
        self.dialect = dialect
        self.extended = extended and dialect != POSIX
        self.basic = basic and dialect == POSIX
        self.out: list[str] = []
        self.i = 0
        self.branch_start = True        # at the start of the pattern, a group or an alternative

    @property
    def map_context(self) -> bool:
        return self.dialect != PYTHON

    def run(self) -> str:
        src, n = self.src, len(self.src)
        while self.i < n:
            c = src[self.i]
            if self.extended and c in _SPACE:
                self.i += 1
                continue
            if self.extended and c == "#":
                end = src.find("\n", self.i)
                self.i = n if end < 0 else end + 1
                continue
            start = self.i
            was_start = self.branch_start
            self.branch_start = False
            if c == "\\":
                self.escape(was_start)
            elif c == "[":
                self.bracket() if self.dialect == POSIX else self.perl_class()
            elif c == "(":
                self.group(was_start)
            elif c == ")":
                self.emit(r"\)" if self.basic else ")")
            elif c == "|":
                if self.basic:
                    self.emit(r"\|")
                else:
                    self.emit("|")
                    self.branch_start = True
            elif c in "*+?":
                if self.basic and c != "*":
                    self.emit("\\" + c)
                elif self.basic and was_start:
                    self.emit(r"\*")
                else:
                    self.emit(c)
                    self.after_quantifier()
            elif c == "{":
                self.brace()
            elif c == "^" and self.basic and not was_start:
                self.emit(r"\^")
            elif c == "^" and self.basic:
                self.emit("^")
                self.branch_start = True    # `^*` in a basic RE: the * is literal
            elif c == "$" and self.basic and not self.bre_end(self.i + 1):
                self.emit(r"\$")
            elif c == "}" and self.basic:
                self.emit(r"\}")
            else:
                self.emit(c)
            assert self.i > start
        return "".join(self.out)

    def emit(self, text: str, consumed: int = 1) -> None:
        self.out.append(text)
        self.i += consumed

    def bre_end(self, j: int) -> bool:
        """In a basic RE, `$` is an anchor only at the end of the pattern,
        a group or an alternative."""
        return j == len(self.src) or self.src.startswith((r"\)", r"\|"), j)

    # -- quantifiers ----------------------------------------------------

    def after_quantifier(self) -> None:
        src, j = self.src, self.i
        nxt = src[j] if j < len(src) else ""
        if self.dialect == POSIX:
            self.combine_quantifiers()
            return
        if nxt == "?":              # lazy
            self.emit("?")
            nxt = src[self.i] if self.i < len(src) else ""
        if nxt == "+":
            raise _not_linear(
                f"possessive repetition `{src[j - 1]}+` needs a backtracking engine",
                "drop the extra `+` (write `a+` for `a++`): possessive repetition only stops backtracking, "
                "which RE2 never does; check the pattern does not rely on it never giving characters back "
                "(`a++a` never matches, `a+a` does)", j)

    def combine_quantifiers(self) -> None:
        """POSIX reads `a+?` as `(a+)?` and `a**` as `(a*)*`; RE2 reads the
        first as a lazy `+` and refuses the second.  Two of `*`, `+`, `?` in
        a row repeat a repetition: write the one operator they amount to
        (`+?` is `*`, `*+` is `*`, `??` is `?`)."""
        src = self.src
        while self.out and self.out[-1] in ("*", "+", "?"):
            j = self.i
            if not self.basic and j < len(src) and src[j] in "*+?":
                outer, width = src[j], 1
            elif self.basic and src.startswith("*", j):
                outer, width = "*", 1
            elif self.basic and src.startswith(("\\+", "\\?"), j):
                outer, width = src[j + 1], 2
            else:
                break
            inner = self.out[-1]
            optional = inner in "*?" or outer in "*?"
            unbounded = inner in "*+" or outer in "*+"
            self.out[-1] = "*" if optional and unbounded else "+" if unbounded else "?"
            self.i += width
        j = self.i
        if self.out and self.out[-1][:1] in ("{", "*", "+", "?") and j < len(src) and (
                src[j] in "*+?{" if not self.basic else src.startswith(("*", "\\+", "\\?", "\\{"), j)) and (
                self.out[-1][:1] == "{" or src[j] == "{" or src.startswith("\\{", j)):
            raise _not_linear("a repetition of a repetition `{m,n}` followed by another operator",
                              "make the grouping explicit: `(a{2,3})*`", j)

    def brace(self) -> None:
        src, i = self.src, self.i
        if self.basic:
            self.emit(r"\{")
            return
        m = _INTERVAL.match(src, i)
        if m is None or not (m.group(1) or (m.group(2) and m.group(3))):
            self.emit(r"\{")
            return
        low, comma, high = m.groups()
        if not low:                          # {,n}
            if self.dialect == PCRE:         # literal text in PCRE (before 10.43), as Postfix sees it
                self.emit(r"\{", 1)
                return
            low = "0"
        self.check_count(low, high, i)
        self.emit("{" + low + comma + high + "}", m.end() - i)
        self.after_quantifier()

    def check_count(self, low: str, high: str, offset: int) -> None:
        if high and int(high) < int(low):
            raise _invalid(f"the repetition `{{{low},{high}}}` has its bounds the wrong way round",
                           f"write `{{{high},{low}}}`", offset)
        if int(low) > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
            raise _not_linear(f"a repetition count above {MAX_REPEAT}",
                              f"RE2 repeats at most {MAX_REPEAT} times: use `+` or `*`, or a smaller count",
                              offset)

    # -- groups ---------------------------------------------------------

    def group(self, at_start: bool) -> None:
        src, i = self.src, self.i
        self.branch_start = True
        if self.basic:
            self.emit(r"\(")
            self.branch_start = False
            return
        if src.startswith("(?", i):
            if self.dialect == POSIX:
                raise _invalid("`(?` is not POSIX regular expression syntax",
                               "in a regexp: table `(` cannot be followed by `?`; for Perl syntax such as "
                               "`(?:...)` or `(?i)` use a pcre: table", i)
            self.perl_group(at_start)
            return
        if src.startswith("(*", i) and self.dialect == PCRE and i + 2 < len(src) and \
                (src[i + 2].isupper() or src[i + 2] == ":"):
            end = src.find(")", i)
            verb = src[i:end + 1] if end > 0 else src[i:]
            raise _not_linear(f"`{verb}` is a PCRE control verb", "remove it: RE2 needs no engine settings, and "
                              "backtracking verbs such as (*SKIP) have no meaning without backtracking", i)
        self.emit("(")

    def perl_group(self, at_start: bool) -> None:
        src, i = self.src, self.i
        rest = src[i + 2:i + 4]
        lookarounds = {"=": ("lookahead", False), "!": ("negative lookahead", True),
                       "<=": ("lookbehind", False), "<!": ("negative lookbehind", True)}
        for mark, (name, negative) in lookarounds.items():
            if rest.startswith(mark):
                raise _not_linear(f"`(?{mark}` is a {name}: it needs a backtracking engine",
                                  self.lookaround_help(mark, negative), i)
        if rest.startswith(">"):
            raise _not_linear("`(?>` is an atomic group: it needs a backtracking engine",
                              "write a plain group `(?:...)`: an atomic group only stops backtracking, which "
                              "RE2 never does; check the pattern does not rely on the group never giving "
                              "characters back (`(?>a+)a` never matches, `(?:a+)a` does)", i)
        if rest.startswith("#"):
            end = src.find(")", i)
            if end < 0:
                raise _invalid("a `(?#` comment is not closed", "end it with `)`", i)
            self.i = end + 1
            self.branch_start = at_start
            return
        if rest.startswith("P="):
            raise _not_linear("`(?P=name)` is a backreference", _BACKREF_HELP, i)
        if rest.startswith("P>") or rest.startswith("&") or rest[:1] in ("R", "+") or rest[:1].isdigit() \
                or (rest[:1] == "-" and rest[1:2].isdigit()):
            raise _not_linear("a recursive pattern (`(?R)`, `(?1)`, `(?&name)`) needs a backtracking engine",
                              "RE2 cannot match nested structures: match a fixed depth, or test the parts "
                              "separately", i)
        if rest.startswith("("):
            raise _not_linear("`(?(...)` is a conditional group: it needs a backtracking engine",
                              "write the cases as alternatives `(?:...|...)`", i)
        if rest.startswith("|"):
            raise _not_linear("`(?|` (branch reset) is not supported by RE2",
                              "use a plain group `(?:...)` and renumber the groups that follow", i)
        if rest.startswith("C"):
            raise _not_linear("`(?C` (a PCRE callout) is not supported by RE2", "remove it", i)
        if rest.startswith("P<"):
            self.emit("(?P<", 4)
            return
        if rest.startswith("<") or rest.startswith("'"):
            close = ">" if rest[0] == "<" else "'"
            end = src.find(close, i + 3)
            name = src[i + 3:end] if end > 0 else ""
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise _invalid("a named group needs a name of letters, digits and `_`",
                               "write `(?P<name>...)`", i)
            self.emit(f"(?P<{name}>", end + 1 - i)
            return
        m = _FLAG_GROUP.match(src, i)
        if m is None:
            raise _invalid(f"unknown group syntax `{src[i:i + 4]}`", None, i)
        on, off, closer = m.group(1), m.group(2) or "", m.group(3)
        keep_on: list[str] = []
        keep_off: list[str] = []
        for letters, keep in ((on, keep_on), (off, keep_off)):
            for letter in letters:
                if letter in "imsU":
                    keep.append(letter)
                elif letter in "au" and self.dialect == PYTHON:
                    pass                    # ASCII/Unicode classes: RE2's \d \w \b are ASCII
                elif letter == "x":
                    if keep is keep_on and closer == ")" and self.at_pattern_start() and not self.extended:
                        self.extended = True
                    else:
                        raise _not_linear(
                            "the `x` (extended) flag can only be set at the start of the pattern", (
                                "remove the spaces and comments and the `x`" if not self.map_context else
                                "use the `x` flag after the closing delimiter (/.../x), or remove the spaces"),
                            i)
                else:
                    raise _invalid(f"unknown flag `{letter}` in `{m.group(0)}`",
                                   "RE2 knows the flags i, m, s and U", i)
        flags = "".join(keep_on) + ("-" + "".join(keep_off) if keep_off else "")
        if closer == ")":
            self.emit(f"(?{flags})" if flags else "", m.end() - i)
            self.branch_start = at_start
        else:
            self.emit(f"(?{flags}:" if flags else "(?:", m.end() - i)

    def at_pattern_start(self) -> bool:
        """Only global flag groups such as `(?i)` come before this point."""
        return all(o.startswith("(?") and o.endswith(")") for o in self.out)

    def lookaround_help(self, mark: str, negative: bool) -> str:
        example = {"=": "`foo(?=bar)` becomes `foobar`", "<=": "`(?<=@)example` becomes `@example`"}
        if not negative:
            return f"match the text itself instead: {example[mark]} (or put it in a group)"
        where = ("wrap the line in `if !/.../` ... `endif` (a regexp/pcre table condition)"
                 if self.map_context else "test it in a separate condition: `... and field not matches \"...\"`")
        return f"say what must not be there another way: {where}"

    # -- escapes --------------------------------------------------------

    def escape(self, at_start: bool) -> None:
        src, i = self.src, self.i
        if i + 1 >= len(src):
            raise _invalid("the pattern ends with a lone backslash", "write `\\\\` for a backslash", i)
        c = src[i + 1]
        if self.dialect == POSIX:
            self.posix_escape(c, at_start)
            return
        if c in "123456789":
            if self.dialect == PYTHON and len(src) >= i + 4 and all(ch in "01234567" for ch in src[i + 1:i + 4]):
                self.emit(f"\\x{{{int(src[i + 1:i + 4], 8):x}}}", 4)      # \ooo: an octal character code
                return
            digits = re.match(r"\d+", src[i + 1:i + 3])
            raise _not_linear(f"`\\{digits.group() if digits else c}` is a backreference", _BACKREF_HELP, i)
        if self.dialect == PCRE:
            if c in "gk":
                raise _not_linear(f"`\\{c}` is a backreference", _BACKREF_HELP, i)
            if c in _PCRE_ESCAPES and not (c == "N" and src.startswith("{", i + 2)):
                what, hint = _PCRE_ESCAPES[c]
                raise _not_linear(f"{what} is a PCRE escape RE2 does not have", hint, i)
        if c == "Z":
            self.emit(r"\z", 2)
        elif (c in "pPx" or (c == "N" and self.dialect == PCRE)) and src.startswith("{", i + 2):      # \p{Greek}, \x{263a}: one escape
            end = src.find("}", i + 3)
            if end < 0:
                raise _invalid(f"`\\{c}{{` is not closed by `}}`", None, i)
            self.emit(src[i:end + 1], end + 1 - i)
        elif c == "Q":
            end = src.find(r"\E", i + 2)
            stop = len(src) if end < 0 else end + 2
            self.emit(src[i:stop], stop - i)
        elif c == "u" and self.dialect == PYTHON:
            self.unicode_escape(4)
        elif c == "U" and self.dialect == PYTHON:
            self.unicode_escape(8)
        elif c == "N" and self.dialect == PYTHON and src.startswith("{", i + 2):
            end = src.find("}", i + 3)
            try:
                ch = unicodedata.lookup(src[i + 3:end]) if end > 0 else ""
            except KeyError:
                ch = ""
            if not ch:
                raise _invalid(f"unknown character name in `{src[i:end + 1]}`", None, i)
            self.emit(f"\\x{{{ord(ch):x}}}", end + 1 - i)
        else:
            self.emit(src[i:i + 2], 2)
        self.branch_start = False

    def unicode_escape(self, digits: int) -> None:
        src, i = self.src, self.i
        hexdigits = src[i + 2:i + 2 + digits]
        if len(hexdigits) != digits or not all(h in _HEX for h in hexdigits):
            raise _invalid(f"`\\{src[i + 1]}` needs {digits} hexadecimal digits", None, i)
        self.emit(f"\\x{{{hexdigits}}}", 2 + digits)

    def posix_escape(self, c: str, at_start: bool) -> None:
        i = self.i
        if self.basic and c in "(){}|+?":
            if c == "(":
                self.emit("(", 2)
                self.branch_start = True
            elif c == "{":
                m = _BRE_INTERVAL.match(self.src, i)
                if m is None or not (m.group(1) or (m.group(2) and m.group(3))):
                    raise _invalid("`\\{` does not start an interval `\\{m,n\\}`", "write `{` for a brace", i)
                low, comma, high = m.groups()
                low = low or "0"
                self.check_count(low, high, i)
                self.emit("{" + low + comma + high + "}", m.end() - i)
                self.after_quantifier()
            elif c == "|":
                self.emit("|", 2)
                self.branch_start = True
            elif c in "+?" and at_start:
                self.emit("\\" + c, 2)
            elif c in "+?":
                self.emit(c, 2)
                self.after_quantifier()
            else:
                self.emit(c, 2)
            return
        if c in "wWsSbB":
            self.emit("\\" + c, 2)
        elif c == "`":
            self.emit(r"\A", 2)
        elif c == "'":
            self.emit(r"\z", 2)
        elif c in "<>":
            raise _not_linear(f"`\\{c}` (start or end of a word) is a GNU extension RE2 does not have",
                              "write `\\b` (a word boundary)", i)
        elif c in "123456789":
            raise _not_linear(f"`\\{c}` is a backreference", _BACKREF_HELP, i)
        elif c.isascii() and c.isalnum():
            hint = ("write `[0-9]` or `[[:digit:]]`" if c == "d" else
                    "write `[^0-9]`" if c == "D" else "write the letter without the backslash")
            raise _invalid(
                f"`\\{c}` is not an escape in a POSIX regular expression (a regexp: table): "
                f"Postfix reads it as the letter `{c}`",
                f"{hint}, or make the table a pcre: table for Perl syntax", i)
        elif c.isascii():
            self.emit("\\" + c, 2)      # an escaped punctuation character is itself
        else:
            self.emit(c, 2)

    # -- character classes ----------------------------------------------

    def perl_class(self) -> None:
        """A [...] class in Python/PCRE syntax: RE2 reads the same, except
        PCRE-only escapes, which are refused, and Python's \\u escapes."""
        src, n = self.src, len(self.src)
        start = self.i
        j = start + 1
        parts = ["["]
        if j < n and src[j] == "^":
            parts.append("^")
            j += 1
        if j < n and src[j] == "]":
            parts.append(r"\]")
            j += 1
        while j < n and src[j] != "]":
            c = src[j]
            if c == "\\" and j + 1 < n:
                e = src[j + 1]
                if self.dialect == PCRE and e in _PCRE_ESCAPES:
                    what, hint = _PCRE_ESCAPES[e]
                    raise _not_linear(f"{what} is a PCRE escape RE2 does not have", hint, j)
                if self.dialect == PYTHON and e in "uU":
                    digits = 4 if e == "u" else 8
                    hexdigits = src[j + 2:j + 2 + digits]
                    if len(hexdigits) != digits or not all(h in _HEX for h in hexdigits):
                        raise _invalid(f"`\\{e}` needs {digits} hexadecimal digits", None, j)
                    parts.append(f"\\x{{{hexdigits}}}")
                    j += 2 + digits
                    continue
                parts.append(r"\x08" if e == "b" else src[j:j + 2])     # [\b]: a backspace
                j += 2
            elif c == "[" and src.startswith("[:", j):
                end = src.find(":]", j + 2)
                name = src[j + 2:end].lstrip("^") if end > 0 else ""
                if name not in _RE2_CLASSES:
                    raise _invalid(f"unknown character class `{src[j:end + 2] if end > 0 else src[j:]}`",
                                   "the classes are " + ", ".join(sorted(_POSIX_CLASSES)), j)
                parts.append(src[j:end + 2])
                j = end + 2
            elif c == "[" and src.startswith(("[.", "[="), j) and self.dialect == PCRE:
                raise _invalid("POSIX collating elements (`[.x.]`, `[=x=]`) are not supported by PCRE",
                               "write the character itself", j)
            elif c == "[":
                parts.append(r"\[")
                j += 1
            else:
                parts.append(c)
                j += 1
        if j >= n:
            raise _invalid("a `[` character class is not closed", "end it with `]`; write `\\[` for a bracket",
                           start)
        parts.append("]")
        self.out.append("".join(parts))
        self.i = j + 1

    def bracket(self) -> None:
        """A POSIX bracket expression: a backslash is an ordinary character,
        `]` first is literal, [:class:], [=c=] and [.c.] are recognised."""
        src, n = self.src, len(self.src)
        start = self.i
        j = start + 1
        parts = ["["]
        if j < n and src[j] == "^":
            parts.append("^")
            j += 1
        first = True
        while j < n and (first or src[j] != "]"):
            first = False
            c = src[j]
            if c == "[" and j + 1 < n and src[j + 1] in ":.=":
                delim = src[j + 1]
                end = src.find(delim + "]", j + 2)
                if end < 0:
                    raise _invalid(f"`[{delim}` is not closed by `{delim}]`", None, j)
                name = src[j + 2:end]
                if delim == ":":
                    if name not in _POSIX_CLASSES:
                        raise _invalid(f"unknown character class `[:{name}:]`",
                                       "the classes are " + ", ".join(sorted(_POSIX_CLASSES)), j)
                    parts.append(f"[:{name}:]")
                elif len(name) == 1:
                    parts.append(_class_char(name))     # [=e=] / [.-.]: that character
                else:
                    raise _not_linear(f"`[{delim}{name}{delim}]` (a collating element or equivalence class) "
                                      "is not supported by RE2", "write the characters it stands for", j)
                j = end + 2
            else:
                parts.append("-" if c == "-" else _class_char(c))
                j += 1
        if j >= n:
            raise _invalid("a `[` bracket expression is not closed", "end it with `]`; write `\\[` for a bracket",
                           start)
        parts.append("]")
        self.out.append("".join(parts))
        self.i = j + 1


def _class_char(c: str) -> str:
    """A character as an RE2 class member."""
    return "\\" + c if c in "\\]^[-" else c
