"""Lint checks beyond what the compiler rejects.

``check_ruleset`` is what ``smtpfw lint`` runs for one ruleset file.  It
compiles the ruleset (``compile_ruleset`` reports syntax, names, types,
lists, regexes, reply codes and plugins) and then runs semantic checks over
the parsed rules:

- W004  an invisible character in a rule or list file
- W402  a glob or regex that can never match its field
- W601  a rule after an unconditional terminal rule in the same hook
- W602  a rule whose condition an earlier terminal rule already covers
- W603  a list, zone or plugin that is declared but never used
- W604  a field the front end named by ``modes`` never has (smtpfw.lang.deployment)
- E701  open relay: an untrusted client can get a non-local recipient accepted
- E704  the same, because `option mode = "monitor"` only logs the refusal that closes it
- W702  a rule that refuses the null sender <> (bounces)
- H703  a well-known public DNSBL used without a return-code filter
- W705  DNS lists asked through a public resolver (the config's ``nameservers``)

The checks read the AST (``load_program``); W702 and E701 also evaluate the
compiled condition leaves, which are pure functions of ``SessionState``.
Checks that need the whole ruleset (W603, E701) are skipped when a file could
not be read or parsed, so a syntax error does not also cause noise.

Lint never raises: a failing check becomes one diagnostic of its own code.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import traceback
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

from smtpfw.checks.lists import Entry, build_matcher, read_list_file, read_list_text
from smtpfw.diagnostics import Code, Diagnostic, Span, nearest_file
from smtpfw.errors import PLEASE_REPORT
from smtpfw.lang import ast
from smtpfw.lang.compiler import (BUILTIN_LISTS, Program, _Compiler, _shown, compile_program, dedupe,
                                  load_program)
from smtpfw.lang.deployment import mode_diagnostics, resolver_diagnostics
from smtpfw.lang.fields import ADDRESS, DOMAIN, IP, STRING, fold, lookup_field
from smtpfw.lang.invisible import find_invisible
from smtpfw.session import SessionState

try:  # the regex parser, to see what a pattern requires
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse as _sre_parse  # type: ignore[no-redef]

# Three-valued logic for "can this be true for a client like that?"
TRUE, FALSE, UNKNOWN = "true", "false", "unknown"

MAX_DEPTH = 60                 # deeper conditions are not analysed (the compiler checks them)
IMPLICATION_BUDGET = 100_000   # W602: pairwise comparisons per ruleset
RELAY_DOMAIN = "relay.invalid"  # a recipient domain that no ruleset calls local


def check_ruleset(path: str | os.PathLike, modes: Sequence[str] = (), nameservers: Sequence[str] = ()
                  ) -> tuple[list[Diagnostic], dict[str, str]]:
    """Diagnostics for one ruleset file, and the sources read (for context);
    ``modes`` (smtp, policy, milter) adds W604 for fields they never have,
    ``nameservers`` (the config's resolvers) W705 for public ones."""
    path = str(path)
    try:
        prog, load_diags = load_program(path)
    except RecursionError:
        return [Diagnostic(Code.E002_SYNTAX_ERROR, "rules nested too deeply", Span.point(path, 1, 1))], {}
    except Exception as err:  # lint must never crash
        return [_internal("reading the rules", err, Span.point(path, 1, 1))], {}
    try:
        ruleset, compiled_diags = compile_program(prog, load_diags, plugins="inspect")
        diags = list(compiled_diags)
    except Exception as err:  # lint must never crash
        ruleset = None
        diags = list(load_diags) + [_internal("compiling", err, Span.point(path, 1, 1))]
    sources: dict[str, str] = dict(prog.sources)
    complete = not any(d.code in (Code.E001_IO_ERROR, Code.E002_SYNTAX_ERROR, Code.E003_INCLUDE_ERROR)
                       for d in diags)
    try:
        diags = _one_for_a_broken_include(diags, prog)
        diags += _Linter(prog, ruleset, complete).run()
        diags += invisible_in_ruleset(prog, diags)
        if ruleset is not None and modes:
            diags += mode_diagnostics(ruleset, modes)
        if nameservers:
            diags += resolver_diagnostics(prog.zones.values(), nameservers)
    except Exception as err:  # each check is guarded; this is the last line of defence
        diags.append(_internal("checking the rules", err, Span.point(path, 1, 1)))
    return dedupe(diags), sources


def invisible_in_ruleset(prog, diags: list[Diagnostic]) -> list[Diagnostic]:
    """W004 in the rule files and list files of a loaded ruleset, except on
    a line whose syntax error (E002) or malformed entry (E302) names it."""
    found = [d for path, text in prog.sources.items() for d in find_invisible(text, path)]
    for decl, base in prog.lists.values():
        if decl.file is not None:
            path = os.path.join(base, decl.file)
            text = read_list_text(path)
            found += find_invisible(text, _shown(path)) if text is not None else []
    taken = {(d.span.file, d.span.line) for d in diags if d.code in (Code.E002_SYNTAX_ERROR,
                                                                     Code.E302_LIST_ENTRY_MALFORMED) and d.span}
    return [d for d in found if d.span is None or (d.span.file, d.span.line) not in taken]


_UNKNOWN_NAME = (Code.E102_UNKNOWN_FIELD, Code.E103_UNKNOWN_LIST, Code.E104_UNKNOWN_ZONE, Code.E105_UNKNOWN_PLUGIN,
                 Code.E503_UNKNOWN_PLACEHOLDER)
_INCLUDE_PATH = re.compile(r'include\s+"((?:[^"\\\n]|\\.)*)"')


def _one_for_a_broken_include(diags: list[Diagnostic], prog: Program) -> list[Diagnostic]:
    """An include that cannot be read is one error, with the nearest .rules
    file as did-you-mean: the names it would declare are not reported as
    unknown (they are checked once it can be read)."""
    if not any(d.code == Code.E003_INCLUDE_ERROR for d in diags):
        return diags
    return [_include_guess(d, prog) if d.code == Code.E003_INCLUDE_ERROR else d
            for d in diags if d.code not in _UNKNOWN_NAME]


def _include_guess(d: Diagnostic, prog: Program) -> Diagnostic:
    if d.help is not None or d.span is None:
        return d
    line = prog.sources.get(d.span.file, "").split("\n")[d.span.line - 1:d.span.line] or [""]
    m = _INCLUDE_PATH.match(line[0], d.span.column - 1)
    if m is None:
        return d
    written = m.group(1)
    guess = nearest_file(os.path.join(os.path.dirname(d.span.file), written), ".rules")
    note = "the path is relative to this file's folder; the names the file declares are checked once it can be read"
    return replace(d, help=(f"did you mean `{os.path.join(os.path.dirname(written), guess)}`? " if guess else "")
                   + note)


def _internal(what: str, err: BaseException, span: Span | None) -> Diagnostic:
    """E999: lint itself failed.  Never a syntax error or the check's own
    code: the rules may be fine, and the report should reach us."""
    frames = traceback.extract_tb(err.__traceback__)
    at = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return Diagnostic(Code.E999_INTERNAL_ERROR, f"internal error while {what}: {type(err).__name__}: {err}"[:300] + at,
                      span, help=f"{PLEASE_REPORT} with the rule file; this part of the check did not run")


# ---- walking conditions ------------------------------------------------------

_leaves = ast.leaves


def _depth(cond) -> int:
    best = 0
    stack = [(cond, 1)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        stack.extend((n, d + 1) for n in ast.children(node))
    return best


_LIMIT_REF = re.compile(r"limit\.[A-Za-z_][\w-]*\.")
_MAP_PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_][\w-]*)\s*\(")


def _field_name(leaf) -> str | None:
    f = getattr(leaf, "field", None)
    return f.text if isinstance(f, ast.Field) else None


def _field_type(name: str | None) -> str | None:
    if name is None:
        return None
    spec = lookup_field(name)
    return spec.type if spec is not None else None


def _where(rule: ast.Rule, here: str | None = None) -> str:
    """How a message names a rule: by its id and where it is."""
    loc = f"line {rule.span.line}" if here == rule.span.file else f"{rule.span.file}:{rule.span.line}"
    if rule.label_given:
        return f"rule `{rule.rule_id}` ({loc})"
    return f"the `{rule.action.kind}` rule on {loc}" if here == rule.span.file else f"the `{rule.action.kind}` rule at {loc}"


def _ends_hook(rule: ast.Rule) -> bool:
    return rule.action.terminal and not rule.monitor


def _and3(values: Iterable[str]) -> str:
    out = TRUE
    for v in values:
        if v == FALSE:
            return FALSE
        if v == UNKNOWN:
            out = UNKNOWN
    return out


def _or3(values: Iterable[str]) -> str:
    out = FALSE
    for v in values:
        if v == TRUE:
            return TRUE
        if v == UNKNOWN:
            out = UNKNOWN
    return out


def _not3(v: str) -> str:
    return {TRUE: FALSE, FALSE: TRUE}.get(v, UNKNOWN)


def _eval3(cond, leaf_value: Callable[[object, bool], str], negated: bool = False) -> str:
    """Evaluate a condition in three-valued logic.  ``leaf_value(leaf, negated)``
    gives a leaf's value with the negation above it already applied, so a
    caller can treat "the leaf made the rule true" differently."""
    if cond is None:
        return FALSE if negated else TRUE
    if isinstance(cond, ast.Not):
        return _eval3(cond.operand, leaf_value, not negated)
    if isinstance(cond, (ast.And, ast.Or)):
        values = (_eval3(n, leaf_value, negated) for n in cond.operands)
        conj = isinstance(cond, ast.And) != negated
        return _and3(values) if conj else _or3(values)
    return leaf_value(cond, negated)


# ---- canonical conditions (W602) --------------------------------------------

def _norm_value(field: str, v: "ast.Value | ast.Field"):
    if isinstance(v, ast.Field):
        return ("field", v.text)
    ftype = _field_type(field)
    if v.kind != "string" and v.kind != "address":
        return (v.kind, v.value)
    text = str(v.value)
    if ftype == IP:
        try:
            return ("ip", str(ipaddress.ip_address(text)))
        except ValueError:
            return ("text", text)
    return ("text", fold(ftype or STRING, text))


def _norm_target(field: str, target) -> tuple:
    if isinstance(target, ast.ListRef):
        return ("list", target.name)
    if isinstance(target, ast.Field):
        return ("value of", target.text)
    items = target.items if isinstance(target, ast.InlineList) else (target,)
    return ("items", frozenset(_norm_value(field, v)[1] for v in items))


def _zone_key(z: ast.ZoneRef) -> tuple:
    return ("name", z.name) if z.name is not None else (z.kind, z.domain)


def _codes_key(c: ast.CodeFilter | None):
    return None if c is None else (tuple(sorted(c.exact)), tuple(sorted(c.ranges)), tuple(sorted(c.masks)))


def _canon(cond, negated: bool = False) -> tuple:
    """A span-free form in negation normal form: equal conditions give equal
    tuples, whatever their order of `and`/`or` operands."""
    return _Canon().visit(cond, negated)


class _Canon(ast.ConditionVisitor[tuple]):
    def visit_not(self, cond: ast.Not, negated: bool) -> tuple:
        return self.visit(cond.operand, not negated)

    def _junction(self, cond: ast.And | ast.Or, negated: bool) -> tuple:
        conj = isinstance(cond, ast.And) != negated
        parts = sorted({self.visit(n, negated) for n in cond.operands}, key=repr)
        if len(parts) == 1:
            return parts[0]
        return ("and" if conj else "or", tuple(parts))

    visit_and = visit_or = _junction

    def visit_compare(self, cond: ast.Compare, negated: bool) -> tuple:
        op = cond.op
        if negated:
            op = {"=": "!=", "!=": "=", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}[op]
        return ("cmp", cond.field.text, op, _norm_value(cond.field.text, cond.value))

    def visit_member(self, cond: ast.Member, negated: bool) -> tuple:
        return ("in", cond.field.text, cond.within, cond.negated != negated,
                _norm_target(cond.field.text, cond.target))

    def visit_pattern(self, cond: ast.Pattern, negated: bool) -> tuple:
        return ("pat", cond.field.text, cond.kind, str(cond.pattern.value), cond.negated != negated)

    def visit_listed(self, cond: ast.Listed, negated: bool) -> tuple:
        return ("listed", cond.field.text, _zone_key(cond.zone), _codes_key(cond.codes), cond.negated != negated)

    def visit_lookup_failed(self, cond: ast.LookupFailed, negated: bool) -> tuple:
        return _not(("failed", cond.field.text, _zone_key(cond.zone)), negated)

    def visit_tagged(self, cond: ast.Tagged, negated: bool) -> tuple:
        return _not(("tagged", cond.tag), negated)

    def visit_truthy(self, cond: ast.Truthy, negated: bool) -> tuple:
        return _not(("truthy", cond.field.text), negated)


def _not(leaf: tuple, negated: bool) -> tuple:
    return ("not", leaf) if negated else leaf


def _mentions(canon: tuple, pred: Callable[[tuple], bool]) -> bool:
    stack = [canon]
    while stack:
        node = stack.pop()
        if node[0] in ("and", "or"):
            stack.extend(node[1])
        elif node[0] == "not":
            stack.append(node[1])
        elif pred(node):
            return True
    return False


def _interval(op: str, n) -> tuple[float, float] | None:
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    return {"=": (n, n), "<": (float("-inf"), n - 1), "<=": (float("-inf"), n),
            ">": (n + 1, float("inf")), ">=": (n, float("inf"))}.get(op)


def _plain_item(ftype: str | None, text: str) -> bool:
    """An inline list item that names one value (not a network or a wildcard)."""
    if ftype == IP:
        return "/" not in text
    if ftype == DOMAIN:
        return not text.startswith((".", "*"))
    if ftype == ADDRESS:
        return not text.startswith("@") and "@" in text
    return True


# ---- regular expressions (W402) ---------------------------------------------

_WHITESPACE = " \t\r\n\f\v"
_DOMAIN_CANNOT = "@" + _WHITESPACE
_IP_CAN = set("0123456789abcdefABCDEF.:")


def _cannot_contain(ftype: str, name: str) -> Callable[[str], bool] | None:
    """Characters a field's value can never contain, as a test; None if any."""
    if ftype == DOMAIN and name != "helo":   # HELO is whatever the client sent
        return lambda ch: ch in _DOMAIN_CANNOT
    if ftype == IP:
        return lambda ch: ch not in _IP_CAN
    return None


def _chars_of_set(items) -> set[str] | None:
    chars: set[str] = set()
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            return None
        if name == "LITERAL":
            chars.add(chr(av))
        elif name == "RANGE":
            lo, hi = av
            if hi - lo > 512:
                return None
            chars.update(chr(c) for c in range(lo, hi + 1))
        elif name == "CATEGORY":
            if str(av) == "CATEGORY_SPACE":
                chars.update(_WHITESPACE)
            else:
                return None
        else:
            return None
    return chars


def _needs_impossible(seq, cannot: Callable[[str], bool], depth: int = 0, any_case: bool = True) -> str | None:
    """A character every match of ``seq`` must contain and the field cannot
    (in any case, unless ``any_case`` is False: a case-sensitive pattern)."""
    if depth > 50:
        return None

    def impossible(c: str) -> bool:
        return cannot(c) and (not any_case or (cannot(c.lower()) and cannot(c.upper())))
    for op, av in seq:
        name = str(op)
        found = None
        if name == "LITERAL":
            ch = chr(av)
            if impossible(ch):
                found = ch
        elif name == "IN":
            chars = _chars_of_set(av)
            if chars and all(impossible(c) for c in chars):
                found = sorted(chars)[0]
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, _hi, sub = av
            if lo >= 1:
                found = _needs_impossible(sub, cannot, depth + 1, any_case)
        elif name == "SUBPATTERN":
            found = _needs_impossible(av[-1], cannot, depth + 1, any_case)
        elif name == "ATOMIC_GROUP":
            found = _needs_impossible(av, cannot, depth + 1, any_case)
        elif name == "BRANCH":
            alts = [_needs_impossible(a, cannot, depth + 1, any_case) for a in av[1]]
            if alts and all(alts):
                found = alts[0]
        elif name == "ASSERT":
            direction, sub = av
            found = _needs_impossible(sub, cannot, depth + 1, any_case)
        if found:
            return found
    return None


def _map_pattern_problem(key: str, field: str) -> str | None:
    """Why a regexp/pcre map line's pattern (`/re/flags`, as written) can
    never match ``field``'s value, or None."""
    text = key[1:] if key.startswith("!") else key
    if len(text) < 2 or key.startswith("!"):
        return None                                  # a negated pattern matches what it does not
    end = text.rfind(text[0])
    if end <= 0:
        return None
    source, flags = text[1:end], text[end + 1:]
    case_sensitive = flags.count("i") % 2 == 1      # Postfix: `i` toggles the case-insensitive default
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = _sre_parse.parse(source, 0 if case_sensitive else re.IGNORECASE)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None                                  # E401/E404 from the map loader
    spec = lookup_field(field)
    if spec is None:
        return None
    if case_sensitive and spec.type in (DOMAIN, ADDRESS, STRING):
        upper = _needs_impossible(parsed.data, lambda c: c != c.lower(), any_case=False)
        if upper:
            return f"it is case-sensitive (flag i) and needs the capital `{upper}`"
    cannot = _cannot_contain(spec.type, field)
    bad = _needs_impossible(parsed.data, cannot) if cannot is not None else None
    if bad:
        return f"it needs `{bad}`, which a{'n IP address' if spec.type == IP else ' domain'} never contains"
    return None


def _misplaced_anchor(parsed) -> str | None:
    """`^` after text that must be matched, or `$` before it."""
    if parsed.state.flags & re.MULTILINE:
        return None
    items = list(parsed.data)
    widths = []
    for it in items:
        try:
            widths.append(_sre_parse.SubPattern(parsed.state, [it]).getwidth()[0])
        except Exception:
            return None
    for i, (op, av) in enumerate(items):
        if str(op) != "AT":
            continue
        where = str(av)
        if where in ("AT_BEGINNING", "AT_BEGINNING_STRING") and sum(widths[:i]) > 0:
            return "`^` matches only at the start of the value, but the pattern needs text before it"
        if where in ("AT_END", "AT_END_STRING") and sum(widths[i + 1:]) > 0:
            rest = items[i + 1:]
            if where == "AT_END" and len(rest) == 1 and str(rest[0][0]) == "LITERAL" and rest[0][1] == 10:
                continue  # `$\n` can match a trailing newline
            return "`$` matches only at the end of the value, but the pattern needs text after it"
    return None


# ---- public DNS lists (H703) ------------------------------------------------

@dataclass(frozen=True)
class PublicZone:
    codes: str          # what to write inside `codes [...]`
    meaning: str        # what the documented codes mean
    lists: str = "ip"   # what it lists: "ip" (a dnsbl) or "domain" (an rhsbl)


PUBLIC_ZONES: dict[str, PublicZone] = {
    "zen.spamhaus.org": PublicZone("127.0.0.2-127.0.0.11",
                                   "listings are 127.0.0.2-127.0.0.11 (SBL, CSS, XBL, PBL); 127.255.255.x are "
                                   "errors such as a query through a public resolver, never a listing"),
    "sbl.spamhaus.org": PublicZone("127.0.0.2-127.0.0.3, 127.0.0.9",
                                   "listings are 127.0.0.2, 127.0.0.3 (CSS) and 127.0.0.9 (DROP); "
                                   "127.255.255.x are errors, never a listing"),
    "xbl.spamhaus.org": PublicZone("127.0.0.4-127.0.0.7",
                                   "listings are 127.0.0.4-127.0.0.7; 127.255.255.x are errors, never a listing"),
    "pbl.spamhaus.org": PublicZone("127.0.0.10-127.0.0.11",
                                   "listings are 127.0.0.10 and 127.0.0.11; 127.255.255.x are errors, never a listing"),
    "sbl-xbl.spamhaus.org": PublicZone("127.0.0.2-127.0.0.7",
                                       "listings are 127.0.0.2-127.0.0.7; 127.255.255.x are errors, never a listing"),
    "dbl.spamhaus.org": PublicZone("127.0.1.2-127.0.1.106",
                                   "listings are 127.0.1.2-127.0.1.106; 127.0.1.255 (IP queried) and "
                                   "127.255.255.x are errors, never a listing", "domain"),
    "zrd.spamhaus.org": PublicZone("127.0.2.2-127.0.2.24",
                                   "listings are 127.0.2.2-127.0.2.24 (hours since first seen); "
                                   "127.255.255.x are errors, never a listing", "domain"),
    "b.barracudacentral.org": PublicZone("127.0.0.2", "a listing is 127.0.0.2"),
    "bl.spamcop.net": PublicZone("127.0.0.2", "a listing is 127.0.0.2"),
    "dnsbl.sorbs.net": PublicZone("127.0.0.2-127.0.0.15",
                                  "listings are 127.0.0.2-127.0.0.15, one per SORBS sub-list"),
    "psbl.surriel.com": PublicZone("127.0.0.2", "a listing is 127.0.0.2"),
    "bl.mailspike.net": PublicZone("127.0.0.2, 127.0.0.10-127.0.0.14",
                                   "listings are 127.0.0.2 and the poor-reputation levels 127.0.0.10-127.0.0.14"),
    "ix.dnsbl.manitu.net": PublicZone("127.0.0.2", "a listing is 127.0.0.2"),
    "dnsbl-1.uceprotect.net": PublicZone("127.0.0.2", "a listing is 127.0.0.2"),
    "dnsbl-2.uceprotect.net": PublicZone("127.0.0.2", "a listing is 127.0.0.2"),
    "dnsbl-3.uceprotect.net": PublicZone("127.0.0.2", "a listing is 127.0.0.2"),
    "cbl.abuseat.org": PublicZone("127.0.0.2", "a listing is 127.0.0.2"),
    "multi.surbl.org": PublicZone("mask 216",
                                  "answers are 127.0.0.x bitmasks: 8 PH, 16 MW, 64 ABUSE, 128 CR; "
                                  "127.0.0.1 means the query was refused, never a listing", "domain"),
    "multi.uribl.com": PublicZone("mask 14",
                                  "answers are 127.0.0.x bitmasks: 2 black, 4 grey, 8 red; "
                                  "127.0.0.1 means the query was refused, never a listing", "domain"),
    "black.uribl.com": PublicZone("127.0.0.2", "a listing is 127.0.0.2; 127.0.0.1 means the query was refused",
                                  "domain"),
    "dsn.rfc-ignorant.org": PublicZone("127.0.0.2", "a listing is 127.0.0.2 (the list closed in 2012)", "domain"),
    "rhsbl.sorbs.net": PublicZone("127.0.0.2-127.0.0.15", "listings are 127.0.0.2-127.0.0.15", "domain"),
    "dbl.nordspam.com": PublicZone("127.0.0.2", "a listing is 127.0.0.2", "domain"),
    "list.dnswl.org": PublicZone("127.0.[0..255].[0..255]",
                                 "answers are 127.0.x.y: x the category, y the trust level (0-3); "
                                 "127.0.0.255 means the query was refused, never a listing"),
    "dwl.dnswl.org": PublicZone("127.0.[0..255].[0..3]", "domain answers are 127.0.x.y as for list.dnswl.org",
                                "domain"),
}


_KIND_LISTS = {"dnsbl": "ip", "rhsbl": "domain"}


def public_zone(domain: str | None) -> tuple[str, PublicZone] | None:
    """The known public list a zone domain names (also mirrors like
    ``<key>.zen.dq.spamhaus.net``), or None."""
    if not domain:
        return None
    d = domain.lower().rstrip(".")
    dq = re.fullmatch(r"(?:[^.]+\.)?([a-z-]+)\.dq\.spamhaus\.net", d)
    if dq:
        d = f"{dq.group(1)}.spamhaus.org"
    for name, info in PUBLIC_ZONES.items():
        if d == name or d.endswith("." + name):
            return name, info
    return None


# ---- the checks --------------------------------------------------------------

class _Linter:
    def __init__(self, prog: Program, ruleset, complete: bool):
        self.prog = prog
        self.ruleset = ruleset
        self.complete = complete
        self.diags: list[Diagnostic] = []
        self.by_hook: dict[str, list[ast.Rule]] = {}
        for rule in prog.rules:
            self.by_hook.setdefault(rule.hook, []).append(rule)
        self._matchers: dict[tuple, Callable | None] = {}
        self._leaf_tests: dict | None = None
        self._budget = IMPLICATION_BUDGET
        self._deep = {id(r) for r in prog.rules if r.condition is not None and _depth(r.condition) > MAX_DEPTH}

    def run(self) -> list[Diagnostic]:
        checks = [("checking patterns", self.check_patterns),
                  ("looking for unreachable and shadowed rules", self.check_order),
                  ("checking how the null sender is treated", self.check_null_sender),
                  ("checking DNS lists", self.check_public_zones)]
        if self.complete:
            checks += [("looking for unused declarations", self.check_unused),
                       ("checking for an open relay", self.check_relay)]
        for what, check in checks:
            try:
                check()
            except Exception as err:  # lint must never crash
                self.diags.append(_internal(what, err, Span.point(self.prog.root, 1, 1)))
        return self.diags

    def add(self, code: str, message: str, span: Span | None, help: str | None = None) -> None:
        self.diags.append(Diagnostic(code, message, span, help=help))

    def rules(self, hook: str) -> list[ast.Rule]:
        return self.by_hook.get(hook, [])

    def analysable(self, rule: ast.Rule) -> bool:
        return id(rule) not in self._deep

    # -- compiled leaves: pure functions over SessionState --------------------

    def leaf_tests(self) -> dict:
        """ast leaf -> compiled test, from the ruleset (or a best-effort
        compile of the rules that do compile, when the ruleset has errors)."""
        if self._leaf_tests is None:
            tests: dict = {}
            ruleset = self.ruleset
            if ruleset is None:
                try:
                    ruleset = _Compiler(self.prog, [], plugins="skip").compile()
                except Exception:
                    ruleset = None
            for compiled in getattr(ruleset, "rules", ()) or ():
                for leaf, test in compiled.leaves:
                    tests[leaf] = test
            self._leaf_tests = tests
        return self._leaf_tests

    def leaf_on(self, leaf, state: SessionState) -> str:
        test = self.leaf_tests().get(leaf)
        if test is None:
            return UNKNOWN
        try:
            return TRUE if test(state) else FALSE
        except Exception:
            return UNKNOWN

    # -- lists -----------------------------------------------------------------

    def matcher(self, target, field: str, within: bool) -> Callable | None:
        """A membership test for a set a rule names (list or inline), or None."""
        ftype = _field_type(field)
        if ftype is None:
            return None
        element = ADDRESS if ftype == "list" else ftype
        key = (_norm_target(field, target), element, within)
        if key in self._matchers:
            return self._matchers[key]
        entries: Sequence[Entry] | None = None
        if isinstance(target, ast.Field) or (isinstance(target, ast.ListRef) and target.name in self.prog.maps):
            entries = None                    # a map: its own search order, not analysed here
        elif isinstance(target, ast.ListRef):
            if target.name in self.prog.lists:
                decl, base = self.prog.lists[target.name]
                if decl.items is not None:
                    entries = [Entry(str(v.value), v.span) for v in decl.items.items]
                elif decl.file is not None:
                    entries, _ = read_list_file(os.path.join(base, decl.file), decl.file)
            elif target.name in BUILTIN_LISTS:
                span = Span.point("<built-in>", 1, 1)
                entries = [Entry(t, span) for t in BUILTIN_LISTS[target.name]()]
        else:
            items = target.items if isinstance(target, ast.InlineList) else (target,)
            entries = [Entry(str(v.value), v.span) for v in items]
        m = None
        if entries is not None:
            m, problems = build_matcher(entries, element, within)
            if any(d.code == Code.E302_LIST_ENTRY_MALFORMED for d in problems):
                m = None
        self._matchers[key] = m
        return m

    # -- W402 ------------------------------------------------------------------

    def check_patterns(self) -> None:
        for rule in self.prog.rules:
            for leaf in _leaves(rule.condition):
                if isinstance(leaf, ast.Pattern):
                    self._pattern(leaf)
        self._map_patterns()

    def _map_patterns(self) -> None:
        """W402 for the patterns of regexp/pcre maps: a pattern that needs a
        character the field it is applied to never has, or a capital letter
        in a case-sensitive pattern (values are compared in lower case)."""
        every_rule = list(self.prog.rules) + [r for rules in self.prog.classes.values() for r in rules]
        uses: dict[str, set[str]] = {}               # map name -> fields it is looked up by
        for rule in every_rule:
            mentioned = [rule.action.field] if rule.action.field is not None else []
            for leaf in _leaves(rule.condition):
                mentioned += [f for f in (getattr(leaf, "field", None), getattr(leaf, "value", None),
                                          getattr(leaf, "target", None)) if isinstance(f, ast.Field)]
            for f in mentioned:
                if f.key is not None and f.name in self.prog.maps and self.prog.maps[f.name][0].fmt in ("regexp", "pcre"):
                    uses.setdefault(f.name, set()).add(f.key.name)
        for name, looked_up_by in uses.items():
            decl, base = self.prog.maps[name]
            from smtpfw.maps import load_map, map_from_pairs
            table = (map_from_pairs(decl.pairs, decl.fmt)[0] if decl.file is None
                     else load_map(os.path.join(base, decl.file), decl.file, decl.fmt)[0])
            if table is None:
                continue
            for key, _value, span in table.entries():
                for field in sorted(looked_up_by):
                    problem = _map_pattern_problem(key, field)
                    if problem:
                        self.add(Code.W402_PATTERN_NEVER_MATCHES,
                                 f"pattern {key} of map `{name}` can never match `{field}`: {problem}",
                                 Span(span.file, span.line, 1, span.line, 1 + len(key)),
                                 "patterns see the value in lower case" if "capital" in problem else None)
                        break

    def _pattern(self, node: ast.Pattern) -> None:
        spec = lookup_field(node.field.text)
        if spec is None or spec.type not in (DOMAIN, ADDRESS, IP, STRING):
            return
        text = str(node.pattern.value)
        source = fnmatch.translate(text) if node.kind == "glob" else text
        try:
            with warnings.catch_warnings():          # "Possible nested set" and the like: not for lint's output
                warnings.simplefilter("ignore")
                rx = re.compile(source, re.IGNORECASE)
                parsed = _sre_parse.parse(source, re.IGNORECASE)
        except (re.error, RecursionError, OverflowError, ValueError):
            return  # E401 from the compiler
        what = "glob" if node.kind == "glob" else "regular expression"
        field = spec.name
        reason = help_ = None
        cannot = _cannot_contain(spec.type, field)
        bad = _needs_impossible(parsed.data, cannot) if cannot is not None else None
        if bad is not None:
            shown = {" ": "a space", "\t": "a tab", "\n": "a line break", "\r": "a line break"}.get(bad, f"`{bad}`")
            if spec.type == DOMAIN:
                reason = f"it needs {shown}, and a domain never contains one"
                if bad == "@" and field.endswith(".domain"):
                    whole = field.rsplit(".", 1)[0]
                    op = "matches" if node.kind == "regex" else "like"
                    help_ = (f"to test the whole address write `{whole} {op} {node.pattern.text}`; "
                             "to test the domain, leave out the part up to the `@`")
                else:
                    help_ = "a domain is letters, digits, `-` and `.`"
            else:
                reason = f"it needs {shown}, and an IP address is written with digits, a-f, `.` and `:` only"
                help_ = f"to test a network, write `{field} in 10.0.0.0/8` instead of a pattern"
        if reason is None and not field.startswith("header."):
            reason = _misplaced_anchor(parsed)
            if reason:
                help_ = "put `^` first and `$` last, or remove them"
        if reason is None and spec.choices:
            if not any(rx.search(c) if node.kind == "regex" else rx.match(c) for c in spec.choices):
                reason = f"`{field}` is always one of {', '.join(spec.choices)}, and the pattern matches none of them"
                help_ = f"compare the value instead, e.g. `{field} = \"{spec.choices[0]}\"`"
        if reason is None:
            return
        verb = "`not matches`" if node.kind == "regex" else "`not like`"
        outcome = (f", so {verb} is always true" if node.negated else "")
        message = f"this {what} can never match `{field}`{outcome}: {reason}"
        self.add(Code.W402_PATTERN_NEVER_MATCHES, message, node.pattern.span, help_)

    # -- W601 / W602 -------------------------------------------------------------

    def check_order(self) -> None:
        for hook, rules in self.by_hook.items():
            blocker: ast.Rule | None = None
            earlier: list[tuple[ast.Rule, tuple]] = []
            exact: dict[tuple, ast.Rule] = {}
            for rule in rules:
                if blocker is not None:
                    here = rule.span.file
                    self.add(Code.W601_UNREACHABLE_RULE,
                             f"this rule can never run: {_where(blocker, here)} has no condition, "
                             f"so `on {hook}:` always ends there", rule.span,
                             help=f"move this rule above {_where(blocker, here)}, or give that rule an `if` "
                                  "condition")
                    continue
                if rule.condition is None:
                    if _ends_hook(rule):
                        blocker = rule
                    earlier, exact = self._forget_changed(rule, earlier, exact)
                    continue
                if not self.analysable(rule):
                    earlier, exact = self._forget_changed(rule, earlier, exact)
                    continue
                c = _canon(rule.condition)
                shadow = exact.get(c)
                same = shadow is not None
                if shadow is None:
                    for prev, pc in earlier:
                        if self._budget <= 0:
                            break
                        self._budget -= 1
                        if self.implies(c, pc):
                            shadow = prev
                            break
                if shadow is not None:
                    here = rule.span.file
                    how = ("has the same condition" if same else "already matches everything this rule matches")
                    decides = "" if shadow.action.kind == rule.action.kind else f" and decides first (`{shadow.action.kind}`)"
                    self.add(Code.W602_SHADOWED_RULE, f"this rule never matches: {_where(shadow, here)} {how}{decides}",
                             rule.span,
                             help=("remove this rule" if same else
                                   f"remove this rule, or move it above {_where(shadow, here)} if it should decide first"))
                    continue
                if _ends_hook(rule):
                    exact.setdefault(c, rule)
                    earlier.append((rule, c))
                earlier, exact = self._forget_changed(rule, earlier, exact)

    @staticmethod
    def _forget_changed(rule: ast.Rule, earlier: list, exact: dict) -> tuple[list, dict]:
        """`tag T` and `run P` change what later conditions see: an earlier
        rule that tested `tagged T` or a field of P no longer covers them."""
        kind, arg = rule.action.kind, rule.action.arg or ""
        if kind == "tag":
            def stale(leaf: tuple) -> bool:
                return leaf == ("tagged", arg)
        elif kind == "run":
            def stale(leaf: tuple) -> bool:
                return len(leaf) > 1 and isinstance(leaf[1], str) and leaf[1].startswith(arg + ".")
        else:
            return earlier, exact
        keep = [(r, c) for r, c in earlier if not _mentions(c, stale)]
        if len(keep) == len(earlier):
            return earlier, exact
        return keep, {c: r for c, r in exact.items() if not _mentions(c, stale)}

    def implies(self, r: tuple, e: tuple, depth: int = 0) -> bool:
        """True when condition ``r`` can only hold if ``e`` holds (sound, not complete)."""
        if r == e:
            return True
        if depth > 20:
            return False
        if e[0] == "and":
            return all(self.implies(r, x, depth + 1) for x in e[1])
        if r[0] == "or":
            return all(self.implies(x, e, depth + 1) for x in r[1])
        if r[0] == "and" and any(self.implies(x, e, depth + 1) for x in r[1]):
            return True
        if e[0] == "or":
            return any(self.implies(r, x, depth + 1) for x in e[1])
        if r[0] in ("and", "or", "not") or e[0] in ("and", "or", "not"):
            return False
        try:
            return self._leaf_implies(r, e)
        except Exception:
            return False

    def _leaf_implies(self, r: tuple, e: tuple) -> bool:
        if len(r) < 2 or len(e) < 2 or r[1] != e[1]:
            return False
        field = r[1]
        ftype = _field_type(field)
        # the values r allows, when r names them: `f = v` or `f in [v, w]`
        values = None
        if r[0] == "cmp" and r[2] == "=":
            values = [r[3][1]]
        elif r[0] == "in" and not r[3] and not r[2] and r[4][0] == "items":
            if all(isinstance(v, str) and _plain_item(ftype, v) for v in r[4][1]):
                values = sorted(r[4][1], key=repr)
        if e[0] == "cmp":
            if r[0] == "cmp" and r[3][0] == e[3][0] == "number":
                ri, ei = _interval(r[2], r[3][1]), _interval(e[2], e[3][1])
                if ri and ei:
                    return ei[0] <= ri[0] and ri[1] <= ei[1]
            if e[2] == "!=" and values is not None:
                return e[3][1] not in values
            if e[2] == "=" and values is not None:
                return values == [e[3][1]]
            return False
        if e[0] == "in":
            _, _, e_within, e_neg, e_target = e
            if values is not None and all(isinstance(v, str) for v in values):
                m = self._matcher_for(field, e_target, e_within)
                if m is None:
                    return False
                hits = [bool(m(v)) for v in values]
                return all(hits) if not e_neg else not any(hits)
            if r[0] == "in" and r[3] and e_neg and r[2] == e_within and r[4][0] == e_target[0] == "items":
                return e_target[1] <= r[4][1]      # not in a bigger set => not in a smaller one
            return False
        if e[0] == "pat" and values is not None:
            _, _, kind, pattern, neg = e
            source = fnmatch.translate(pattern) if kind == "glob" else pattern
            try:
                rx = re.compile(source, re.IGNORECASE)
            except re.error:
                return False
            find = rx.search if kind == "regex" else rx.match
            hits = [find(str(v)) is not None for v in values]
            return all(hits) if not neg else not any(hits)
        return False

    def _matcher_for(self, field: str, target_key: tuple, within: bool):
        target: ast.ListRef | ast.InlineList
        if target_key[0] == "list":
            target = ast.ListRef(target_key[1], Span.point("", 1, 1))
        else:
            span = Span.point("", 1, 1)
            target = ast.InlineList(tuple(ast.Value("string", str(v), str(v), span) for v in sorted(target_key[1], key=repr)), span)
        return self.matcher(target, field, within)

    # -- W603 ------------------------------------------------------------------

    def check_unused(self) -> None:
        used_lists: set[str] = set()
        used_zones: set[str] = set()
        run_plugins: set[str] = set()
        plugin_fields: dict[str, ast.Field] = {}
        used_classes: set[str] = set()
        applies = False
        every_rule = list(self.prog.rules) + [r for rules in self.prog.classes.values() for r in rules]
        for rule in every_rule:
            action = rule.action
            if action.kind == "run" and action.arg:
                run_plugins.add(action.arg)
            elif action.kind == "use" and action.arg:
                used_classes.add(action.arg)
            elif action.kind == "apply" and action.field is not None:
                applies = True
                used_lists.add(action.field.name)
            for text in (action.reply.text if action.reply else None, action.arg2,
                         action.arg if action.kind in ("log", "warn") else None):
                used_lists.update(_MAP_PLACEHOLDER.findall(text or ""))
            for leaf in _leaves(rule.condition):
                for f in (getattr(leaf, "field", None), getattr(leaf, "value", None), getattr(leaf, "target", None)):
                    if isinstance(f, ast.Field) and f.key is not None:
                        used_lists.add(f.name)
                if isinstance(leaf, ast.Member) and isinstance(leaf.target, ast.ListRef):
                    used_lists.add(leaf.target.name)
                elif isinstance(leaf, (ast.Listed, ast.LookupFailed)) and leaf.zone.name is not None:
                    used_zones.add(leaf.zone.name)
                name = _field_name(leaf)
                if name and "." in name:
                    plugin_fields.setdefault(name.split(".", 1)[0], getattr(leaf, "field"))
        for name, (decl, _base) in self.prog.lists.items():
            if name not in used_lists:
                self.add(Code.W603_UNUSED_DECLARATION, f"list `{name}` is declared but no rule uses it", decl.name_span,
                         help=f"remove the declaration, or test it in a rule, e.g. `reject if <field> in {name}`")
        for name, (mdecl, _base) in self.prog.maps.items():
            if name not in used_lists:
                self.add(Code.W603_UNUSED_DECLARATION, f"map `{name}` is declared but no rule uses it", mdecl.name_span,
                         help=f"remove the declaration, or use it: `apply {name}(sender)` or "
                              f"`reject if {name}(sender) = \"...\"`")
        limit_refs = " ".join(_LIMIT_REF.findall(" ".join(
            str(x) for r in every_rule for x in (r.condition, r.action.reply, r.action.arg, r.action.arg2))))
        for name, ldecl in self.prog.limits.items():
            if f"limit.{name}." not in limit_refs:
                self.add(Code.W603_UNUSED_DECLARATION, f"limit `{name}` is declared but no rule tests it, "
                         "so it never counts", ldecl.name_span,
                         help=f"test it where it should count, e.g. `tempfail 450 4.7.1 \"Too fast\" "
                              f"if limit.{name}.exceeded`")
        counted = {r.action.arg for r in every_rule if r.action.kind == "count"}
        for name, cdecl in self.prog.counters.items():
            read = f"counter.{name}" in limit_refs or re.search(rf"counter\.{re.escape(name)}\b", " ".join(
                str(x) for r in every_rule for x in (r.condition, r.action.reply, r.action.arg, r.action.arg2)))
            if name not in counted or not read:
                what = "no rule counts it" if name not in counted else "no rule reads it"
                self.add(Code.W603_UNUSED_DECLARATION, f"counter `{name}` is declared but {what}", cdecl.name_span,
                         help=f"count with `count {name} if ...` and read it with `counter.{name}` in a condition")
        for name, header in self.prog.class_headers.items():
            if name not in used_classes and not applies:
                self.add(Code.W603_UNUSED_DECLARATION, f"class `{name}` is declared but no rule uses it",
                         header.span, help=f"run its rules with `use {name} if ...`, or name it in a map "
                                           "that an `apply` rule reads")
        for name, zone in self.prog.zones.items():
            if name not in used_zones:
                field = "client.ip" if zone.kind == "dnsbl" else "sender.domain"
                self.add(Code.W603_UNUSED_DECLARATION, f"zone `{name}` is declared but no rule uses it", zone.name_span,
                         help=f"remove the declaration, or test it in a rule, e.g. `reject if {field} listed in {name}`")
        for name, plugin in self.prog.plugins.items():
            if name in run_plugins:
                continue
            if name in plugin_fields:
                self.add(Code.W603_UNUSED_DECLARATION,
                         f"plugin `{name}` is declared but never run, so its fields such as "
                         f"`{plugin_fields[name].name}` are never set", plugin.name_span,
                         help=f"add `run {name}` before the rules that test `{plugin_fields[name].name}`")
            else:
                self.add(Code.W603_UNUSED_DECLARATION, f"plugin `{name}` is declared but never run", plugin.name_span,
                         help=f"remove the declaration, or add `run {name}` in the hook where it should run")

    # -- E701 ------------------------------------------------------------------

    def relay_leaf(self, leaf, negated: bool, tags: set[str]) -> str:
        """Can this leaf be true for a client at an untrusted address, not
        authenticated, asking for a recipient on a domain that is not local?"""
        value = self._relay_leaf(leaf, tags)
        return _not3(value) if negated else value

    def _relay_leaf(self, leaf, tags: set[str]) -> str:
        if isinstance(leaf, ast.Tagged):
            return UNKNOWN if leaf.tag in tags else FALSE
        name = _field_name(leaf)
        if name in ("auth", "auth.user"):
            state = SessionState(auth=False, auth_user="")
            return self.leaf_on(leaf, state)
        if name == "client.ip":
            if isinstance(leaf, ast.Member):
                return TRUE if leaf.negated else FALSE
            if isinstance(leaf, ast.Compare) and leaf.op in ("=", "!="):
                return FALSE if leaf.op == "=" else TRUE
            if isinstance(leaf, ast.Pattern):
                return TRUE if leaf.negated else FALSE
            return UNKNOWN
        if name in ("rcpt", "rcpt.domain"):
            if isinstance(leaf, ast.Member):
                return TRUE if leaf.negated else FALSE
            if isinstance(leaf, ast.Compare) and leaf.op in ("=", "!="):
                return FALSE if leaf.op == "=" else TRUE
            if isinstance(leaf, ast.Pattern):
                sample = RELAY_DOMAIN if name == "rcpt.domain" else f"someone@{RELAY_DOMAIN}"
                text = str(leaf.pattern.value)
                source = fnmatch.translate(text) if leaf.kind == "glob" else text
                try:
                    rx = re.compile(source, re.IGNORECASE)
                except re.error:
                    return UNKNOWN
                hit = (rx.search(sample) if leaf.kind == "regex" else rx.match(sample)) is not None
                if leaf.negated:
                    return UNKNOWN if hit else TRUE
                return UNKNOWN if hit else FALSE
            return UNKNOWN
        return UNKNOWN

    def check_relay(self) -> None:
        """E701, and E704 when only monitor mode keeps the closing rule from refusing."""
        closer = self.check_open_relay()
        if closer is not None:
            self.check_monitor_mode(closer)

    def check_monitor_mode(self, closer: ast.Rule) -> None:
        option = self.prog.options.get("mode")
        if option is None or option.value.value != "monitor":
            return
        here = option.span.file
        self.add(Code.E704_MONITOR_MODE_RELAYS,
                 f"open relay in monitor mode: `option mode = \"monitor\"` only logs refusals, so "
                 f"{_where(closer, here)} never refuses and mail for any domain is accepted", option.span,
                 help="delivered to a downstream MTA that trusts smtpfw (forward mode), that mail is relayed "
                      "anywhere; remove the option (enforce is the default) and mark only the rules you are "
                      "trying out as `monitor` (`[rule-id] monitor reject ...`), so the relay check still refuses")

    def check_open_relay(self) -> ast.Rule | None:
        """E701; returns the rule that closes the relay (None when open)."""
        # tags an untrusted client may get, anywhere before its recipients are decided
        tag_rules = [(r, tag) for h in ("connect", "helo", "mail", "rcpt") for r in self.rules(h)
                     if r.action.kind == "tag" and (tag := r.action.arg)]
        tags: set[str] = set()
        changed, passes = True, 0
        while changed:
            changed, passes = False, passes + 1
            if passes > 20:     # a long chain of tags: assume the client can get any of them
                tags.update(tag for _r, tag in tag_rules)
                break
            for r, tag in tag_rules:
                if tag in tags:
                    continue
                if not self.analysable(r) or _eval3(r.condition, lambda l, n: self.relay_leaf(l, n, tags)) != FALSE:
                    tags.add(tag)
                    changed = True

        def value(rule: ast.Rule) -> str:
            if not self.analysable(rule):
                return UNKNOWN
            return _eval3(rule.condition, lambda l, n: self.relay_leaf(l, n, tags))

        # a refusal before RCPT that every untrusted client gets closes the relay
        for hook in ("connect", "helo", "mail"):
            for rule in self.rules(hook):
                if not _ends_hook(rule):
                    continue
                v = value(rule)
                if rule.action.kind == "accept":
                    if v != FALSE:
                        break       # the client may skip the rest of this hook
                elif v == TRUE:
                    return rule
        rcpt_rules = self.rules("rcpt")
        local = self._local_list_name()
        fix = f'reject 554 5.7.1 "Relaying denied" if rcpt.domain not in {local}'
        if not rcpt_rules:
            self.add(Code.E701_OPEN_RELAY,
                     "open relay: there are no `on rcpt:` rules, so every recipient on every domain "
                     "is accepted", Span.point(self.prog.root, 1, 1),
                     help=f"add `on rcpt:` followed by `{fix}`" + self._local_note(local))
            return None
        passed: list[ast.Rule] = []
        probe = f"a client at any address sending `RCPT TO:<someone@{RELAY_DOMAIN}>`"
        for rule in rcpt_rules:
            if not _ends_hook(rule):
                continue
            v = value(rule)
            if rule.action.kind == "accept" and v != FALSE:
                why = ("which accepts every recipient" if rule.condition is None else
                       "whose condition does not restrict the recipient domain or the client address "
                       "and does not require authentication")
                self.add(Code.E701_OPEN_RELAY,
                         "open relay: an untrusted client can get mail for any domain accepted here",
                         rule.span,
                         help=f"{probe}{self._passing(passed, rule.span.file)} reaches `accept` at "
                              f"{rule.span.file}:{rule.span.line}"
                              f"{f' (rule `{rule.rule_id}`)' if rule.label_given else ''}, {why}; "
                              f"restrict it (e.g. `accept if rcpt.domain in {local}`) or put "
                              f"`{fix}` before it" + self._local_note(local))
                return None
            if rule.action.kind != "accept" and v == TRUE:
                return rule
            passed.append(rule)
        last = rcpt_rules[-1]
        self.add(Code.E701_OPEN_RELAY, "open relay: a recipient on any domain is accepted by default after the last "
                 "`on rcpt:` rule", self._hook_span("rcpt", last),
                 help=f"{probe}{self._passing(passed, last.span.file)} reaches the end of `on rcpt:`, "
                      "where every recipient is accepted, because no rule refuses recipients outside your "
                      f"domains; add as the last rcpt rule: `{fix}`" + self._local_note(local))
        return None

    @staticmethod
    def _passing(passed: list[ast.Rule], here: str) -> str:
        if not passed:
            return ""
        names = [_where(r, here) for r in passed[:4]]
        more = f" and {len(passed) - 4} more" if len(passed) > 4 else ""
        return " passes " + ", ".join(names) + more + " and"

    def _local_note(self, local: str) -> str:
        if local == "localnames" and "localnames" not in self.prog.lists:
            return "; `localnames` is built in: this machine's own names, or declare your own list of local domains"
        return ""

    def _local_list_name(self) -> str:
        for rule in self.rules("rcpt"):
            for leaf in _leaves(rule.condition):
                if (isinstance(leaf, ast.Member) and leaf.field.text == "rcpt.domain"
                        and isinstance(leaf.target, ast.ListRef)):
                    return leaf.target.name
        return "localnames"

    def _hook_span(self, hook: str, rule: ast.Rule) -> Span:
        """The `on <hook>:` header above a rule (found in the text)."""
        text = self.prog.sources.get(rule.span.file)
        if text is not None:
            lines = text.splitlines()
            pattern = re.compile(rf"^\s*on\s+{hook}\s*:")
            for n in range(min(rule.span.line, len(lines)), 0, -1):
                m = pattern.match(lines[n - 1])
                if m:
                    col = lines[n - 1].index("o") + 1
                    return Span(rule.span.file, n, col, n, m.end() + 1)
        return rule.span

    # -- W702 ------------------------------------------------------------------

    def check_null_sender(self) -> None:
        state = SessionState(client_ip="192.0.2.1", helo="mail.example", helo_lower="mail.example", esmtp=True)
        state.set_sender("")
        for hook in ("mail",):     # at rcpt, `sender.null and rcpt.count > 0` is a fair rule
            accepts = False
            for rule in self.rules(hook):
                if not _ends_hook(rule):
                    continue
                if rule.action.kind == "accept":
                    accepts = True
                if not self.analysable(rule):
                    continue
                sender_leaves = [leaf for leaf in _leaves(rule.condition)
                                 if (_field_name(leaf) or "").split(".")[0] == "sender"]
                if rule.condition is not None and not sender_leaves:
                    continue

                def leaf_value(leaf, negated, flip=False):
                    if (_field_name(leaf) or "").split(".")[0] != "sender":
                        return UNKNOWN
                    v = self.leaf_on(leaf, state)
                    v = _not3(v) if negated else v
                    return FALSE if flip and v == TRUE else v

                v1 = _eval3(rule.condition, leaf_value)
                if rule.action.kind == "accept":
                    if v1 == TRUE:
                        break       # <> is accepted here: later rules never see it
                    continue
                if v1 == FALSE or (rule.condition is None and accepts):
                    continue        # a catch-all after accepting what is wanted refuses everyone alike
                if v1 == UNKNOWN and _eval3(rule.condition, lambda l, n: leaf_value(l, n, True)) != FALSE:
                    continue        # the sender test is not what makes this rule refuse <>
                if rule.condition is None:
                    message = "this rule refuses every sender at MAIL FROM, including the null sender <> (bounces)"
                else:
                    message = "this rule refuses the null sender <> at MAIL FROM: bounces and delivery reports use it"
                self.add(Code.W702_REJECTS_NULL_SENDER, message, rule.span,
                         help="RFC 5321 requires accepting <>; exclude it with `... and not sender.null`, "
                              "or put `accept if sender.null` before this rule")

    # -- H703 ------------------------------------------------------------------

    def _zone_kind(self, kind: str, domain: str, span: Span) -> None:
        """W706: a known domain list declared as an IP dnsbl, or the reverse:
        every lookup would ask the wrong question and never match."""
        known = public_zone(domain)
        if known is None or _KIND_LISTS.get(kind) == known[1].lists:
            return
        name, info = known
        right = "rhsbl" if info.lists == "domain" else "dnsbl"
        what = "domains (an rhsbl)" if info.lists == "domain" else "IP addresses (a dnsbl)"
        self.add(Code.W706_ZONE_KIND_MISMATCH, f"{name} lists {what}, but it is used as a{'n' if kind == 'rhsbl' else ''} "
                 f"{kind}: no lookup will ever match", span,
                 help=f"write `{right} \"{domain}\"` and test " + ("a domain field such as sender.domain"
                                                                 if right == "rhsbl" else "client.ip or helo.literal"))

    def check_public_zones(self) -> None:
        uncoded_uses: dict[str, bool] = {}
        for zone in self.prog.zones.values():
            self._zone_kind(zone.kind, zone.domain, zone.span)
        every_rule = list(self.prog.rules) + [r for rules in self.prog.classes.values() for r in rules]
        for rule in every_rule:
            for leaf in _leaves(rule.condition):
                if not isinstance(leaf, ast.Listed):
                    continue
                z = leaf.zone
                if z.name is None and z.kind is not None and z.domain is not None:
                    self._zone_kind(z.kind, z.domain, z.span)
                if z.name is not None:
                    if leaf.codes is None:
                        uncoded_uses[z.name] = True
                    continue
                known = public_zone(z.domain)
                if known is None or leaf.codes is not None:
                    continue
                name, info = known
                self.add(Code.H703_PUBLIC_ZONE_WITHOUT_CODES,
                         f"`{z.domain}` is a public list that documents its return codes, "
                         "but this test accepts any answer", z.span,
                         help=f"{name}: {info.meaning}; write `... listed in {z.kind} \"{z.domain}\" codes [{info.codes}]`")
        for name, zone in self.prog.zones.items():
            known = public_zone(zone.domain)
            if known is None or zone.codes is not None or not uncoded_uses.get(name):
                continue
            public, info = known
            self.add(Code.H703_PUBLIC_ZONE_WITHOUT_CODES,
                     f"zone `{name}` uses the public list {zone.domain}, which documents its return "
                     "codes, without a `codes [...]` filter", zone.span,
                     help=f"{public}: {info.meaning}; write "
                          f"`zone {name} = {zone.kind} \"{zone.domain}\" codes [{info.codes}]`")
