"""Rule text -> AST, with syntax errors a non-programmer can act on.

The lark tree never leaves this module.  Every syntax error becomes one
``Diagnostic`` that says where, what was found, what was expected in words,
and, for a misspelt keyword, what was probably meant.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import lark
from lark import Token, Transformer, v_args

from smtpfw import paths
from smtpfw.diagnostics import Code, Diagnostic, Span, did_you_mean
from smtpfw.lang import ast
from smtpfw.lang.invisible import describe, is_invisible

MAX_SOURCE_BYTES = 16 * 1024 * 1024
MAX_NESTING = 200

HOOKS = ("connect", "helo", "mail", "rcpt", "data", "queue", "disconnect")
NOT_RUN_HOOKS = ("disconnect",)          # known, refused by the compiler (E109)
RUN_HOOKS = tuple(h for h in HOOKS if h not in NOT_RUN_HOOKS)
STATEMENT_KEYWORDS = ("on", "class", "list", "map", "limit", "counter", "zone", "plugin", "option", "include")


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(
        paths.grammar_file().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse(text: str, filename: str) -> tuple[ast.SourceFile | None, list[Diagnostic]]:
    """Parse one rule file.  Never raises: problems come back as diagnostics.
    A byte-order mark (Notepad writes one) is not part of the text."""
    text = text.removeprefix("\ufeff")
    if len(text) > MAX_SOURCE_BYTES:
        return None, [Diagnostic(Code.E001_IO_ERROR, f"rule file is larger than {MAX_SOURCE_BYTES // 2**20} MiB",
                                 Span.point(filename, 1, 1))]
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        return None, [Diagnostic(Code.E002_SYNTAX_ERROR, "the file contains a NUL byte: is it a binary file?",
                                 Span.point(filename, line, 1),
                                 help="rule files are plain UTF-8 text")]
    if _nesting_depth(text) > MAX_NESTING:
        return None, [Diagnostic(Code.E002_SYNTAX_ERROR, f"parentheses nested more than {MAX_NESTING} deep",
                                 Span.point(filename, 1, 1),
                                 help="split the condition into several rules or use tags")]
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        return None, [_syntax_diagnostic(err, text, filename)]
    to_ast = _ToAst(filename)
    try:
        statements = to_ast.transform(tree)
    except lark.exceptions.VisitError as err:
        inner = err.orig_exc
        if isinstance(inner, _AstError):
            return None, [inner.diagnostic]
        return None, [Diagnostic(Code.E002_SYNTAX_ERROR, f"cannot read this rule: {inner}", Span.point(filename, 1, 1))]
    except RecursionError:
        return None, [Diagnostic(Code.E002_SYNTAX_ERROR, "rule nested too deeply", Span.point(filename, 1, 1))]
    source, diags = _assign_hooks(filename, statements)
    return source, to_ast.problems + diags


def _nesting_depth(text: str) -> int:
    depth = best = 0
    for ch in text:
        if ch == "(":
            depth += 1
            best = max(best, depth)
        elif ch == ")":
            depth = max(depth - 1, 0)
    return best


def _assign_hooks(filename, statements) -> tuple[ast.SourceFile, list[Diagnostic]]:
    """Rules belong to the most recent `on <hook>:` header."""
    diags: list[Diagnostic] = []
    out: list[ast.Statement] = []
    hook: str | None = None
    klass: str | None = None
    for st in statements:
        if isinstance(st, ast.ClassHeader):
            hook, klass = "", st.name
        elif isinstance(st, ast.HookHeader):
            hook, klass = st.name, None
            if st.name not in HOOKS:
                guess = did_you_mean(st.name, HOOKS)
                diags.append(Diagnostic(
                    Code.E101_UNKNOWN_HOOK, f"unknown hook `{st.name}`", st.span,
                    help=(f"did you mean `{guess}`? " if guess else "")
                    + "hooks are: " + ", ".join(RUN_HOOKS)))
        elif isinstance(st, ast.Rule):
            if hook is None:
                diags.append(Diagnostic(
                    Code.E108_RULE_OUTSIDE_HOOK, "this rule is not inside a hook", st.span,
                    help="put `on connect:`, `on helo:`, `on mail:`, `on rcpt:` or `on data:` "
                         "(or `class NAME:`) before it"))
                continue
            rule_id = st.rule_id if st.label_given else f"{_basename(filename)}:{st.span.line}"
            st = dataclasses.replace(st, hook=hook, rule_id=rule_id, klass=klass)
        out.append(st)
    return ast.SourceFile(filename, tuple(out)), diags


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


# ---- tree -> AST ------------------------------------------------------------

class _AstError(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


_ESCAPE = re.compile(r'\\(["\\])')
# a "{" with no "}" before the next "{" or the end ({{ and }} already masked)
_UNCLOSED_PLACEHOLDER = re.compile(r"\{[^{}]*(?=\{|$)")
_PLACEHOLDER_START = re.compile(r"\{[\w.-]*")


def _unquote(token: Token) -> str:
    """The text between the quotes.  Only \\" and \\\\ are escapes; every other
    backslash is kept, so a regular expression reads as written: "^mx\\.example$"."""
    return _ESCAPE.sub(r"\1", str(token)[1:-1])


def _drop_eq(items):
    return [i for i in items if not (isinstance(i, Token) and i.type == "EQ")]


def _number(text: str) -> int:
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, filename: str):
        super().__init__(visit_tokens=False)
        self.filename = filename
        self.problems: list[Diagnostic] = []     # found while building the AST; not fatal

    # spans
    def _span(self, meta) -> Span:
        if getattr(meta, "empty", False):
            return Span.point(self.filename, 1, 1)
        return Span(self.filename, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tspan(self, tok: Token) -> Span:
        return _tok_span(self.filename, tok)

    def start(self, meta, items):
        return [it for it in items if it is not None]

    # declarations
    def include(self, meta, items):
        """Only a .rules file is read as rules: an include of /etc/shadow
        must not have its lines quoted back by a syntax error."""
        path = _unquote(items[0])
        if not path.endswith(".rules"):
            self.problems.append(Diagnostic(
                Code.E003_INCLUDE_ERROR, f"an include names a rule file ending in .rules, not `{path}`",
                self._tspan(items[0]),
                help='lists are declared with `list NAME = file "PATH"`; rules go in a file named NAME.rules'))
            return None
        return ast.Include(path, self._span(meta))

    def list_file(self, meta, items):
        return ("file", _unquote(items[0]))

    def list_decl(self, meta, items):
        items = _drop_eq(items)
        name, source = items
        span = self._span(meta)
        if isinstance(source, ast.InlineList):
            return ast.ListDecl(str(name), None, source, span, self._tspan(name))
        return ast.ListDecl(str(name), source[1], None, span, self._tspan(name))

    def _map(self, fmt, meta, items):
        return (fmt, _unquote(items[0]), ())

    def map_file(self, meta, items):
        return self._map("access", meta, items)

    def map_regexp(self, meta, items):
        return self._map("regexp", meta, items)

    def map_pcre(self, meta, items):
        return self._map("pcre", meta, items)

    def map_table(self, meta, items):
        """`map NAME = sqlite|pgsql|mysql|ldap "settings.cf"`: a map in a
        database or directory (smtpfw.maps.tables)."""
        from smtpfw.maps.tables import KINDS

        kind, path = items
        if str(kind) not in KINDS:
            guess = did_you_mean(str(kind), ("file", "regexp", "pcre") + KINDS)
            raise _AstError(Diagnostic(
                Code.E002_SYNTAX_ERROR, f"`{kind}` is not a kind of map", self._tspan(kind),
                help=(f"did you mean `{guess}`? " if guess else "") +
                     'a map is `file "PATH"`, `regexp "PATH"`, `pcre "PATH"`, `{"key": "value", ...}`, '
                     'or a database or directory: `sqlite|pgsql|mysql|ldap "SETTINGS.cf"`'))
        return (str(kind), _unquote(path), ())

    def map_pair(self, meta, items):
        key, value = items
        k = _unquote(key) if key.type == "STRING" else str(key)
        return (k, _unquote(value), self._span(meta))

    def inline_map(self, meta, items):
        return ("access", None, tuple(it for it in items if it is not None))

    def map_decl(self, meta, items):
        items = _drop_eq(items)
        name, (fmt, path, pairs) = items
        return ast.MapDecl(str(name), fmt, path, pairs, self._span(meta), self._tspan(name))

    _SPANS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    _SPAN_WORDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

    def rate(self, meta, items):
        count, span = items
        text = str(span)
        if span.type == "DURATION":
            seconds = int(text[:-1]) * self._SPANS[text[-1]]
        elif text in self._SPAN_WORDS:
            seconds = self._SPAN_WORDS[text]
        else:
            raise _AstError(Diagnostic(Code.E002_SYNTAX_ERROR, f"`{text}` is not a time span", self._tspan(span),
                                       help="write 30s, 5m, 1h or 1d (or second, minute, hour, day)"))
        return (_number(str(count)), float(seconds), self._span(meta))

    def concurrent(self, meta, items):
        return (_number(str(items[0])), 0.0, self._span(meta))      # window 0: sessions at once

    def counter_decl(self, meta, items):
        items = _drop_eq(items)
        name, span = items[0], items[1]
        text = str(span)
        keys = tuple(it for it in items[2:] if isinstance(it, (ast.Field, ast.Value)))
        return ast.CounterDecl(str(name), float(int(text[:-1]) * self._SPANS[text[-1]]), keys,
                               self._span(meta), self._tspan(name))

    def count(self, meta, items):
        name, amount = items
        return ast.Action("count", self._span(meta), arg=str(name), arg_span=self._tspan(name),
                          weight=1 if amount is None else int(str(amount)) if str(amount).lstrip("+-").isdigit()
                          else _number(str(amount)))

    def tarpit(self, meta, items, kind: str = "tarpit"):
        text = str(items[0])
        return ast.Action(kind, self._span(meta), arg=text, arg_span=self._tspan(items[0]),
                          weight=int(text[:-1]) * self._SPANS[text[-1]])

    def stutter(self, meta, items):
        return self.tarpit(meta, items, "stutter")

    def limit_decl(self, meta, items):
        items = _drop_eq(items)
        name = items[0]
        rates = tuple(it for it in items[1:] if isinstance(it, tuple))
        keys = tuple(it for it in items[1:] if isinstance(it, (ast.Field, ast.Value)))
        counting = items[-1] if isinstance(items[-1], Token) else None
        return ast.LimitDecl(str(name), rates, keys, str(counting) if counting is not None else None,
                             self._span(meta), self._tspan(name))

    def class_header(self, meta, items):
        return ast.ClassHeader(str(items[0]), self._tspan(items[0]))

    def zone_decl(self, meta, items):
        items = _drop_eq(items)
        name, kind, domain, codes = items
        return ast.ZoneDecl(str(name), str(kind), _unquote(domain).lower().rstrip("."), codes,
                            self._span(meta), self._tspan(name))

    def mask(self, meta, items):
        return ("mask", _number(str(items[0])))

    def code_filter(self, meta, items):
        exact, ranges, masks = [], [], []
        for it in items:
            if isinstance(it, tuple):
                masks.append(it[1])
            elif it.type == "CODE_RANGE":
                lo, hi = str(it).split("-")
                ranges.append((lo, hi))
            elif it.type == "CODE_PATTERN":
                if _code_pattern_size(str(it)) > MAX_CODE_RANGES:
                    self.problems.append(Diagnostic(
                        Code.E202_TYPE_MISMATCH, f"`{it}` stands for too many separate ranges (more than "
                        f"{MAX_CODE_RANGES})", self._tspan(it),
                        help="make the octets after the first wildcard whole wildcards (`*`), or use a range "
                             "like 127.0.0.2-127.0.0.11"))
                    continue
                ranges.extend(_code_pattern_ranges(str(it)))
            elif it.type == "STRING":
                text = _unquote(it)
                if not _IPV4_CODE.fullmatch(text):
                    bare = text if CODE_PATTERN_RE.fullmatch(text) or _IPV4_CODE.fullmatch(text.strip()) else None
                    self.problems.append(Diagnostic(
                        Code.E202_TYPE_MISMATCH, f"{it} is not a return code: a listing's codes are IPv4 "
                        "addresses such as 127.0.0.2", self._tspan(it),
                        help=f"write it without quotes: `{bare}`" if bare else
                        "write an address (127.0.0.2), a range (127.0.0.2-127.0.0.11), a pattern "
                        "(127.0.0.[2;10..14], 127.0.*.*) or `mask N`"))
                    continue
                exact.append(text)
            else:
                exact.append(str(it))
        return ast.CodeFilter(tuple(exact), tuple(ranges), tuple(masks), self._span(meta))

    def plugin_decl(self, meta, items):
        items = _drop_eq(items)
        name, target, args = items
        return ast.PluginDecl(str(name), _unquote(target), tuple(args or ()), self._span(meta),
                              self._tspan(name))

    def plugin_args(self, meta, items):
        return [it for it in items if it is not None]

    def arg_name(self, meta, items):
        return str(items[0])

    def plugin_arg(self, meta, items):
        items = _drop_eq(items)
        return (str(items[0]), items[1].value)

    def option(self, meta, items):
        items = _drop_eq(items)
        return ast.OptionDecl(str(items[0]), items[1], self._span(meta))

    def hook(self, meta, items):
        return ast.HookHeader(str(items[0]), self._tspan(items[0]))

    # rules
    def label(self, meta, items):
        return str(items[0])[1:-1]

    def rule(self, meta, items):
        label, monitor, action, condition = items
        return ast.Rule(
            rule_id=str(label) if label is not None else "",
            label_given=label is not None,
            hook="",
            action=action,
            condition=condition,
            monitor=monitor is not None,
            span=self._span(meta),
        )

    def _text(self, tok: Token) -> str:
        """A reply, log or header text; an unclosed {placeholder} is reported
        (the compiler would otherwise send it as written)."""
        raw = str(tok)[1:-1]
        m = _UNCLOSED_PLACEHOLDER.search(raw.replace("{{", "\0\0").replace("}}", "\0\0"))
        if m:
            start = _PLACEHOLDER_START.match(m.group())
            word = start.group() if start else m.group()
            line, column, _end_line, _end_column = _position(tok)
            self.problems.append(Diagnostic(
                Code.E503_UNKNOWN_PLACEHOLDER, f"placeholder `{word}` is not closed",
                Span.point(self.filename, line, column + 1 + m.start(), len(word)),
                help=f"close it: `{word}}}`; write `{{{{` for a brace that is just text"))
        return _unquote(tok)

    def reply(self, meta, items):
        code, enhanced, text = items
        if text is not None:
            self._text(text)
        return ast.Reply(
            _number(str(code)) if code is not None else None,
            str(enhanced) if enhanced is not None else None,
            _unquote(text) if text is not None else None,
            self._span(meta),
        )

    def _terminal(self, kind, meta, items):
        span = self._span(meta)
        reply = items[1]
        if reply.code is None and reply.enhanced is None and reply.text is None:
            reply = dataclasses.replace(reply, span=span)
        return ast.Action(kind, span, reply=reply)

    def accept(self, meta, items):
        return ast.Action("accept", self._span(meta))

    def reject(self, meta, items):
        return self._terminal("reject", meta, items)

    def tempfail(self, meta, items):
        return self._terminal("tempfail", meta, items)

    def disconnect(self, meta, items):
        return self._terminal("disconnect", meta, items)

    def tag(self, meta, items):
        return ast.Action("tag", self._span(meta), arg=str(items[0]), arg_span=self._tspan(items[0]))

    def log(self, meta, items):
        return ast.Action("log", self._span(meta), arg=self._text(items[1]), arg_span=self._tspan(items[1]))

    def warn(self, meta, items):
        return ast.Action("warn", self._span(meta), arg=self._text(items[1]), arg_span=self._tspan(items[1]))

    def add_header(self, meta, items):
        return ast.Action("add_header", self._span(meta), arg=_unquote(items[0]),
                          arg2=self._text(items[1]), arg_span=self._tspan(items[0]))

    def run(self, meta, items):
        return ast.Action("run", self._span(meta), arg=str(items[0]), arg_span=self._tspan(items[0]))

    def score(self, meta, items):
        name, weight = items
        return ast.Action("score", self._span(meta), arg=str(name), arg_span=self._tspan(name),
                          weight=int(str(weight)) if str(weight).lstrip("+-").isdigit() else _number(str(weight)))

    def use(self, meta, items):
        return ast.Action("use", self._span(meta), arg=str(items[0]), arg_span=self._tspan(items[0]))

    def apply(self, meta, items):
        f = items[0]
        return ast.Action("apply", self._span(meta), arg=f.name, arg_span=f.span, field=f)

    # conditions
    def or_cond(self, meta, items):
        return ast.Or(tuple(items), self._span(meta))

    def and_cond(self, meta, items):
        return ast.And(tuple(items), self._span(meta))

    def negation(self, meta, items):
        return ast.Not(items[0], self._span(meta))

    def field(self, meta, items):
        return ast.Field(str(items[0]), self._tspan(items[0]))

    def map_field(self, meta, items):
        name, key = items
        return ast.Field(str(name), self._span(meta), ast.Field(str(key), self._tspan(key)))

    def map_set(self, meta, items):
        return items[0]

    def cmp_op(self, meta, items):
        return str(items[0])

    def compare(self, meta, items):
        f, op, value = items
        op = "=" if str(op) in ("==", "=") else str(op)
        return ast.Compare(f, op, value, self._span(meta))

    def member(self, meta, items):
        f, neg, target = items
        return ast.Member(f, target, False, neg is not None, self._span(meta))

    def within(self, meta, items):
        f, neg, target = items
        return ast.Member(f, target, True, neg is not None, self._span(meta))

    def _pattern(self, kind, meta, items):
        f, neg, pat = items
        value = ast.Value("string", _unquote(pat), str(pat), self._tspan(pat))
        return ast.Pattern(f, kind, value, neg is not None, self._span(meta))

    def regex(self, meta, items):
        return self._pattern("regex", meta, items)

    def glob(self, meta, items):
        return self._pattern("glob", meta, items)

    def listed(self, meta, items):
        f, neg, zone, codes = items
        return ast.Listed(f, zone, codes, neg is not None, self._span(meta))

    def lookup_failed(self, meta, items):
        f, zone = items
        return ast.LookupFailed(f, zone, self._span(meta))

    def tagged(self, meta, items):
        return ast.Tagged(str(items[0]), self._span(meta))

    def truthy(self, meta, items):
        return ast.Truthy(items[0], self._span(meta))

    def list_ref(self, meta, items):
        return ast.ListRef(str(items[0]), self._tspan(items[0]))

    def single(self, meta, items):
        tok = items[0]
        if tok.type == "STRING":
            return ast.Value("string", _unquote(tok), str(tok), self._tspan(tok))
        return ast.Value("address", str(tok), str(tok), self._tspan(tok))

    def zone_ref(self, meta, items):
        return ast.ZoneRef(str(items[0]), None, None, self._tspan(items[0]))

    def inline_zone(self, meta, items):
        kind, domain = items
        return ast.ZoneRef(None, str(kind), _unquote(domain).lower().rstrip("."), self._span(meta))

    def inline_list(self, meta, items):
        return ast.InlineList(tuple(it for it in items if it is not None), self._span(meta))

    # values
    def string(self, meta, items):
        return ast.Value("string", _unquote(items[0]), str(items[0]), self._tspan(items[0]))

    def number(self, meta, items):
        return ast.Value("number", _number(str(items[0])), str(items[0]), self._tspan(items[0]))

    def address(self, meta, items):
        return ast.Value("address", str(items[0]), str(items[0]), self._tspan(items[0]))

    def boolean(self, meta, items):
        text = str(items[0])
        return ast.Value("boolean", text in ("true", "yes"), text, self._tspan(items[0]))


MAX_CODE_RANGES = 4096
_IPV4_CODE = re.compile(r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}")
_OCTET_PATTERN = r"(\d{1,3}|\*|\[\d{1,3}(\.\.\d{1,3})?(;\d{1,3}(\.\.\d{1,3})?)*\])"
CODE_PATTERN_RE = re.compile(rf"(?=[\d.]*[*\[]){_OCTET_PATTERN}(\.{_OCTET_PATTERN}){{3}}")


def _code_pattern_size(text: str) -> int:
    """How many ranges ``_code_pattern_ranges`` would make (without making them)."""
    octets: list[list[tuple[int, int]] | None] = []
    for part in re.findall(r"\[[\d.;]+\]|\*|\d+", text):
        if part == "*":
            octets.append(None)
        elif part.startswith("["):
            items = [item.partition("..") for item in part[1:-1].split(";")]
            ranges = [(min(int(lo), 255), min(int(hi or lo), 255)) for lo, _, hi in items]
            octets.append(None if ranges == [(0, 255)] else ranges)
        else:
            octets.append([(0, 0)])
    size = 1
    for i, octet in enumerate(octets):
        if all(o is None for o in octets[i + 1:]):
            return size * (len(octet) if octet is not None else 1)
        size *= sum(hi - lo + 1 for lo, hi in octet) if octet is not None else 256
    return size


def _code_pattern_ranges(text: str) -> list[tuple[str, str]]:
    """127.0.*.*, 127.0.[0..255].[2..11] or 127.0.0.[2;10..14] (Postfix
    postscreen_dnsbl_sites syntax) as address ranges.  A `*` octet is
    0..255; `[...]` holds values and `a..b` ranges separated by `;`.  Each
    choice of the octets before the last non-wildcard one is one range."""
    octets: list[list[tuple[int, int]]] = []
    for part in re.findall(r"\[[\d.;]+\]|\*|\d+", text):
        if part == "*":
            octets.append([(0, 255)])
        elif part.startswith("["):
            items = []
            for item in part[1:-1].split(";"):
                lo, _, hi = item.partition("..")
                items.append((min(int(lo), 255), min(int(hi or lo), 255)))
            octets.append(items)
        else:
            octets.append([(min(int(part), 255), min(int(part), 255))])
    out: list[tuple[str, str]] = []

    def expand(prefix: list[int], rest: list[list[tuple[int, int]]]) -> None:
        if len(rest) == 1 or all(r == [(0, 255)] for r in rest[1:]):
            for lo, hi in rest[0]:
                tail = len(rest) - 1
                out.append((".".join(map(str, prefix + [lo] + [0] * tail)),
                            ".".join(map(str, prefix + [hi] + [255] * tail))))
            return
        for lo, hi in rest[0]:
            for v in range(lo, hi + 1):
                expand(prefix + [v], rest[1:])
    expand([], octets)
    return out


# ---- syntax errors in words -------------------------------------------------

_WORDS = {
    "NAME": "a name",
    "LABEL": "a rule id like [no-relay]",
    "STRING": 'a "quoted text"',
    "INT": "a number",
    "IPV4": "an IPv4 address or network",
    "ENHANCED": "an enhanced status code like 5.7.1",
    "CODE_RANGE": "a code range like 127.0.0.2-127.0.0.11",
    "BOOL": "yes or no",
    "COMPARE": "a comparison (=, !=, <, <=, >, >=)",
    "EQ": "`=`",
    "ZONE_KIND": "`dnsbl` or `rhsbl`",
    "CODE_PATTERN": "a code pattern like 127.0.*.* or 127.0.[0..255].[0..255]",
    "SIGNED_INT": "a weight like +3 or -5",
    "DURATION": "a time span like 30s, 5m, 1h or 1d",
    "$END": "the end of the file",
}
_ACTION_TERMINALS = {"ACCEPT", "REJECT", "TEMPFAIL", "DISCONNECT", "TAG", "LOG", "WARN",
                     "ADD_HEADER", "RUN", "SCORE", "USE", "APPLY", "COUNT", "TARPIT"}
_STATEMENT_TERMINALS = {"ON", "CLASS", "LIST", "MAP", "LIMIT", "COUNTER", "ZONE", "PLUGIN", "OPTION", "INCLUDE"}


def _terminal_text(name: str) -> str | None:
    """The literal text of a keyword/punctuation terminal, if it has one."""
    try:
        term = _parser().get_terminal(name)
    except KeyError:
        return None
    pattern = term.pattern
    if pattern.type == "str":
        return pattern.value
    return None


def _describe(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    text = _terminal_text(name)
    return f"`{text}`" if text is not None else name.lower()


_OPERATOR_TERMINALS = {"IN", "NOT", "WITHIN", "MATCHES", "LIKE", "LISTED", "LOOKUP", "COMPARE", "EQ"}


def _expected_in_words(expected: set[str]) -> tuple[str, list[str]]:
    """A sentence for what the parser wanted, and the keywords it could take."""
    if "INT" in expected:
        expected = expected - {"SIGNED_INT"}      # "a number" says it (a sign is allowed)
    keywords = sorted(t for t in (_terminal_text(e) for e in expected) if t and t.isalpha())
    statement = bool(expected & _STATEMENT_TERMINALS)
    if statement and expected & _ACTION_TERMINALS and not expected & (_OPERATOR_TERMINALS | {"IF"}):
        return ("a new statement: `on <hook>:`, `class <name>:`, a declaration (`list`, `map`, `limit`, "
                "`counter`, `zone`, `plugin`, `option`, `include`) or a rule starting with an action (`accept`, `reject`, "
                "`tempfail`, `disconnect`, `tag`, `log`, `warn`, `add_header`, `run`, `score`, `use`, "
                "`apply`, `count`, `tarpit`, `stutter`)", keywords)
    parts = []
    if expected & (_OPERATOR_TERMINALS - {"EQ"}):
        parts.append("an operator (`=`, `!=`, `<`, `>`, `in`, `not in`, `within`, `matches`, "
                     "`like`, `listed in`, `lookup failed in`)")
    if expected & {"AND", "OR"}:
        parts.append("`and`/`or`")
    if "IF" in expected:
        parts.append("`if <condition>`")
    if parts or statement:
        rest = expected - _STATEMENT_TERMINALS - _ACTION_TERMINALS - _OPERATOR_TERMINALS - {
            "IF", "AND", "OR", "MONITOR", "LSQB", "$END", "RPAR"}
        parts += sorted(_describe(e) for e in rest)
        if "RPAR" in expected:
            parts.append("`)`")
        if statement:
            parts.append("the next rule or statement")
        return ", ".join(parts[:-1]) + (" or " if len(parts) > 1 else "") + parts[-1], keywords
    if expected >= {"NAME", "LPAR", "NOT"}:
        return ("a condition, such as `helo in badhelo` or `client.ip in 10.0.0.0/8`", keywords)
    words = sorted({_describe(e) for e in expected})
    if len(words) > 8:
        words = words[:8] + ["..."]
    if len(words) == 1:
        return words[0], keywords
    return "one of " + ", ".join(words), keywords


def _syntax_diagnostic(err: lark.exceptions.UnexpectedInput, text: str, filename: str) -> Diagnostic:
    """One diagnostic for the first syntax error: a known slip gets its fix,
    anything else what the parser expected at that point, in words."""
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        return _unexpected_character(err, text, filename)
    if isinstance(err, lark.exceptions.UnexpectedToken) and err.token.type == "$END":
        lines = text.rstrip().splitlines() or [""]
        expected, _ = _expected_in_words(set(err.expected))
        return Diagnostic(Code.E002_SYNTAX_ERROR, f"the file ends in the middle of a statement; expected {expected}",
                          Span.point(filename, len(lines), len(lines[-1]) + 1))
    if isinstance(err, lark.exceptions.UnexpectedToken):
        return _unexpected_token(err, text, filename)
    line, column = getattr(err, "line", 1) or 1, getattr(err, "column", 1) or 1
    return Diagnostic(Code.E002_SYNTAX_ERROR, str(err).splitlines()[0], Span.point(filename, line, column))


def _unexpected_token(err: lark.exceptions.UnexpectedToken, text: str, filename: str) -> Diagnostic:
    tok = err.token
    expected = set(err.expected)
    prev = _token_before(text, tok.start_pos)
    for slip in (_runaway_text, _missing_colon, _unquoted_value):
        found = slip(tok, prev, expected, text, filename)
        if found is not None:
            return found
    span = Span(filename, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + len(tok))
    words, keywords = _expected_in_words(expected)
    return Diagnostic(Code.E002_SYNTAX_ERROR, f"unexpected {_token_words(tok)}; expected {words}", span,
                      help=_suggest(str(tok), tok.type, expected, keywords))


def _token_before(text: str, pos: int) -> Token | None:
    """The token that ends before ``pos`` (the lexer already got that far)."""
    prev = None
    try:
        for t in _parser().lex(text):
            if (t.start_pos or 0) >= pos:
                break
            prev = t
    except lark.exceptions.LarkError:
        pass
    return prev


def _tok_span(filename: str, tok: Token) -> Span:
    return Span(filename, *_position(tok))


def _position(tok: Token) -> tuple[int, int, int, int]:
    """Line, column, end line and end column of a lexed token (lark types
    them Optional, for tokens made up without a position)."""
    return tok.line, tok.column, tok.end_line, tok.end_column  # type: ignore[return-value]


def _runaway_text(tok, prev, expected, text, filename) -> Diagnostic | None:
    """`reject "Bad HELO if helo = "x"`: the text swallowed code up to the
    next quote and the parser stumbles later; point at the text instead."""
    if prev is None or prev.type != "STRING" or prev.line != tok.line:
        return None
    line = text.split("\n")[tok.line - 1]
    if len(re.findall(r'(?<!\\)"', line)) % 2 == 0:
        return None
    body = str(prev)
    cut = body.find(" if ")
    fix = (f"`{body[:cut]}\"{line[prev.column - 1 + cut:].rstrip()}`" if cut > 0
           else 'put " where the text ends')
    return Diagnostic(Code.E002_SYNTAX_ERROR,
                      "this text has no closing quote, so it runs on to the next quote on the line",
                      _tok_span(filename, prev), help=f"close it where it ends: {fix}" if cut > 0 else fix)


def _missing_colon(tok, prev, expected, text, filename) -> Diagnostic | None:
    """`on mail` without its colon: report it where the colon belongs, not
    at the first word of the next line."""
    if "COLON" not in expected or prev is None:
        return None
    header = f"on {prev}" if prev.type in ("NAME", "DISCONNECT") else str(prev)
    return Diagnostic(Code.E002_SYNTAX_ERROR,
                      f"`{header}` needs a colon at the end", Span.point(filename, prev.end_line,
                                                                                prev.end_column),
                      help=f"write `{header}:`")


_VALUES = {"STRING", "INT", "SIGNED_INT", "IPV4", "BOOL"}


def _unquoted_value(tok, prev, expected, text, filename) -> Diagnostic | None:
    """`option mode = monitor`, `helo = mx.example.org`: a word where only a
    value can go is text without its quotes."""
    if not expected & {"STRING"} or expected - _VALUES - {"LSQB"} or not re.match(r"[A-Za-z_]", str(tok)):
        return None
    return Diagnostic(Code.E002_SYNTAX_ERROR, f"`{tok}` is not a value here: text values are written in double quotes",
                      _tok_span(filename, tok), help=f'write "{tok}"')


_CURLY_QUOTES = "\u201c\u201d\u201e\u201f\u2018\u2019\u201a\u201b\u00ab\u00bb\u2039\u203a"
_OPERATOR_SLIPS = {"&&": "and", "&": "and", "||": "or", "|": "or", "!": "not"}
_NUMBER_SLIP = re.compile(r"\d+[A-Za-z]\w*")


def _unexpected_character(err: lark.exceptions.UnexpectedCharacters, text: str, filename: str) -> Diagnostic:
    pos: int = err.pos_in_stream or 0
    ch = text[pos] if pos < len(text) else ""
    span = Span.point(filename, err.line, err.column)
    if ch == '"':
        return Diagnostic(Code.E002_SYNTAX_ERROR,
                          "this text has no closing quote", span, help='close it with " on the same line')
    if ch == "'" or ch in _CURLY_QUOTES:
        return _wrong_quote(ch, text, pos, span)
    if is_invisible(ch):
        return Diagnostic(Code.E002_SYNTAX_ERROR, f"invisible character {describe(ch)}", span,
                          help="delete it, or type an ordinary space instead")
    word = _word_at(text, pos)
    op = re.match(r"[&|!]+", text[pos:pos + 2])
    if op and op.group() in _OPERATOR_SLIPS:
        slip = op.group()
        return Diagnostic(Code.E002_SYNTAX_ERROR, f"`{slip}` is not an operator here",
                          Span.point(filename, err.line, err.column, len(slip)),
                          help=f"write `{_OPERATOR_SLIPS[slip]}`: conditions are joined with `and`, `or` and `not`")
    if _NUMBER_SLIP.fullmatch(word):
        return _number_slip(word, Span.point(filename, err.line, err.column, len(word)))
    words, _ = _expected_in_words(_acceptable(err))
    return Diagnostic(Code.E002_SYNTAX_ERROR, f"unexpected character {ch!r}; expected {words}", span)


def _acceptable(err: lark.exceptions.UnexpectedInput) -> set[str]:
    """The terminals the parser could take where the lexer failed."""
    try:
        return set(err.interactive_parser.accepts()) - {"$END"} or {"$END"}
    except Exception:  # no parser state to ask: fall back to what the lexer allowed
        return set(getattr(err, "allowed", ()) or ())


def _wrong_quote(ch: str, text: str, pos: int, span: Span) -> Diagnostic:
    """'x' and “x”: text goes in straight double quotes."""
    end_of_line = text.find("\n", pos)
    line = text[pos + 1:end_of_line if end_of_line != -1 else len(text)]
    close = min((i for i in (line.find(c) for c in "'" + _CURLY_QUOTES) if i != -1), default=-1)
    what = "single quotes" if ch == "'" else f"a typographic quote {ch}"
    fix = f'write "{line[:close]}"' if close > 0 else 'write text between straight double quotes: "like this"'
    return Diagnostic(Code.E002_SYNTAX_ERROR, f"text is written in straight double quotes, not {what}", span,
                      help=fix + (" (turn off smart quotes in your editor)" if ch != "'" else ""))


def _number_slip(word: str, span: Span) -> Diagnostic:
    """`10X`, `10MB`, `5k`: a number takes only K, M or G right after it."""
    digits = re.sub(r"\D.*", "", word)      # the digits it starts with
    unit = word[len(digits)].upper()
    fix = f"write `{digits}{unit}`" if unit in "KMG" else f"write `{digits}`, or `{digits}M` for {digits} MiB"
    return Diagnostic(Code.E002_SYNTAX_ERROR, f"`{word}` is not a number", span,
                      help=f"{fix}: a number is digits, optionally followed by K, M or G (1024, 1024² or 1024³)")


def _word_at(text: str, pos: int) -> str:
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] not in '"()[],':
        end += 1
    return text[pos:end]


def _token_words(tok: Token) -> str:
    if tok.type == "STRING":
        return f"text {tok}"
    if tok.type in ("NAME", "INT", "IPV4", "ENHANCED"):
        return f"`{tok}`"
    return f"`{tok}`"


def _suggest(found: str, found_type: str, expected: set[str], keywords: list[str]) -> str | None:
    """did-you-mean for a misspelt keyword (`rejct` -> `reject`)."""
    candidates = list(keywords)
    if expected & _STATEMENT_TERMINALS or expected & _ACTION_TERMINALS:
        candidates += list(STATEMENT_KEYWORDS) + list(ast.ACTIONS)
    if "IF" in expected:
        candidates.append("if")
    if found_type in ("NAME", "BOOL") or found.isalpha():
        guess = did_you_mean(found, set(candidates))
        if guess and guess != found:
            return f"did you mean `{guess}`?"
    if found_type == "STRING" and "IF" in expected:
        return "reply text goes right after the action and its codes: `reject 550 5.7.1 \"text\" if ...`"
    if found == ":" and "NAME" in expected:
        return "write a hook header as `on rcpt:`"
    if found_type in ("ON",) and "NAME" in expected:
        return None
    return None
